"""The driver: stage everywhere, then activate wave by wave, gate, roll back.

Deciding is done by pure modules (waves, health); this module executes the
plan through the execution seam and reports every step.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import gate, lb
from . import lock as lock_mod
from . import releases, signals
from .errors import (ConnectionFailed, DeployError, HealthGateFailed, LockedError, PublishFailed,
                     RestoreFailed, StagingFailed, UsageError, errors_text, fleet_failure)
from .hoststate import inspect_all, inspect_script, parse_inspect
from .inventory import Target, each
from . import plan as plan_mod
from .script import fact_list, facts, write_file
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
        self.started = time.monotonic()
        self.record: dict = {"service": service.name, "action": action, "hosts": hosts,
                             "started": now_iso()}

    # -- helpers -------------------------------------------------------------
    def dir(self, target: Target) -> str:
        return self.service.dir_on(target.host)

    def parallel(self, targets, fn):
        return each(targets, fn, parallel=self.service.parallel)

    def say(self, kind: str, message: str, **fields):
        self.report.event(kind, message, service=self.service.name, **fields)

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
        return self._plan(repo)

    def run(self) -> dict:
        svc = self.service
        repo = self._resolve()
        commit = self.commit
        self.publishes = set(self.hosts) == set(svc.hosts)
        if self.publishes:
            repo.check_fast_forward(commit, force=self.force)
        self.say("plan", f"{svc.name}: deploying {commit[:7]} ({repo.subject(commit)}) as "
                         f"{self.release} to {', '.join(self.hosts)}",
                 commit=commit, release=self.release, hosts=self.hosts)
        with signals.terminating(), self.session.fleet(self.hosts) as fleet:
            self.fleet = fleet
            # Each host's state is read in the round trip that takes its lock.
            self.lock = lock = lock_mod.FleetLock(
                fleet, svc, self.action, wait=self.session.lock_wait, say=self.say,
                then=lambda t: inspect_script(svc, self.dir(t)))
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
                raise
            finally:
                self.record["duration"] = round(time.monotonic() - self.started, 2)
                self._finish()
        return outcome

    def _locked(self, repo) -> dict:
        svc = self.service
        self._inspect(self.lock.outputs)
        self._refuse_rejected()
        self.planned = self._plan(repo)
        self._stage()
        self._migrate()
        waves = self.planned.waves
        self.record["waves"] = waves
        i, wave = 0, []
        try:
            # A signal between two waves is caught here too: touched hosts go back.
            for i, wave in enumerate(waves, 1):
                self.lock.note(wave=i, release=self.release)  # before anyone sees the wave
                self.say("wave", f"wave {i}/{len(waves)}: {', '.join(wave)}", wave=i,
                         hosts=wave)
                t0 = time.monotonic()
                self._activate(wave)
                self._gate(i, waves)
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
        tag = None
        if self.publishes:
            tag = self._publish(repo)
        self.record["outcome"] = "success"
        self.say("done", f"{svc.name} {self.release} is live on {', '.join(self.hosts)} "
                         f"({time.monotonic() - self.started:.1f}s)", release=self.release,
                 commit=self.commit, tag=tag)
        return self.record

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
        changes: dict[str, list[str] | None] = {}
        for c in live:
            try:
                changes[c] = repo.changed_files(c, self.commit)
            except Exception:  # the live commit is not in the repo (force-pushed away)
                changes[c] = None
        p = plan_mod.Plan(self.service.name, self.commit, live,
                          waves=compute_waves(self.hosts, list(self.service.rollout)))
        if self.smart:
            p.steps = plan_mod.decide(self.service, self.commit, changes)
        else:
            p.steps = [plan_mod.Step(s.name, True, "plain deploy: every step runs")
                       if s.name in ("collectstatic", "migrate", "build") else s
                       for s in plan_mod.decide(self.service, self.commit, changes)]
        self.record["plan"] = p.to_dict()["steps"]
        return p

    def _migrate(self) -> None:
        """Once per deploy, on one host, before any host is activated."""
        svc = self.service
        if svc.kind != "django" or not svc.migrate:
            return
        first = self.fleet[self.hosts[0]]
        d = self.dir(first)
        if self.planned.runs("migrate"):
            t0 = time.monotonic()
            try:
                r = first.run(releases.migrate_script(svc, d, self.release),
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
        # Recorded in every host's release: a rollback compares these.
        body = json.dumps(state, sort_keys=True)
        self.parallel(self.fleet, lambda t: t.run(
            write_file(f"{self.dir(t)}/releases/{self.release}/.deploy/migrations.json",
                       body + "\n", 0o644), what="recording the migration state"))

    def _refuse_rejected(self) -> None:
        if self.force:
            return
        for name, st in self.states.items():
            for r in st.rejected:
                if r.endswith("-" + self.commit[:7]):
                    raise UsageError(
                        f"{self.commit[:7]} was rejected by an earlier deploy's health gate "
                        f"(release {r} on {name}). Fix it, or deploy it again with force=true.")

    def _stage(self) -> None:
        svc = self.service
        manifest = {"service": svc.name, "ref": self.ref or svc.branch,
                    "deployed_by": self.record.get("user"), "deployed_at": now_iso()}
        self.say("stage", f"staging {self.release} on {len(self.hosts)} host(s)")

        def stage(t):
            t0 = time.monotonic()
            r = t.run(releases.stage_script(
                svc, t.host, self.dir(t), self.release, self.commit, manifest,
                static="run" if self.planned.runs("collectstatic") else "reuse",
                build="run" if self.planned.runs("build") else "reuse"),
                      what=f"staging {self.release}")
            f = facts(r.stdout)
            run = self.runs[t.name]
            run.steps.append("fetch")
            if "venv" in f:
                run.steps.append(f"venv_{f['venv'].split()[0]}")
            if "warning" in f:
                self.say("warning", f"  {t.name}: warning: {f['warning']}", host=t.name,
                         warning=f["warning"])
            if "build" in f:
                run.steps.append("build" if f["build"] == "ran" else "build_reused")
            if "collectstatic" in f:
                run.steps.append("collectstatic" if f["collectstatic"] == "ran"
                                 else "collectstatic_reused")
            if svc.kind != "command":
                run.steps.append("check_config")
            self.say("staged", f"  {t.name}: staged ({', '.join(run.steps)}; "
                               f"{time.monotonic() - t0:.1f}s)", host=t.name, steps=run.steps)
            return f

        _, errors = self.parallel(self.fleet, stage)
        if errors:
            self.record["outcome"] = "failed"
            self.record["failed_step"] = "stage"
            raise StagingFailed(
                f"staging {self.release} ({self.commit[:7]}) failed; no host was switched:\n"
                + errors_text(errors))

    def _activate(self, wave: list[str]) -> None:
        svc = self.service

        def activate(t):
            run = self.runs[t.name]
            # With an `lb:`, a host that restarts is drained first and back in the pool
            # only once it serves the new release (lb.py).
            with lb.around_activation(balancer, svc, t, self.release, say=self.say):
                run.activated = True  # from here on, `current` may have moved
                try:  # one round trip: switch, reload, and the host says when it is ready
                    mode = releases.activate(svc, t, self.release)
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
            out = lock_mod.guarded(lock_mod.history_append_script(self.dir(t), rec), "history")
            if live:
                out += lock_mod.guarded(releases.prune_script(
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


def _interrupted(e: BaseException) -> str:
    return str(e) if str(e) else "interrupted (Ctrl-C)"
