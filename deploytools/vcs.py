"""git on the controller: resolve refs, the production branch and date tags.

The controller keeps a mirror of each service's repo in a cache directory,
updated on every command that needs it. The production branch and the date
tag move only after a rollout succeeded, and are pushed to origin, so the
release history is readable with plain git (`git log production`,
`git tag -l 'production-*'`).
"""
from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
from datetime import datetime, timezone
from pathlib import Path

import git

from .errors import DeployError, UsageError

_SAFE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@{}^~+-]*$")


def _git_message(e: git.GitCommandError) -> str:
    """git's own words from a GitCommandError, on one line (GitPython wraps them
    as "\n  stderr: '...'")."""
    text = (e.stderr or str(e)).strip()
    text = re.sub(r"^stderr:\s*", "", text).strip().strip("'").strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def cache_dir() -> Path:
    base = os.environ.get("DEPLOYTOOLS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deploytools")
    return Path(base) / "repos"


def _fallback_identity(repo: git.Repo) -> dict[str, str]:
    """Committer env vars for the date tag when this machine has no git identity.

    An annotated tag needs a committer; a fresh CI runner or demo user has none,
    and failing there would fail a deploy that is already live everywhere.
    """
    try:
        repo.git.var("GIT_COMMITTER_IDENT")
        return {}
    except git.GitCommandError:
        who = os.environ.get("DEPLOYTOOLS_USER") or getpass.getuser()
        return {"GIT_COMMITTER_NAME": who, "GIT_COMMITTER_EMAIL": f"{who}@{socket.gethostname()}"}


class ServiceRepo:
    """The controller's mirror of one service's repository."""

    def __init__(self, service):
        self.service = service
        digest = hashlib.sha256(service.repo.encode()).hexdigest()[:10]
        self.path = cache_dir() / f"{service.name}-{digest}.git"
        self._repo: git.Repo | None = None

    def update(self) -> "ServiceRepo":
        try:
            if (self.path / "HEAD").exists():
                self._repo = git.Repo(self.path)
                self._repo.git.fetch("--prune", "--quiet", "--tags", "origin")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # A bare clone, not --mirror: a mirror refuses pushes of single refs.
                self._repo = git.Repo.clone_from(self.service.repo, self.path, bare=True)
                with self._repo.config_writer() as cw:
                    cw.set_value('remote "origin"', "fetch", "+refs/heads/*:refs/heads/*")
                self._repo.git.fetch("--prune", "--quiet", "--tags", "origin")
        except git.GitCommandError as e:
            raise DeployError(
                f"could not fetch {self.service.name}'s repository {self.service.repo}: "
                f"{_git_message(e)}. Check `repo:` in services.yaml and that "
                "this machine can read it.") from None
        return self

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            self.update()
        return self._repo

    def resolve(self, ref: str | None) -> str:
        """A branch, tag or sha -> the full commit sha. Unknown refs are usage errors."""
        ref = ref or self.service.branch
        if not _SAFE_REF.match(ref) or ".." in ref:
            raise UsageError(f"'{ref}' is not a valid git ref name. Use a branch, tag or commit sha.")
        try:
            return self.repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except git.GitCommandError:
            branches = ", ".join(sorted(h.name for h in self.repo.branches)[:10])
            raise UsageError(
                f"ref '{ref}' not found in {self.service.name}'s repository {self.service.repo} "
                f"(branches: {branches}). Push it first, or pick an existing branch, tag or sha."
            ) from None

    def subject(self, sha: str) -> str:
        return self.repo.commit(sha).summary

    def file_at(self, sha: str, path: str) -> str | None:
        try:
            return self.repo.git.show(f"{sha}:{path}")
        except git.GitCommandError:
            return None

    def changed_files(self, old: str, new: str) -> list[str]:
        out = self.repo.git.diff("--name-only", old, new)
        return [line for line in out.splitlines() if line]

    def is_ancestor(self, old: str, new: str) -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", old, new)
            return True
        except git.GitCommandError:
            return False

    def production_head(self) -> str | None:
        try:
            return self.repo.git.rev_parse("--verify", "--quiet",
                                           f"refs/heads/{self.service.production_branch}").strip()
        except git.GitCommandError:
            return None

    def next_tag(self, when: datetime | None = None) -> str:
        """production-YYYY-MM-DD, then production-YYYY-MM-DD.2, .3 ... the same day."""
        day = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
        base = f"{self.service.tag_prefix}{day}"
        existing = {t.name for t in self.repo.tags}
        if base not in existing:
            return base
        n = 2
        while f"{base}.{n}" in existing:
            n += 1
        return f"{base}.{n}"

    def tags_at(self, sha: str) -> list[str]:
        return sorted(t.name for t in self.repo.tags
                      if t.name.startswith(self.service.tag_prefix) and t.commit.hexsha == sha)

    def check_fast_forward(self, sha: str, *, force: bool = False) -> None:
        """Refuse (before anything is touched) a deploy that would move production back."""
        head = self.production_head()
        if head and head != sha and not force and not self.is_ancestor(head, sha):
            raise UsageError(
                f"{self.service.production_branch} ({head[:7]}) is not an ancestor of {sha[:7]}: "
                "moving it there would not be a fast-forward. Deploy a commit that contains the "
                f"live one, use `deploytools rollback:{self.service.name},to=...` to go back, or pass "
                "force=true to deploy it anyway.")

    # Where a stage's successful deploys are recorded: one ref per commit in the
    # service's own origin (see "Stages" in docs/design.md).
    @staticmethod
    def stage_ref(stage: str, sha: str) -> str:
        return f"refs/deploytools/{stage}/{sha}"

    def deployed_to(self, stage: str, sha: str) -> bool:
        """Was `sha` deployed successfully to `stage`? Asked of origin itself, so every
        controller (a fresh CI runner too) gets the same answer."""
        ref = self.stage_ref(stage, sha)
        try:
            out = self.repo.git.ls_remote("origin", ref)
        except git.GitCommandError as e:
            raise DeployError(f"could not ask {self.service.repo} whether {sha[:7]} was "
                              f"deployed to {stage}: {_git_message(e)}") from None
        return any(line.split()[-1] == ref for line in out.splitlines() if line.strip())

    def mark_deployed(self, stage: str, sha: str) -> str:
        """Record in origin that `sha` was deployed successfully to `stage`."""
        ref = self.stage_ref(stage, sha)
        try:
            self.repo.git.push("--quiet", "origin", f"+{sha}:{ref}")
        except git.GitCommandError as e:
            raise DeployError(f"could not push {ref} to {self.service.repo}: "
                              f"{_git_message(e)}") from None
        return ref

    def publish(self, sha: str, *, force: bool = False, message: str = "") -> str:
        """Move the production branch to `sha` and push a new date tag. Returns the tag."""
        self.check_fast_forward(sha, force=force)
        tag = self.next_tag()
        try:
            with self.repo.git.custom_environment(**_fallback_identity(self.repo)):
                self.repo.git.tag("-a", tag, sha, "-m", message or f"deployed {sha[:7]}")
            refspec = f"{'+' if force else ''}{sha}:refs/heads/{self.service.production_branch}"
            self.repo.git.push("--quiet", "origin", refspec, f"refs/tags/{tag}")
        except git.GitCommandError as e:
            if tag in {t.name for t in self.repo.tags}:
                self.repo.git.tag("-d", tag)  # keep the cache in step with origin
            raise DeployError(f"could not push {self.service.production_branch} and tag {tag} to "
                              f"{self.service.repo}: {_git_message(e)}") from None
        return tag
