"""Smart deploy decisions, pure: (what changed between live and target) -> steps.

A step is needed when the change touches its inputs:
- virtualenv: a file the install method may read (`dependency_files`: a new
  venv, and a restart onto it);
- migrate: a new or changed migration file (`<app>/migrations/NNNN_*.py`), or for
  `migrate_command` any file under `migrations_path` (always, without one);
- collectstatic: any file under a `static/` directory (otherwise the live
  release's collected files are reused, hard-linked);
- build (kind command): a file matching `build_inputs` (default: any file).
  When none changed, the live release's `build_outputs` are hard-linked into
  the new release instead (`build_reused`); without `build_outputs` there is
  nothing to reuse and the build always runs. Staging still builds when the
  live release was built by another `build` command or environment.
With nothing live yet every step is needed.

Kind command has no reload/restart choice to make here: it restarts unless its
`reload_signal` names a signal (see config.RELOAD_DEFAULT).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

_MIGRATION = re.compile(r"(^|/)migrations/\d{4}_[^/]*\.py$")
_STATIC = re.compile(r"(^|/)static/")


@dataclass(frozen=True)
class Step:
    name: str
    run: bool
    reason: str


@dataclass
class Plan:
    service: str
    target: str
    live: list[str]  # distinct live commits (empty: nothing deployed)
    steps: list[Step] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)

    def runs(self, name: str) -> bool:
        return any(s.name == name and s.run for s in self.steps)

    def to_dict(self) -> dict:
        return {"service": self.service, "target": self.target, "live": self.live,
                "steps": [s.__dict__ for s in self.steps], "waves": self.waves}


def decide(service, target: str, changes: dict[str, list[str] | None]) -> list[Step]:
    """`changes` maps each live commit to the files changed from it to `target`
    (None: unknown, e.g. the live commit is not in the repository)."""
    steps: list[Step] = []

    def needed(predicate, what: str) -> tuple[bool, str]:
        if not changes:
            return True, "nothing is live yet"
        for live, files in changes.items():
            if files is None:
                return True, f"cannot compare with live {live[:7]}"
            hits = [f for f in files if predicate(f)]
            if hits:
                more = f" (+{len(hits) - 3} more)" if len(hits) > 3 else ""
                return True, f"{what} changed since {live[:7]}: {', '.join(hits[:3])}{more}"
        return False, f"{what} unchanged"

    if service.kind != "command":
        inputs = dependency_files(service)
        run, why = needed(lambda f: f in inputs, "dependencies" if len(inputs) != 1
                          else inputs[0])
        steps.append(Step("venv", run, why))
    if service.kind == "command" and service.build:
        steps.append(build_step(service, changes, needed))
    if service.kind == "django" and service.collectstatic:
        run, why = needed(lambda f: bool(_STATIC.search(f)), "static files")
        steps.append(Step("collectstatic", run, why))
    if service.kind == "django" and service.migrate:
        run, why = needed(lambda f: bool(_MIGRATION.search(f)), "migrations")
        steps.append(Step("migrate", run, why))
    if service.kind != "django" and service.migrate_command:
        if service.migrations_path:
            base = service.migrations_path.rstrip("/")
            run, why = needed(lambda f: f == base or f.startswith(base + "/"), base)
        else:
            run, why = True, "no migrations_path: migrate_command runs on every deploy"
        steps.append(Step("migrate", run, why))
    if service.kind == "command":
        steps.append(Step("restart", True, "reload_signal is restart: the program is stopped "
                                           "and started on the new release")
                     if service.reload_signal == "restart" else
                     Step("reload", True, f"the program is sent {service.reload_signal} "
                                          "(its reload_signal)"))
        return steps
    venv = next((s for s in steps if s.name == "venv"), None)
    restart = venv is not None and venv.run and bool(changes)
    steps.append(Step("restart" if restart else "reload", True,
                      "new virtualenv: the processes restart onto it" if restart
                      else "same virtualenv: graceful reload, no request dropped (a "
                           "changed env or secret restarts instead: each host compares)"))
    return steps


LOCK_FILES = ("uv.lock", "poetry.lock", "Pipfile.lock")
PROJECT_FILES = ("pyproject.toml", "setup.py", "setup.cfg")


def dependency_files(service) -> tuple[str, ...]:
    """The files whose change may change the virtualenv, for the service's `install`.
    With `auto` the host picks the method from the release, so every candidate counts
    (the host's venv key decides in the end; this only predicts a restart)."""
    req = (service.requirements,) if service.requirements else ()
    return {"requirements": req, "uv": ("uv.lock", "pyproject.toml"),
            "poetry": ("poetry.lock",) + PROJECT_FILES, "pipenv": ("Pipfile.lock",) + PROJECT_FILES,
            "project": PROJECT_FILES, "none": ()}.get(
        service.install, req + LOCK_FILES + PROJECT_FILES)


def matches_build_inputs(path: str, patterns) -> bool:
    """Whether a changed file is a build input. Patterns follow git's pathspecs:
    `src` and `src/` cover the directory, `*.java` any Java file (`*` crosses `/`).
    No patterns (None) means every file is an input."""
    if patterns is None:
        return True
    for p in patterns:
        base = p.rstrip("/")
        if path == base or path.startswith(base + "/") or fnmatch.fnmatchcase(path, p):
            return True
    return False


def build_step(service, changes: dict[str, list[str] | None], needed) -> Step:
    """Build, or reuse the live release's outputs when no build input changed."""
    if not service.build_outputs:
        return Step("build", True, "no build_outputs declared: nothing to reuse")
    inputs = service.build_inputs
    run, why = needed(lambda f: matches_build_inputs(f, inputs), "build inputs")
    if run:
        return Step("build", True, why)
    outputs = ", ".join(service.build_outputs)
    scope = ", ".join(inputs) if inputs is not None else "every file"
    return Step("build", False, f"build inputs ({scope}) unchanged: {outputs} hard-linked from "
                                "the live release")


def migration_delta(current: dict[str, str], target: dict[str, str]) -> list[str]:
    """Migrations applied in `current` that `target` lacks, as app.name, per app.

    Each dict maps app -> its last applied migration (from a release manifest).
    Only apps whose last migration differs are named.
    """
    return [f"{app}.{name}" for app, name in sorted(current.items())
            if target.get(app) != name]


def parse_showmigrations(output: str) -> dict[str, str]:
    """`manage.py showmigrations --list` -> {app: last applied migration}."""
    state: dict[str, str] = {}
    app = None
    for line in output.splitlines():
        if line and not line.startswith(" "):
            app = line.strip()
            continue
        m = re.match(r"^\s*\[(?P<mark>[X ])\]\s+(?P<name>\S+)", line)
        if m and app and m.group("mark") == "X":
            state[app] = m.group("name")
    return state
