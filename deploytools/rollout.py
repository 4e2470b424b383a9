"""The driver: stage everywhere, then activate wave by wave, gate, roll back.

Deciding is done by pure modules (waves, health); this module executes the
plan through the execution seam and reports every step.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import alembic_ops, gate, lb
from . import lock as lock_mod
from . import migrations, releases, signals, venv
from .config import PRODUCTION, secrets
from .errors import (ConfigError, ConnectionFailed, DeployError, HealthGateFailed, LockedError,
                     PostDeployFailed, PublishFailed, RestoreFailed, StagingFailed, UsageError,
                     errors_text, fleet_failure)
from .hooks import HookFailed, Hooks
from .hoststate import inspect_all, inspect_script, parse_inspect
from .inventory import Target, connect_early, each
from . import plan as plan_mod
from .script import fact_list, facts, guarded, write_file
from .vcs import ServiceRepo
from .waves import compute_waves


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class HostRun:
    """What happened on one host during a deploy or rollback."""
    name: str
    previous: str | None = None
    previous_commit: str | None = None
    steps: list[str] = field(default_factory=list)
    activated: bool = False


class Rollout:
    """One deploy of `service` at `ref` to `hosts`."""

    def __init__(self, session, service, hosts: list[str], *, ref: str | None = None,
                 force: bool = False, action: str = "deploy", smart: bool = False):
        self.smart = smart
        self.session = session
        self.config = session.config
        self.service = service
        self.hosts = hosts
        self.ref = ref
        self.force = force
        self.action = action
        self.report = session.reporter
        self.runs = {h: HostRun(h) for h in hosts}
        self.pending: list[migrations.Pending] = []  # what migrate will apply, classified
        self.staged_new: set[str] = set()  # hosts where this deploy made the release dir
        # The dry run's findings (plan): why no migration was listed, the refusal a
        # deploy would meet, the warnings it would print.
        self.migrations_note: str | None = None
        self.refusal: str | None = None
        self.warnings: list[str] = []
        self.locked: str | None = None  # a poetry.lock / Pipfile.lock as hashed requirements
        self.changes: dict[str, list[str] | None] = {}  # live commit -> files changed since
        self.started = time.monotonic()
        self.stage = self.config.stage
        self.record: dict = {"service": service.name, "action": action, "hosts": hosts,
                             "started": now_iso(), "stage": self.stage}
        self.commit = self.release = None
        self.hooks = Hooks(service, stage=self.stage, say=self.say, dir_of=self.dir,
                           base_dir=os.path.dirname(os.path.abspath(self.config.path)))

    # -- helpers -------------------------------------------------------------
    def dir(self, target: Target) -> str:
        return self.service.dir_on(target.host)

    def parallel(self, targets, fn):
        return each(targets, fn, parallel=self.service.parallel)

    def say(self, kind: str, message: str, **fields):
        self.report.event(kind, message, service=self.service.name, **fields)

    def _hook(self, point: str, hosts: list[str], *, fatal: bool, release: str | None = None,
              **facts) -> None:
        """Fire `point` with this deploy's facts; a fatal point raises HookFailed (the
        caller's failure path handles it), any other records its failures."""
        if not self.hooks.any(point, facts.get("wave")):
            return
        targets = [self.fleet[h] for h in hosts] if getattr(self, "fleet", None) else []
        failures = self.hooks.fire(point, targets=targets, release=release, fatal=fatal,
                                   commit=self.commit, hosts=tuple(hosts),
                                   user=self.record.get("user"), **facts)
        if failures:
            self.record.setdefault("hook_failures", []).extend(failures)

    def _check_required_stage(self, repo) -> None:
        """production_requires: refuse, before anything is touched, a commit that the
        required stage never deployed successfully."""
        svc, need = self.service, self.service.production_requires
        if need is None or self.stage != PRODUCTION or self.action == "plan":
            return
        if repo.deployed_to(need, self.commit):
            self.say("required_stage", f"{self.commit[:7]} was deployed to {need}: ok",
                     stage=need)
            return
        raise UsageError(
            f"{svc.name}: {self.commit[:7]} ({repo.subject(self.commit)}) was never deployed "
            f"successfully to {need}, and production requires it (production_requires: "
            f"{need} in {os.path.basename(self.config.path)}). Nothing was touched. Deploy it "
            f"to {need} first, then to production again:\n"
            f"  deploytools stage:{need} deploy:{svc.name},ref={self.commit}")

    # -- the deploy ----------------------------------------------------------
    def _resolve(self) -> ServiceRepo:
        """Update the controller's mirror and pin `ref` to a commit and a release name."""
        svc = self.service
        repo = ServiceRepo(svc).update()
        commit = repo.resolve(self.ref)
        self.commit = commit
        self.release = releases.release_name(commit)
        self.record.update(ref=self.ref or svc.branch, commit=commit, release=self.release,
                           subject=repo.subject(commit))
        return repo

    def plan(self) -> plan_mod.Plan:
        """The dry run: what a deploy of `ref` would do, from the hosts' live state.
        Reads the repo and the hosts; changes nothing."""
        repo = self._resolve()
        with self.session.fleet(self.hosts) as fleet:
            self.fleet = fleet
            self._inspect()
            self.planned = self._plan(repo)
            self._dry_classify()
        return self.planned

    def _django_migrates(self) -> bool:
        """Does this deploy (or dry run) run Django's migrate? Then its migrations are
        listed and classified."""
        svc = self.service
        return svc.kind == "django" and svc.migrate and self.planned.runs("migrate")

    def _dry_classify(self) -> None:
        """The dry run's view of the migrations: the target commit's migrations loaded
        with the live release's virtualenv on the first host (nothing is staged).
        Sets `pending`, `migrations_note` (why none were listed) and `refusal` (the
        error a deploy would stop with, or None)."""
        svc = self.service
        if not self._django_migrates():
            return
        first = self.fleet[self.hosts[0]]
        try:
            r = first.run(releases.migrations_plan_script(svc, self.dir(first),
                                                          commit=self.commit),
                          what="listing the pending migrations")
            skipped = facts(r.stdout).get("migrations_plan_skipped")
            data = None if skipped else migrations.parse_probe(r.stdout)
        except (DeployError, ValueError) as e:
            # e.g. the target needs a package the live virtualenv lacks: a deploy stages
            # its own and lists them there; the dry run says it could not.
            skipped = (f"the live virtualenv on {first.name} could not load the target's "
                       f"migrations; a deploy lists them in its own: "
                       f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}")
        if skipped:
            self.migrations_note = skipped
            return
        self.pending = migrations.pending(data, svc.post_deploy_migrations)
        try:
            self.warnings = migrations.check(svc.name, self.pending, force=self.force,
                                             strict=svc.migrations.strict)
        except UsageError as e:
            self.refusal = str(e)

    def run(self) -> dict:
        # Secrets first: a missing one stops the deploy before any host is touched.
        svc = self.service = secrets.resolve(self.service)
        warning = secrets.pip_args_warning(svc)
        if warning:
            self.say("warning", f"WARNING: {warning}", warning=warning)
        # The hosts' SSH handshakes overlap the controller's git fetch.
        connect_early(self.session.fleet(self.hosts), parallel=svc.parallel)
        repo = self._resolve()
        commit = self.commit
        whole = set(self.hosts) == set(svc.hosts)  # a `host:` subset is not a stage's deploy
        self.publishes = whole and self.config.publishes
        self.records_stage = whole and bool(self.config.stages)
        self._check_required_stage(repo)
        if self.publishes:
            repo.check_fast_forward(commit, force=self.force)
        # A poetry.lock / Pipfile.lock becomes a hashed requirements list here, so a lock
        # that cannot be installed is refused before any host is touched.
        self.locked = venv.locked_requirements(svc, commit, lambda p: repo.file_at(commit, p))
        self.say("plan", f"{svc.name}: deploying {commit[:7]} ({repo.subject(commit)}) as "
                         f"{self.release} to {', '.join(self.hosts)}",
                 commit=commit, release=self.release, hosts=self.hosts)
        self.fold = self._fold(repo)
        with signals.terminating(), self.session.fleet(self.hosts) as fleet:
            self.fleet = fleet
            # Each host's state is read in the round trip that takes its lock, and when
            # what is live can be told beforehand, the release is staged in it too.
            self.lock = lock = lock_mod.FleetLock(
                fleet, svc, self.action, wait=self.session.lock_wait, say=self.say,
                then=lambda t: inspect_script(svc, self.dir(t)) + self._fold_program(t))
            self.record["user"] = lock.owner["user"]
            self.record["job"] = lock.owner["job"]
            try:
                lock.acquire()
            except LockedError:
                raise  # another deploy's business: not ours to record
            except DeployError as e:  # a host is down: say so in the others' history
                self.record.update(outcome="failed", failed_step="lock", error=str(e),
                                   duration=round(time.monotonic() - self.started, 2))
                self._write_history()
                raise
            if lock.taken_over:  # the fleet a dead deploy left may be mixed: keep its story
                self.record["took_over_lock"] = lock.taken_over
            try:
                outcome = self._locked(repo)
            except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP outside a wave
                self.record.setdefault("outcome", "failed")
                self.record["error"] = _interrupted(e)
                self._on_failure(_interrupted(e))
                if any(run.activated for run in self.runs.values()):
                    # Every wave passed: the release is live; only the bookkeeping stopped.
                    self.record["outcome"] = "live_unpublished"
                    raise PublishFailed(
                        f"{_interrupted(e)} after every wave passed: {self.release} is live on "
                        f"{', '.join(self.hosts)}, but pruning and moving "
                        f"{svc.production_branch} did not finish. Deploy the same commit "
                        f"again to record it: deploytools deploy:{svc.name},ref={self.commit}"
                    ) from None
                raise StagingFailed(f"{_interrupted(e)} before any host was switched; no host "
                                    "changed (a half-staged release is removed by its own "
                                    "script, or at the next prune).") from None
            except BaseException as e:
                self.record.setdefault("outcome", "failed")
                self.record["error"] = str(e)
                self._on_failure(str(e))
                raise
            finally:
                self.record["duration"] = round(time.monotonic() - self.started, 2)
                self._finish()
        return outcome

    def _on_failure(self, error: str) -> None:
        """on_failure hooks: told, never able to make things worse (a failure warns)."""
        try:
            self._hook("on_failure", self.hosts, fatal=False, release=None,
                       outcome=self.record.get("outcome"), error=error or None,
                       waves=len(self.record.get("waves") or []) or None)
        except Exception as e:  # noqa: BLE001  the deploy's own error must reach the user
            self.say("warning", f"  warning: on_failure hooks could not run: {e}")

    def _locked(self, repo) -> dict:
        svc = self.service
        outputs, folded = split_folded(self.lock.outputs)
        self._inspect(outputs)
        try:
            self._refuse_rejected()
            self.planned = self._plan(repo)
            self._check_migrations(repo)  # Alembic's, read from the repository
            folded = self._usable_folded(folded)
        except BaseException:
            self._drop_folded(folded)  # a refusal leaves nothing staged either
            raise
        waves = self.planned.waves
        try:
            self._hook("before_stage", self.hosts, fatal=True, release=None, waves=len(waves))
        except HookFailed as e:
            self.record["failed_step"] = "before_stage"
            raise HookFailed(f"{e}; nothing was touched.") from None
        self._stage(folded)
        self._classify()  # a refused contraction ends the deploy here, release unstaged
        try:
            self._hook("after_stage", self.hosts, fatal=True, release=self.release,
                       waves=len(waves))
        except HookFailed as e:
            self.record["failed_step"] = "after_stage"
            raise HookFailed(f"{e}; no host was switched.") from None
        self._migrate()
        self.record["waves"] = waves
        i, wave = 0, []
        try:
            # A signal between two waves is caught here too: touched hosts go back.
            for i, wave in enumerate(waves, 1):
                self.say("wave", f"wave {i}/{len(waves)}: {', '.join(wave)}", wave=i,
                         hosts=wave)
                t0 = time.monotonic()
                # A failing before_wave or after_wave hook fails the wave like its gate.
                self._hook("before_wave", wave, fatal=True, release=self.release, wave=i,
                           waves=len(waves))
                self._activate(wave, i)
                self._gate(i, waves)
                self._hook("after_wave", wave, fatal=True, release=self.release, wave=i,
                           waves=len(waves))
                self.say("wave_done", f"wave {i} ok ({time.monotonic() - t0:.1f}s)", wave=i)
        except (DeployError, KeyboardInterrupt) as e:
            reason = str(e) if isinstance(e, DeployError) else _interrupted(e)
            self.record["outcome"] = "rolled_back"
            self.record["failed_wave"] = i
            # Only the release's own failure rejects it (a gate, a readiness probe, a
            # process that does not start); a lost host or a signal does not.
            self._roll_back_all(reason=reason, reject=not isinstance(
                e, (ConnectionFailed, KeyboardInterrupt)))
            raise HealthGateFailed(
                f"wave {i} ({', '.join(wave)}) failed, and every host this deploy touched "
                f"was rolled back:\n{reason}") from None
        self._post_deploy()
        tag = None
        if self.publishes:
            tag = self._publish(repo)
        if self.records_stage:
            self._record_stage(repo)
        self.record["outcome"] = "success"
        self.say("done", f"{svc.name} {self.release} is live on {', '.join(self.hosts)} "
                         f"({time.monotonic() - self.started:.1f}s)", release=self.release,
                 commit=self.commit, tag=tag, stage=self.stage)
        self._hook("after_deploy", self.hosts, fatal=False, release=self.release,
                   outcome="success", waves=len(waves))
        return self.record

    def _record_stage(self, repo) -> None:
        """Remember in origin that this stage has this commit (production_requires reads it)."""
        try:
            ref = repo.mark_deployed(self.stage, self.commit)
        except DeployError as e:
            self.record["outcome"] = "live_unpublished"
            raise PublishFailed(
                f"{self.release} is live on every host of {self.stage} "
                f"({', '.join(self.hosts)}), but that could not be recorded: {e.message}. A "
                f"production deploy that requires {self.stage} will refuse it until you "
                f"deploy the same commit again: deploytools stage:{self.stage} "
                f"deploy:{self.service.name},ref={self.commit}") from None
        self.record["stage_ref"] = ref
        self.say("stage_ref", f"{self.stage} has {self.commit[:7]} ({ref})", ref=ref)

    def _publish(self, repo) -> str:
        """Move the production branch and push the date tag. Every host already
        serves the release, so a failure here is not a failed deploy: it is said
        as what it is, with the command that finishes the job."""
        svc = self.service
        try:
            tag = repo.publish(self.commit, force=self.force,
                               message=f"{svc.name} {self.release} by {self.record.get('user')}")
        except (DeployError, KeyboardInterrupt) as e:
            self.record["outcome"] = "live_unpublished"
            why = e.message if isinstance(e, DeployError) else _interrupted(e)
            raise PublishFailed(
                f"{self.release} is live on every host ({', '.join(self.hosts)}), but "
                f"{svc.production_branch} and its date tag were not moved: {why}. Fix the "
                f"cause, then deploy the same commit again to record it: "
                f"deploytools deploy:{svc.name},ref={self.commit} (its virtualenv is reused)."
            ) from None
        self.record["tag"] = tag
        self.say("tag", f"{svc.production_branch} -> {self.commit[:7]}, tagged {tag}", tag=tag)
        return tag

    def _inspect(self, outputs: dict[str, str] | None = None) -> None:
        """The hosts' states: from what the lock's round trip read (`outputs`), or read now."""
        states = ({n: parse_inspect(outputs[n], self.service.name) for n in self.hosts}
                  if outputs else inspect_all(self.service, self.fleet))
        self.states = states
        for name, st in states.items():
            self.runs[name].previous = st.current
            self.runs[name].previous_commit = st.manifest.get("commit")
        froms = {st.manifest.get("commit") for st in states.values()}
        self.record["from_commit"] = froms.pop() if len(froms) == 1 else None

    def _plan(self, repo) -> plan_mod.Plan:
        """What this deploy will do. A plain deploy does every step; a smart one
        only what the change between the live commit(s) and the target needs."""
        live = sorted({st.manifest.get("commit") for st in self.states.values()} - {None})
        self.changes = _changes(repo, live, self.commit)
        p = self._plan_from(live, self.changes)
        self.record["plan"] = p.to_dict()["steps"]
        return p

    def _plan_from(self, live: list[str], changes: dict) -> plan_mod.Plan:
        p = plan_mod.Plan(self.service.name, self.commit, live,
                          waves=compute_waves(self.hosts, list(self.service.rollout)))
        if self.smart:
            p.steps = plan_mod.decide(self.service, self.commit, changes)
        else:
            p.steps = [plan_mod.Step(s.name, True, "plain deploy: every step runs")
                       if s.name in ("collectstatic", "migrate", "build") else s
                       for s in plan_mod.decide(self.service, self.commit, changes)]
        return p

    # -- staging in the lock's round trip ---------------------------------------------
    def _fold(self, repo) -> dict | None:
        """What staging in the lock's round trip assumes, or None when it cannot be
        told before the hosts are read. A deploy to every host of the service takes
        the production branch for what is live (it is, after every successful deploy)
        and plans from it; each host stages only if its live commit is that one and
        the release was not rejected there, and the plan is checked against what the
        hosts say before anything is switched (`_usable_folded`). Not with
        `before_stage` hooks, which must run before anything is staged."""
        if not self.publishes or self.hooks.any("before_stage"):
            return None
        live = repo.production_head()
        if live is None or live == self.commit:
            return None
        changes = _changes(repo, [live], self.commit)
        if changes[live] is None:
            return None
        plan = self._plan_from([live], changes)
        if plan.runs("venv") and len(self.hosts) > 1:
            return None  # a new virtualenv: downloaded once for the fleet (_handover)
        return {"live": live, "static": plan.runs("collectstatic"), "build": plan.runs("build")}

    def _fold_program(self, t) -> str:
        """The staging a host runs right after its inspection, under the lock: only
        where `current` is the commit assumed live, and (unless force) the release
        was never rejected there. Between `@@folded_stage begin` and `end`."""
        if not self.fold:
            return ""
        program = self._stage_program(t, static=self.fold["static"], build=self.fold["build"])
        return releases.folded_stage_script(self.dir(t), self.fold["live"], self.commit, program,
                                            force=self.force)

    def _usable_folded(self, folded: dict[str, str]) -> dict[str, str]:
        """The hosts whose staging in the lock's round trip stands: the plan made from
        what the hosts said decides as the assumed one did, and theirs finished. The
        others (a mixed fleet, a failure there) are staged again in a round trip of
        their own; a plan that changed drops every folded release first."""
        if not folded:
            return {}
        if (self.planned.runs("collectstatic"), self.planned.runs("build")) != (
                self.fold["static"], self.fold["build"]):
            self._drop_folded(folded)
            return {}
        return {n: out for n, out in folded.items()
                if "@@folded_stage end" in out and "@@step_failed folded_stage" not in out}

    def _drop_folded(self, folded: dict[str, str]) -> None:
        """Remove the releases staged in the lock's round trip (best effort)."""
        staged = [self.fleet[n] for n, out in folded.items() if "@@release staged" in out]
        _, errors = self.parallel(staged, lambda t: t.run(
            releases.unstage_script(self.dir(t), self.release), what="removing the release"))
        for name, err in errors.items():
            self.say("warning", f"  {name}: could not remove {self.release}: {err}", host=name)

    def _classify(self) -> None:
        """Before any migration or switch: list the migrations this deploy would apply
        (Django's loader, in the staged release on the first host), classify them, and
        refuse a contract that would run while old code serves (migrations.check)."""
        svc = self.service
        if not self._django_migrates():
            return
        first = self.fleet[self.hosts[0]]
        try:
            r = first.run(releases.migrations_plan_script(svc, self.dir(first),
                                                          release=self.release),
                          what="listing the pending migrations")
            data = migrations.parse_probe(r.stdout)
        except (DeployError, ValueError) as e:
            self.record["outcome"] = "failed"
            self.record["failed_step"] = "migrations"
            raise StagingFailed(f"listing the migrations of {self.release} failed on "
                                f"{first.name}; no host was switched:\n{e}") from None
        self.pending = migrations.pending(data, svc.post_deploy_migrations)
        self.record["migration_plan"] = [m.to_dict() for m in self.pending]
        for m in self.pending:
            self.say("migration", f"  {m.name}: {m.verdict.upper()}, runs {m.when} "
                                  f"({'; '.join(op.description for op in m.operations)})",
                     migration=m.to_dict())
        try:
            warnings = migrations.check(svc.name, self.pending, force=self.force,
                                        strict=svc.migrations.strict)
        except UsageError:
            self.record["outcome"] = "refused"
            self.record["failed_step"] = "migrations"
            self._unstage()
            raise
        for w in warnings:
            self.say("warning", f"WARNING: {w}", warning=w)
        if warnings:
            self.record["migration_warnings"] = warnings

    def _unstage(self) -> None:
        """A refused release leaves nothing behind: the release directories this deploy
        staged are removed (best effort), so a rollback never picks one."""
        targets = [self.fleet[h] for h in self.hosts if h in self.staged_new]
        _, errors = self.parallel(targets, lambda t: t.run(
            releases.unstage_script(self.dir(t), self.release), what="removing the release"))
        for name, err in errors.items():
            self.say("warning", f"  {name}: could not remove {self.release}: {err}", host=name)

    def _record_migrations(self, state: dict, ran_post: bool) -> None:
        """The migration state and the classification, in every host's release: a
        rollback compares the states and warns about contractions that ran."""
        plan = [dict(m.to_dict(), ran=ran_post or not m.post_deploy) for m in self.pending]
        base = f"releases/{self.release}/.deploy"
        self.parallel(self.fleet, lambda t: t.run(
            write_file(f"{self.dir(t)}/{base}/migrations.json",
                       json.dumps(state, sort_keys=True) + "\n", 0o644) + "\n"
            + write_file(f"{self.dir(t)}/{base}/migration-plan.json",
                         json.dumps(plan, sort_keys=True) + "\n", 0o644),
            what="recording the migration state"))

    def _post_deploy(self) -> None:
        """The post-deploy migrations: once, on the first host, after the last wave
        passed and before the tag. Only when this deploy covers every host of the
        service: any host left on the old code would meet the contracted schema."""
        post = [m for m in self.pending if m.post_deploy]
        if not post:
            return
        svc = self.service
        names = ", ".join(m.name for m in post)
        if not self.publishes:
            self.record["post_deploy_skipped"] = [m.name for m in post]
            self.say("warning", f"WARNING: post-deploy migrations {names} were not run: this "
                                "deploy covered only some of the service's hosts, and the "
                                "others still run the old code. They run after the last wave "
                                "of the next deploy to every host.", migrations=[m.name for m in post])
            return
        first = self.fleet[self.hosts[0]]
        t0 = time.monotonic()
        self.say("post_deploy", f"post-deploy migrations on {first.name}: {names}",
                 host=first.name, migrations=[m.name for m in post])
        try:
            r = first.run(releases.migrate_script(svc, self.dir(first), self.release),
                          what="running the post-deploy migrations")
        except DeployError as e:
            self.record["outcome"] = "post_deploy_failed"
            self.record["failed_step"] = "post_deploy_migrate"
            self.record["post_deploy_failed"] = [m.name for m in post]
            raise PostDeployFailed(
                f"{self.release} is live on every host ({', '.join(self.hosts)}), but its "
                f"post-deploy migrations ({names}) failed on {first.name}. The new code "
                f"stays live (it does not need them); the schema was not contracted, and "
                f"{svc.production_branch} was not moved:\n{e.message}\nFix the migration, "
                f"then run it with: deploytools migrate:{svc.name} (or deploy the same commit "
                "again, which also tags it).") from None
        self.runs[first.name].steps.append("post_deploy_migrate")
        self.record["post_deploy_migrations"] = [m.name for m in post]
        state = plan_mod.parse_showmigrations(r.stdout)
        self.record["migrations"] = state
        self._record_migrations(state, ran_post=True)
        self.say("post_deploy_done", f"  {first.name}: post-deploy migrations applied "
                                     f"({time.monotonic() - t0:.1f}s)", host=first.name)

    def _check_migrations(self, repo) -> None:
        """Alembic migrations this deploy brings (files changed under `migrations_path`
        since a live commit), classified from their upgrade() source before anything is
        staged: a contract operation is refused unless force=true, an unknown one warns.
        Nothing live yet: no old code to break."""
        svc = self.service
        if not (svc.migrate_command and svc.migrations_path and self.planned.runs("migrate")):
            return
        files = sorted({f for changed in self.changes.values() if changed
                        for f in alembic_ops.changed_migrations(changed, svc.migrations_path)})
        findings = []
        for path in files:
            source = repo.file_at(self.commit, path)
            if source is not None:  # (a deleted file runs nothing)
                findings += alembic_ops.classify(path, source)
        self.record["migration_ops"] = [dict(f.__dict__) for f in findings]
        contract = [f for f in findings if f.verdict == "contract"]
        unknown = [f for f in findings if f.verdict == "unknown"]
        if unknown:
            self.say("warning", "warning: cannot tell whether these migration operations are "
                     "safe while the old code still serves: " + "; ".join(map(str, unknown)),
                     operations=[str(f) for f in unknown])
        if contract and self.force:
            self.record["forced_contract"] = [str(f) for f in contract]
            self.say("warning", "warning: force=true: migrating with operations that break the "
                     "old code still serving until the last wave: " + "; ".join(map(str, contract)),
                     operations=[str(f) for f in contract])
        elif contract:
            self.record["failed_step"] = "check_migrations"
            raise ConfigError(
                f"{svc.name} {self.commit[:7]}: migrations that break the old code, which "
                f"serves on the other hosts until the last wave: "
                f"{'; '.join(map(str, contract))}. Split the change into a release that stops "
                f"using the column or table and a later one that drops it, or deploy with "
                f"force=true if no old code reads it. Nothing was touched.")

    def _migrate(self) -> None:
        """Once per deploy, on one host, before any host is activated (post-deploy
        migrations wait: `_post_deploy`)."""
        svc = self.service
        if svc.kind != "django" and svc.migrate_command:
            return self._migrate_command()
        if svc.kind != "django" or not svc.migrate:
            return
        first = self.fleet[self.hosts[0]]
        d = self.dir(first)
        if self.planned.runs("migrate"):
            t0 = time.monotonic()
            try:
                r = first.run(releases.migrate_script(
                    svc, d, self.release, targets=migrations.pre_targets(self.pending)),
                              what="migrating the database")
            except DeployError as e:
                self.record["outcome"] = "failed"
                self.record["failed_step"] = "migrate"
                raise StagingFailed(f"migrations of {self.release} failed on {first.name}; no "
                                    f"host was switched:\n{e}") from None
            applied = facts(r.stdout).get("migrated") == "yes"
            if applied:
                self.runs[first.name].steps.append("migrate")
            self.say("migrate", f"  {first.name}: migrations "
                                f"{'applied' if applied else 'already up to date'} "
                                f"({time.monotonic() - t0:.1f}s)", host=first.name, applied=applied)
            out = r.stdout
        else:
            out = first.run(releases.manage_script(svc, d, self.release, "showmigrations --list"),
                            what="reading the migration state").stdout
        state = plan_mod.parse_showmigrations(out)
        self.record["migrations"] = state
        self._record_migrations(state, ran_post=False)

    def _migrate_command(self) -> None:
        svc = self.service
        if not self.planned.runs("migrate"):
            return
        first = self.fleet[self.hosts[0]]
        t0 = time.monotonic()
        try:
            first.run(releases.migrate_command_script(svc, self.dir(first), self.release),
                      what="migrating the database (migrate_command)")
        except DeployError as e:
            self.record["outcome"] = "failed"
            self.record["failed_step"] = "migrate"
            raise StagingFailed(f"migrate_command of {self.release} failed on {first.name}; "
                                f"no host was switched:\n{e}") from None
        self.runs[first.name].steps.append("migrate")
        self.say("migrate", f"  {first.name}: migrate_command ran "
                            f"({time.monotonic() - t0:.1f}s)", host=first.name, applied=True)

    def _refuse_rejected(self) -> None:
        if self.force:
            return
        for name, st in self.states.items():
            for r in st.rejected:
                if r.endswith("-" + self.commit[:7]):
                    raise UsageError(
                        f"{self.commit[:7]} was rejected by an earlier deploy's health gate "
                        f"(release {r} on {name}). Fix it, or deploy it again with force=true.")

    def _stage_program(self, t, *, static: bool, build: bool, wheels: str | None = None) -> str:
        svc = self.service
        manifest = {"service": svc.name, "ref": self.ref or svc.branch,
                    "deployed_by": self.record.get("user"), "deployed_at": now_iso()}
        return releases.stage_script(
            svc, t.host, self.dir(t), self.release, self.commit, manifest,
            static="run" if static else "reuse", build="run" if build else "reuse",
            locked=self.locked, wheels=wheels)

    def _handover(self, folded: dict[str, str]) -> venv.Handover | None:
        """When the release needs a new virtualenv on two hosts or more: one download
        of its requirements for them all, on the first (venv.Handover)."""
        rest = [self.fleet[h] for h in self.hosts if h not in folded]
        if len(rest) < 2 or not self.planned.runs("venv"):
            return None
        return venv.Handover(rest[0], rest[1:], self.dir, self.release, say=self.say,
                             parallel=self.service.parallel)

    def _stage(self, folded: dict[str, str] | None = None) -> None:
        """Stage the release on every host: in a round trip of its own, except where
        it was staged in the lock's (`folded`: that output)."""
        svc = self.service
        folded = folded or {}
        self.say("stage", f"staging {self.release} on {len(self.hosts)} host(s)"
                 + (f" ({len(folded)} with the lock)" if folded else ""))

        handover = self._handover(folded)

        def stage(t):
            t0 = time.monotonic()
            if t.name in folded:
                out = folded[t.name]
            else:
                first = handover is not None and t is handover.first
                wheels = None if handover is None else "fetch" if first else "wait"
                try:
                    out = t.run(self._stage_program(t, static=self.planned.runs("collectstatic"),
                                                    build=self.planned.runs("build"),
                                                    wheels=wheels),
                                what=f"staging {self.release}",
                                on_line=handover.on_line if first else None).stdout
                finally:
                    if first:
                        handover.finish()
            f = facts(out)
            run = self.runs[t.name]
            run.steps.append("fetch")
            if f.get("release") == "staged":
                self.staged_new.add(t.name)
            if "venv" in f:
                run.steps.append(f"venv_{f['venv'].split()[0]}")
            handed = fact_list(out, "wheels")  # a fallback also says so as a @@warning
            if "received" in handed and "fallback" not in handed:
                run.steps.append("venv_from_fleet_download")
            for warning in fact_list(out, "warning"):
                self.say("warning", f"  {t.name}: warning: {warning}", host=t.name,
                         warning=warning)
            replaced = fact_list(out, "shared_replaced")
            if replaced:
                why = (f"the repository's {', '.join(replaced)} replaced by link(s) into "
                       f"{self.dir(t)}/shared/ (shared: in services.yaml)")
                self.say("warning", f"  {t.name}: warning: {why}", host=t.name, warning=why)
            if "build" in f:
                run.steps.append("build" if f["build"] == "ran" else "build_reused")
            if "collectstatic" in f:
                run.steps.append("collectstatic" if f["collectstatic"] == "ran"
                                 else "collectstatic_reused")
            if svc.kind != "command":
                run.steps.append("check_config")
            took = "with the lock" if t.name in folded else f"{time.monotonic() - t0:.1f}s"
            self.say("staged", f"  {t.name}: staged ({', '.join(run.steps)}; {took})",
                     host=t.name, steps=run.steps, with_lock=t.name in folded)
            return f

        _, errors = self.parallel(self.fleet, stage)
        if errors:
            self.record["outcome"] = "failed"
            self.record["failed_step"] = "stage"
            raise StagingFailed(
                f"staging {self.release} ({self.commit[:7]}) failed; no host was switched:\n"
                + errors_text(errors))

    def _activate(self, wave: list[str], i: int) -> None:
        svc = self.service

        def activate(t):
            run = self.runs[t.name]
            # With an `lb:`, a host that restarts is drained first and back in the pool
            # only once it serves the new release (lb.py).
            with lb.around_activation(balancer, svc, t, self.release, say=self.say):
                run.activated = True  # from here on, `current` may have moved
                try:  # one round trip: note the wave in the lock, switch, reload, and
                    # the host says when it is ready
                    mode = releases.activate(svc, t, self.release, first=self.lock.note_program(
                        t, wave=i, release=self.release))
                except ConnectionFailed as e:
                    run.activated = e.delivered  # never sent: the host is as it was
                    raise
            run.steps.append(f"activate_{mode}")
            self.say("activated", f"  {t.name}: serving {self.release} ({mode})", host=t.name,
                     mode=mode)
        with lb.connect(svc, self.config) as balancer:
            _, errors = self.parallel([self.fleet[h] for h in wave], activate)
        if errors:
            raise fleet_failure(errors, errors_text(errors))

    def _gate(self, i: int, waves: list[list[str]]) -> None:
        new = [h for w in waves[:i] for h in w]
        # A host with nothing deployed yet is no baseline: every probe of it fails.
        old = [h for w in waves[i:] for h in w if self.runs[h].previous]
        verdict = gate.bake(self.fleet, self.service, new, old, self.say)
        f = verdict.figures
        self.record.setdefault("gates", []).append(
            {"wave": i, "outcome": verdict.outcome, "reason": verdict.reason, "figures": f})
        self.say("gate", f"  gate {i}: {verdict.outcome.upper()}: new {f.get('e_c')}/{f.get('n_c')} "
                         f"errors, " + (f"baseline {f['e_b']}/{f['n_b']}" if f.get("n_b") is not None
                                         else "no baseline") + f": {verdict.reason}",
                 wave=i, outcome=verdict.outcome, figures=f)
        if verdict.outcome == "fail":
            raise HealthGateFailed(f"error-rate gate after wave {i} failed: {verdict.reason}")

    def _roll_back_all(self, reason: str, *, reject: bool = True) -> None:
        """Return every activated host to its previous release, all at once;
        with `reject`, mark the release so a later deploy of it needs force=true."""
        touched = [h for h in reversed(self.hosts) if self.runs[h].activated]
        self.say("rollback", f"rolling back {', '.join(touched)}: {reason.splitlines()[0]}",
                 hosts=touched)
        with lb.connect(self.service, self.config) as balancer:
            def restore(t):
                # A drained host returns to the pool only once restored and healthy.
                with lb.around_activation(balancer, self.service, t,
                                          self.runs[t.name].previous, say=self.say):
                    releases.restore(self.service, t, self.runs[t.name].previous)
                if reject:
                    t.run(releases.mark_rejected_script(self.dir(t), self.release),
                          check=False)
                self.say("restored", f"  {t.name}: back on "
                                     f"{self.runs[t.name].previous or 'nothing'}", host=t.name)
            # Every touched host at once (up to `parallel`): a rollback of N hosts takes
            # about the time of one.
            _, failed = self.parallel([self.fleet[n] for n in touched], restore)
        untouched = [self.fleet[n] for n in self.hosts if reject and not self.runs[n].activated]
        # Best effort: the mark only spares a later deploy the same gate.
        _, unmarked = self.parallel(untouched, lambda t: t.run(
            releases.mark_rejected_script(self.dir(t), self.release), check=False))
        for name, e in unmarked.items():
            self.say("warning", f"  {name}: could not mark {self.release} rejected: "
                                f"{getattr(e, 'message', e)}", host=name)
        self.record["rolled_back"] = touched
        if failed:
            self.record["outcome"] = "unrestored"
        if touched:
            self._hook("after_rollback", [h for h in touched if h not in failed], fatal=False,
                       release=None, outcome=self.record["outcome"],
                       error=reason.splitlines()[0])
        if failed:
            raise RestoreFailed(
                f"the deploy failed ({reason.splitlines()[0]}) and these hosts could not be "
                f"restored; a human must look:\n{errors_text(failed)}")

    def _finish(self) -> None:
        """One round trip per host at the end: the history line, pruning (after a
        release went live), and the lock's release, which happens even when the others
        fail."""
        self._steps_for_history()
        live = self.record.get("outcome") in ("success", "live_unpublished")

        def program(t):
            run = self.runs[t.name]
            rec = dict(self.record, host=t.name, from_release=run.previous,
                       from_commit=run.previous_commit, steps=run.steps)
            out = guarded(lock_mod.history_append_script(self.dir(t), rec), "history")
            if live:
                out += guarded(releases.prune_script(
                    self.dir(t), self.service.keep_releases, [run.previous]), "prune")
            return out
        outs = self.lock.release(before=program)
        for name, out in outs.items():
            failed = [f for f in fact_list(out, "step_failed") if f != "before_unlock"]
            if failed:
                self.say("warning", f"  {name}: {' and '.join(failed)} failed (the deploy "
                                    "itself is not affected)", host=name, failed=failed)

    def _steps_for_history(self) -> None:
        # `steps` is what ran on that host; `all_steps` what ran anywhere in this deploy.
        self.record["all_steps"] = list(dict.fromkeys(
            step for run in self.runs.values() for step in run.steps))

    def _write_history(self) -> None:
        """The history line alone, on every host (a deploy that could not take the lock)."""
        self._steps_for_history()

        def write(t):
            run = self.runs[t.name]
            rec = dict(self.record, host=t.name, from_release=run.previous,
                       from_commit=run.previous_commit, steps=run.steps)
            t.run(lock_mod.history_append_script(self.dir(t), rec), check=False)
        self.parallel(self.fleet, write)


def _changes(repo, live: list[str], commit: str) -> dict[str, list[str] | None]:
    """The files changed from each live commit to `commit` (None: not in the repo,
    e.g. force-pushed away)."""
    changes: dict[str, list[str] | None] = {}
    for c in live:
        try:
            changes[c] = repo.changed_files(c, commit)
        except Exception:  # noqa: BLE001
            changes[c] = None
    return changes


def split_folded(outputs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The lock's outputs cut in two: what the inspection printed, and what the
    staging in the same round trip printed (only the hosts that staged)."""
    inspected, folded = {}, {}
    for name, out in outputs.items():
        before, sep, after = out.partition("@@folded_stage begin\n")
        inspected[name] = before
        if sep:
            folded[name] = after
    return inspected, folded


def _interrupted(e: BaseException) -> str:
    return str(e) if str(e) else "interrupted (Ctrl-C)"
