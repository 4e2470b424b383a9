"""Every task but deploy: rollback, restart, status, setup, history, unlock.

Each is one function taking the session and plain arguments; the fabfile
calls exactly one of them.
"""
from __future__ import annotations

import json
import os
import time

from . import lock as lock_mod
from . import lb, releases, signals
from . import migrations as migrations_mod
from .config import secrets
from .errors import (ConfigError, DeployError, LockedError, RestoreFailed, UsageError,
                     errors_text)
from .hooks import Hooks
from .hoststate import commit_of, fleet_rollback_target, inspect_all, inspect_script, parse_inspect
from .inventory import each
from .probe import probe
from .rollout import Rollout, now_iso
from . import plan as plan_mod
from .script import facts
from .vcs import ServiceRepo


def _lock(session, fleet, service, action: str, *, then=None) -> lock_mod.FleetLock:
    return lock_mod.FleetLock(fleet, service, action, wait=session.lock_wait,
                              say=session.reporter.event, then=then)


def _service_and_hosts(session, name: str):
    service = session.config.service(name)
    return service, session.hosts_for(service)


def _given(value: str | None, what: str, example: str) -> str | None:
    """An argument that was given must say something: an empty `ref=` (a CI job whose
    $TAG came out empty) would otherwise deploy the default branch."""
    if value is not None and not str(value).strip():
        raise UsageError(f"{what}= is empty. Give it a value ({example}), or leave it out "
                         "to use the default.")
    return value


def deploy(session, name: str, ref: str | None = None, *, force: bool = False,
           smart: bool = False) -> dict:
    ref = _given(ref, "ref", "a branch, tag or commit")
    service, hosts = _service_and_hosts(session, name)
    return Rollout(session, service, hosts, ref=ref, force=force,
                   action="smart_deploy" if smart else "deploy", smart=smart).run()


def plan(session, name: str, ref: str | None = None) -> dict:
    """Dry run of smart_deploy: reads the hosts and the repo, changes nothing."""
    ref = _given(ref, "ref", "a branch, tag or commit")
    service, hosts = _service_and_hosts(session, name)
    report = session.reporter
    rollout = Rollout(session, service, hosts, ref=ref, smart=True, action="plan")
    p = rollout.plan()
    live = ", ".join(c[:7] for c in p.live) or "nothing"
    report.event("plan", f"{service.name}: {live} -> {p.target[:7]} ({rollout.record['subject']})",
                 **p.to_dict())
    for step in p.steps:
        report.event("plan_step", f"  {'RUN ' if step.run else 'skip'}  {step.name:<14} {step.reason}",
                     step=step.name, run=step.run, reason=step.reason)
    _report_env(service, report, "plan_env")
    try:  # what the deploy would read first (a dry run says it; the values go nowhere)
        secrets.resolve(service)
    except ConfigError as e:
        report.event("warning", f"  warning: the deploy would stop before touching a host: "
                                f"{e}", warning=str(e))
    _plan_migrations(rollout, report)
    g = service.gate
    for i, wave in enumerate(p.waves, 1):
        report.event("plan_wave", f"  wave {i}: {', '.join(wave)}  then readiness "
                                  f"({service.health.path}) and a {g.bake:g}s bake gate "
                                  f"(ceiling {g.max_error_rate:.1%})", wave=i, hosts=wave)
    report.event("plan_done", "nothing was changed (dry run)")
    return p.to_dict()


def _plan_migrations(rollout, report) -> None:
    """Each pending migration: its verdict, when it runs, its operations."""
    if rollout.migrations_note:
        report.event("plan_migrations", f"  migrations: not listed ({rollout.migrations_note})",
                     note=rollout.migrations_note)
        return
    if not rollout.pending and not rollout.planned.runs("migrate"):
        return
    first = rollout.hosts[0]
    report.event("plan_migrations", f"  migrations pending ({len(rollout.pending)}; loaded by "
                                    f"Django on {first}):" if rollout.pending
                 else "  migrations: none pending", count=len(rollout.pending))
    for m in rollout.pending:
        mark = f", marked post-deploy by {m.marked_by}" if m.post_deploy else ""
        report.event("plan_migration", f"    {m.name}  {m.verdict.upper()}  runs {m.when}"
                                       f"{mark}  ({m.file})", migration=m.to_dict())
        for op in m.operations:
            report.event("plan_migration_op", f"      {op.verdict:<8} {op.kind}: "
                                              f"{op.description} ({op.reason})",
                         migration=m.name, operation=op.to_dict())
    if rollout.refusal:
        report.event("plan_refusal", f"  A DEPLOY WOULD BE REFUSED (exit 2): {rollout.refusal}",
                     error=rollout.refusal)
    for w in rollout.warnings:
        report.event("warning", f"  WARNING: {w}", warning=w)


def _report_env(service, report, kind: str) -> None:
    """The service's env as services.yaml gives it, every secret `<secret>`."""
    report.event(kind, f"  env: {secrets.described(service.env)}",
                 env=secrets.masked(service.env))
    if service.pip_env:
        report.event(kind, f"  pip_env: {secrets.described(service.pip_env)}",
                     pip_env=secrets.masked(service.pip_env))
    warning = secrets.pip_args_warning(service)
    if warning:
        report.event("warning", f"  WARNING: {warning}", warning=warning)


def _django(service) -> None:
    if service.kind != "django":
        raise UsageError(f"{service.name} is a {service.kind} service; migrate and media are "
                         "for kind django.")


def migrate(session, name: str, to: str | None = None) -> dict:
    """Apply the live release's unapplied migrations once (on the first host), or with
    `to=RELEASE`, migrate to the state recorded in that release's manifest."""
    to = _given(to, "to", "a release name")
    service, hosts = _service_and_hosts(session, name)
    if service.kind != "django" and service.migrate_command:
        if to:
            raise UsageError(f"{service.name}: to= needs Django's recorded migration state; "
                             "with migrate_command, run your tool's downgrade through exec, "
                             f"e.g. deploytools exec:{service.name},'alembic downgrade -1',once=true")
        return _migrate_command(session, service, hosts)
    _django(service)
    with session.fleet(hosts[:1]) as fleet:
        t = fleet[hosts[0]]
        d = service.dir_on(t.host)
        with _lock(session, fleet, service, "migrate"):
            st = inspect_all(service, fleet)[t.name]
            if not st.current:
                raise UsageError(f"nothing is deployed on {t.name} yet: deploy first.")
            if to:
                steps = _reverse_migrations(service, t, st.current, to, session.reporter)
                return {"reversed": steps}
            r = t.run(releases.migrate_script(service, d, st.current), what="migrating")
    applied = facts(r.stdout).get("migrated") == "yes"
    session.reporter.event("migrate", f"{service.name} on {t.name}: migrations "
                                      f"{'applied' if applied else 'already up to date'}",
                           applied=applied)
    return {"applied": applied}


def _migrate_command(session, service, hosts) -> dict:
    """`migrate_command` in the live release of the first host, under the deploy lock."""
    with session.fleet(hosts[:1]) as fleet:
        t = fleet[hosts[0]]
        with _lock(session, fleet, service, "migrate"):
            st = inspect_all(service, fleet)[t.name]
            if not st.current:
                raise UsageError(f"nothing is deployed on {t.name} yet: deploy first.")
            t.run(releases.migrate_command_script(service, service.dir_on(t.host), st.current),
                  what="migrating (migrate_command)")
    session.reporter.event("migrate", f"{service.name} on {t.name}: migrate_command ran",
                           applied=True)
    return {"applied": True}


def _recorded(service, t, names: list[str]) -> tuple[dict, dict]:
    """({release: migration state}, {release: migration-plan records}) as recorded in
    each release (None: nothing recorded)."""
    r = t.run(releases.read_migrations_script(service.dir_on(t.host), names))
    out: dict[str, dict] = {"@@migrations": {}, "@@migration_plan": {}}
    for line in r.stdout.splitlines():
        key, _, rest = line.partition(" ")
        if key in out:
            rel, _, body = rest.partition(" ")
            try:
                out[key][rel] = json.loads(body)
            except ValueError:
                out[key][rel] = None
    return out["@@migrations"], out["@@migration_plan"]


def _recorded_migrations(service, t, names: list[str]) -> dict[str, dict | None]:
    return _recorded(service, t, names)[0]


def _contractions(service, first, releases_: list[str], cur: str, tgt: str, migrate: bool,
                  report, record: dict) -> None:
    """Rolling back from `cur` to `tgt`: warn when a release in between ran post-deploy
    (contracting) migrations; with migrate=true, refuse to reverse a contract migration
    Django cannot reverse. Raises before anything was changed."""
    between = [r for r in releases_ if tgt < r <= cur]
    _, plans = _recorded(service, first, between)
    ran = [m for r in between for m in (plans.get(r) or []) if m.get("ran")]
    contracted = migrations_mod.contracted(ran)
    if contracted:
        record["contracted_schema"] = contracted
        report.event("warning", f"WARNING: rolling back past post-deploy migrations that ran "
                     f"({', '.join(contracted)}): they contracted the schema for the newer "
                     f"code, and {tgt} will meet that schema (a dropped or renamed column or "
                     "table it may still use).", migrations=contracted)
    if migrate:
        stuck = migrations_mod.irreversible_contracts(ran)
        if stuck:
            ops = "; ".join(f"{m.name} ({m.file}): " + ", ".join(
                op.kind for op in m.operations if not op.reversible) for m in stuck)
            raise UsageError(
                f"cannot roll back {service.name} with migrate=true: contract migrations "
                f"have no backward operation, so Django cannot reverse them: {ops}. Nothing "
                "was changed. Roll back without migrate=true (the schema stays as it is), or "
                "give those operations a reverse (reverse_code / reverse_sql) in a new release.")


def _reverse_migrations(service, t, current: str, target: str, report) -> list[str]:
    """Migrate back (with the current release's code, which knows the newer
    migrations) to the state recorded in `target`."""
    rec = _recorded_migrations(service, t, [current, target])
    now, then = rec.get(current), rec.get(target)
    if then is None:
        raise UsageError(f"release {target} on {t.name} has no recorded migration state; "
                         "cannot reverse to it.")
    now = now or {}
    commands = []
    for app in sorted(set(now) | set(then)):
        if now.get(app) != then.get(app):
            commands.append((app, then.get(app) or "zero"))
    d = service.dir_on(t.host)
    for app, name in commands:
        t.run(releases.manage_script(service, d, current, ["migrate", "--noinput", app, name]),
              what=f"reversing migrations of {app} to {name}")
        report.event("migrate", f"  {t.name}: {app} migrated back to {name}", app=app, to=name)
    return [f"{app}->{name}" for app, name in commands]


# What of a command's output the history keeps, per host (the terminal gets all of it).
EXEC_HISTORY_LINES = 40
EXEC_HISTORY_CHARS = 4000


def _output_tail(text: str) -> str:
    tail = "\n".join(text.rstrip("\n").splitlines()[-EXEC_HISTORY_LINES:])
    return tail[-EXEC_HISTORY_CHARS:]


def exec_command(session, name: str, command: str, *, once: bool = False) -> dict[str, int]:
    """Run a shell command in the live release of each selected host (the first one
    only with once), with the release's environment and virtualenv; print each host's
    output prefixed by its name; record it in each host's history. Not under the
    deploy lock: like Capistrano's invoke, it acts on whatever release is live.
    Returns each host's exit status; raises DeployError (exit 1) naming the hosts
    where the command failed or could not run."""
    if command is None or not str(command).strip():
        raise UsageError("exec needs a command, e.g. deploytools exec:SERVICE,'flask --app "
                         "app init-db' (write a ',' in it as '\\,').")
    if "\0" in command:
        raise UsageError("the command of exec contains a NUL byte.")
    service, hosts = _service_and_hosts(session, name)
    if once:
        hosts = hosts[:1]
    report = session.reporter
    owner = lock_mod.owner_record("exec")
    started = now_iso()
    status: dict[str, int] = {}
    problems: dict[str, str] = {}
    with session.fleet(hosts) as fleet:
        def go(t):
            d = service.dir_on(t.host)
            t0 = time.monotonic()
            r = t.run(releases.exec_script(d, command), check=False,
                      what=f"running {command!r}")
            first, _, output = r.stdout.partition("\n")
            if not first.startswith("@@exec_release "):  # it never got to run
                why = (r.stderr.strip() or r.stdout.strip() or f"exit {r.exited}").splitlines()[-1]
                problems[t.name] = why
                raise DeployError(why, host=t.name)
            release = first.split(" ", 1)[1].strip()
            output += r.stderr  # only ours (the command's stderr is merged into stdout)
            status[t.name] = r.exited
            if r.exited:
                problems[t.name] = ("timed out" if r.exited == 124 and "timed out" in r.stderr
                                    else f"exit {r.exited}")
            lines = output.rstrip("\n").splitlines()
            report.event("exec_output", "\n".join(f"{t.name}: {line}" for line in lines)
                         + f"\n{t.name}: [exit {r.exited} in {release}, "
                           f"{time.monotonic() - t0:.1f}s]",
                         host=t.name, release=release, exit=r.exited, output=output)
            rec = {"service": service.name, "action": "exec", "command": command,
                   "host": t.name, "hosts": hosts, "release": release,
                   "commit": commit_of(release), "started": started, "user": owner["user"],
                   "job": owner["job"], "exit": r.exited,
                   "outcome": "success" if r.exited == 0 else "failed",
                   "duration": round(time.monotonic() - t0, 1), "output": _output_tail(output)}
            t.run(lock_mod.history_append_script(d, rec), check=False)
        _, errors = each(fleet, go, parallel=service.parallel)
    for h, err in errors.items():
        problems.setdefault(h, err.message if isinstance(err, DeployError) else str(err))
    if problems:
        where = "; ".join(f"{h} ({problems[h]})" for h in hosts if h in problems)
        ok = [h for h in hosts if status.get(h) == 0]
        raise DeployError(f"{command!r} failed on {len(problems)} of {len(hosts)} host"
                          f"{'s' if len(hosts) > 1 else ''}: {where}."
                          f"{' It succeeded on ' + ', '.join(ok) + '.' if ok else ''} Its output "
                          f"is above; `deploytools history:{service.name}` keeps the end of it.")
    return status


def media(session, name: str) -> None:
    """Collect static files into the live release and make sure its shared paths
    (media/ unless `shared:` says otherwise) exist and are linked."""
    service, hosts = _service_and_hosts(session, name)
    _django(service)
    with session.fleet(hosts) as fleet, \
            _lock(session, fleet, service, "media"):
        states = inspect_all(service, fleet)

        def go(t):
            current = states[t.name].current
            if not current:
                raise UsageError("nothing deployed yet: deploy first", host=t.name)
            d = service.dir_on(t.host)
            t.run(releases.media_script(service, d, current), what="collecting static files")
            linked = ", ".join(service.shared) or "nothing shared"
            session.reporter.event("media", f"  {t.name}: static collected into {current}; "
                                            f"{linked} linked from {d}/shared/", host=t.name)
        _, errors = each(fleet, go, parallel=service.parallel)
    if errors:
        raise DeployError("media failed:\n" + errors_text(errors))


def _rollback_targets(service, states: dict, to: str | None, report) -> dict[str, str]:
    """The release each host goes back to. Without `to`, one release for the whole
    fleet (see hoststate.fleet_rollback_target); hosts with nothing deployed are left
    alone. Raises UsageError, before anything changed, when a host lacks its target."""
    if not to:
        choice = fleet_rollback_target(states)
        if choice.release is None:
            raise UsageError(f"cannot roll back {service.name}: {choice.why}; nothing was "
                             "changed. Roll back to a named release with "
                             f"deploytools rollback:{service.name},to=RELEASE_OR_TAG.")
        report.event("rollback_target", f"{service.name}: rolling back to {choice.release}: "
                                        f"{choice.why}", release=choice.release, why=choice.why)
        return {h: choice.release for h, st in states.items() if st.current}
    commit = None
    if not any(to in st.releases for st in states.values()):
        commit = ServiceRepo(service).update().resolve(to)
    targets: dict[str, str] = {}
    problems = []
    for h, st in states.items():
        matches = [to] if to in st.releases else [
            r for r in st.releases if commit and r.endswith("-" + commit[:7])]
        if not matches:
            problems.append(f"{h}: no release matching {to!r} on disk (releases: "
                            f"{', '.join(st.releases) or 'none'})")
            continue
        targets[h] = matches[-1]
    if problems:
        raise UsageError("cannot roll back; nothing was changed:\n  " + "\n  ".join(problems))
    return targets


def rollback(session, name: str, to: str | None = None, *, migrate: bool = False) -> dict:
    """Back to the previous release (or `to`: a release name, tag or commit) on every host.

    Rolling back across migrations warns and names them; with migrate=True they
    are reversed first (with the newer code, which knows them) to the state
    recorded in the target release."""
    to = _given(to, "to", "a release name, tag or commit")
    service, hosts = _service_and_hosts(session, name)
    report = session.reporter
    started = time.monotonic()
    with signals.terminating(), session.fleet(hosts) as fleet:
        # The lock first: a state read before it could be changed by the deploy we wait for.
        # Each host's state is read in the round trip that takes its lock.
        lock = _lock(session, fleet, service, "rollback",
                     then=lambda t: inspect_script(service, service.dir_on(t.host)))
        lock.acquire()
        errors: dict = {}
        try:
            states = {h: parse_inspect(lock.outputs[h], service.name) for h in hosts}
            targets = _rollback_targets(service, states, to, report)
            record = {"service": service.name, "action": "rollback", "hosts": hosts,
                      "started": now_iso(), "user": lock.owner["user"], "job": lock.owner["job"],
                      "stage": session.config.stage}
            if lock.taken_over:
                record["took_over_lock"] = lock.taken_over

            def back(t):
                st = states[t.name]
                if t.name not in targets:
                    report.event("restored", f"  {t.name}: nothing deployed, left alone",
                                 host=t.name)
                    return "noop"
                if targets[t.name] == st.current:
                    report.event("restored", f"  {t.name}: already on {st.current}", host=t.name)
                    return "noop"
                with lb.around_activation(balancer, service, t, targets[t.name],
                                          say=report.event):
                    releases.restore(service, t, targets[t.name])
                report.event("restored", f"  {t.name}: {st.current} -> {targets[t.name]}",
                             host=t.name, release=targets[t.name])
                return "restored"
            report.event("rollback", f"{service.name}: rolling back {', '.join(hosts)}",
                         service=service.name, hosts=hosts)
            first = fleet[next(h for h in hosts if h in targets)]
            cur, tgt = states[first.name].current, targets[first.name]
            if service.kind == "django" and service.migrate and cur and cur != tgt:
                _contractions(service, first, states[first.name].releases, cur, tgt, migrate,
                              report, record)
                rec = _recorded_migrations(service, first, [cur, tgt])
                if rec.get(cur) and rec.get(tgt) is not None:
                    delta = plan_mod.migration_delta(rec[cur], rec[tgt])
                    if delta and migrate:
                        record["migrations_reversed"] = _reverse_migrations(
                            service, first, cur, tgt, report)
                    elif delta:
                        record["migrations_kept"] = delta
                        report.event("warning", "WARNING: rolling back across migrations "
                                     f"{', '.join(delta)}: the schema stays as it is, so the old "
                                     "code runs on the newer schema. To reverse them too: "
                                     f"deploytools rollback:{service.name},migrate=true",
                                     migrations=delta)
            with lb.connect(service, session.config) as balancer:
                # Every host at once (up to `parallel`).
                _, errors = each(fleet, back, parallel=service.parallel)
            record["outcome"] = "unrestored" if errors else "success"
            restored = [h for h in hosts if h in targets and h not in errors]
            hooks = Hooks(service, stage=session.config.stage,
                          say=lambda kind, message, **f: report.event(
                              kind, message, service=service.name, **f),
                          base_dir=os.path.dirname(os.path.abspath(session.config.path)),
                          dir_of=lambda t: service.dir_on(t.host))
            failures = hooks.fire("after_rollback", targets=[fleet[h] for h in restored],
                                  fatal=False, hosts=tuple(restored), user=record["user"],
                                  outcome=record["outcome"],
                                  release=None) if hooks.any("after_rollback") else []
            if failures:
                record["hook_failures"] = failures
            record["duration"] = round(time.monotonic() - started, 2)

            def write(t):  # the history line, sent with the lock's release
                st = states[t.name]
                to_release = targets.get(t.name, st.current)
                rec = dict(record, host=t.name, from_release=st.current,
                           from_commit=st.manifest.get("commit"), to_release=to_release,
                           release=to_release,
                           commit=commit_of(to_release) if to_release else None,
                           error=str(errors[t.name]) if t.name in errors else None)
                return lock_mod.history_append_script(service.dir_on(t.host), rec)
            lock.release(before=write)
        finally:
            lock.release()  # after an error above (a second release does nothing)
        if errors:
            raise RestoreFailed("rollback failed on some hosts; a human must look:\n"
                                + errors_text(errors))
    report.event("done", f"{service.name} rolled back on {', '.join(hosts)} "
                         f"({time.monotonic() - started:.1f}s)", service=service.name)
    return record


def restart(session, name: str, *, hard: bool = False) -> None:
    """Graceful reload (or hard restart) of the live release, then verify it serves."""
    service, hosts = _service_and_hosts(session, name)
    report = session.reporter
    with session.fleet(hosts) as fleet, \
            _lock(session, fleet, service, "restart"):
        states = inspect_all(service, fleet)

        def go(t):
            current = states[t.name].current
            with lb.around_activation(balancer, service, t, current,
                                      restart=hard or service.reload_signal == "restart",
                                      say=report.event):
                releases.reload_ready(service, t, current, hard=hard)
            report.event("restarted", f"  {t.name}: {'restarted' if hard else 'reloaded'} "
                                      f"{current}", host=t.name, release=current)
        with lb.connect(service, session.config) as balancer:
            _, errors = each(fleet, go, parallel=service.parallel)
        if errors:
            raise DeployError(f"restart of {service.name} failed:\n" + errors_text(errors))


def status(session, name: str) -> list[dict]:
    service, hosts = _service_and_hosts(session, name)
    with session.fleet(hosts) as fleet:
        states = inspect_all(service, fleet)
    lb_states = lb.states_or_error(service, session.config, hosts)
    repo = None
    rows = []
    for h in hosts:
        st = states[h]
        proc = st.process
        commit = st.manifest.get("commit")
        healthy, seen = (probe(service, session.config.hosts[h], timeout=2) if st.current
                         else (False, "-"))
        tags = []
        if commit:
            try:
                repo = repo or ServiceRepo(service).update()
                tags = repo.tags_at(commit)
            except DeployError:
                tags = []
        rows.append({"host": h, "release": st.current, "commit": commit[:7] if commit else None,
                     "tag": tags[-1] if tags else None,
                     "state": proc.state if proc else ("NOT DEPLOYED" if not st.current else "DOWN"),
                     "pid": proc.pid if proc else None, "uptime": proc.uptime if proc else None,
                     "health": seen, "healthy": healthy, "releases": len(st.releases)})
        if lb_states is not None:
            rows[-1]["lb"] = lb_states.get(h, "?")
    session.reporter.table(rows, ["host", "release", "commit", "tag", "state", "pid", "uptime",
                                  "health"] + (["lb"] if lb_states is not None else []))
    _report_env(service, session.reporter, "status_env")
    for row in rows:
        session.reporter.event("status", "", service=service.name, **row)
    return rows


def setup(session, name: str) -> None:
    service, hosts = _service_and_hosts(session, name)
    # The tools/ install may need the index's token; the app's secrets are not read.
    service = secrets.resolve(service, settings=("pip_env",))
    with session.fleet(hosts) as fleet, \
            _lock(session, fleet, service, "setup"):
        def go(t):
            t0 = time.monotonic()
            r = t.run(releases.setup_script(service, t.host, service.dir_on(t.host)),
                      what=f"setting up {service.name}")
            f = facts(r.stdout)
            session.reporter.event("setup", f"  {t.name}: {service.dir_on(t.host)} ready"
                                            f"{' (supervisor installed)' if 'tools' in f else ''}"
                                            f" ({time.monotonic() - t0:.1f}s)", host=t.name)
        _, errors = each(fleet, go, parallel=service.parallel)
        if errors:
            raise DeployError(f"setup of {service.name} failed:\n" + errors_text(errors))


def history(session, name: str, limit: int = 20) -> list[dict]:
    service, hosts = _service_and_hosts(session, name)
    with session.fleet(hosts) as fleet:
        out, errors = each(fleet, lambda t: t.run(
            lock_mod.history_read_script(service.dir_on(t.host), limit * 4)).stdout,
            parallel=service.parallel)
    if errors:
        raise DeployError("could not read the history of every host:\n" + errors_text(errors))
    # One deploy wrote one line per host: merge them by start time.
    merged: dict[tuple, dict] = {}
    for h, text in out.items():
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            key = (rec.get("started"), rec.get("action"), rec.get("release"))
            entry = merged.setdefault(key, dict(rec, hosts_seen=[]))
            entry["hosts_seen"].append(h)
    rows = sorted(merged.values(), key=lambda r: r.get("started") or "")[-limit:]
    session.reporter.table([lock_mod.history_row(r) for r in rows],
                           list(lock_mod.HISTORY_COLUMNS))
    for r in rows:
        session.reporter.event("history", "", **{k: v for k, v in r.items() if k != "hosts_seen"},
                               hosts_seen=r["hosts_seen"])
    return rows


def unlock(session, name: str, *, force: bool = False) -> None:
    """Break a deploy lock. Only a stale one (its deploy stopped beating) unless force:
    a fresh heartbeat means a deploy is running, and breaking its lock would let a
    second deploy run over it."""
    service, hosts = _service_and_hosts(session, name)
    report = session.reporter
    with session.fleet(hosts) as fleet:
        held = {h: x for h, x in lock_mod.read_locks(fleet, service).items() if x}
        if not held:
            report.event("unlock", f"{service.name}: no lock held", hosts=[])
            return
        live = {h: x for h, x in held.items()
                if not x.get("retry") and "raw" not in x and not lock_mod.staleness(x)}
        if live and not force:
            h, holder = next(iter(live.items()))
            raise LockedError(
                f"{service.name} is locked by a deploy that is still running (its heartbeat "
                f"is fresh): {lock_mod.describe_holder(dict(holder, host=h))}. Breaking it would "
                "let two deploys run at once. Wait for it, or if you know it is dead (its "
                f"machine is gone), break it anyway with: deploytools unlock:{service.name},force=true")
        out, errors = each(fleet, lambda t: t.run(lock_mod.remove_lock_script(
            service.dir_on(t.host) + "/.lock", (held.get(t.name) or {}).get("id"))).stdout,
            parallel=service.parallel)
    if errors:
        raise DeployError("could not unlock every host:\n" + errors_text(errors))
    freed = [h for h, text in out.items() if "@@unlocked" in text]
    holder = next(iter(held.values()))
    report.event("unlock", f"{service.name}: lock removed on {', '.join(freed)} (it was "
                           f"held by {lock_mod.describe_holder(holder)})", hosts=freed,
                 holder=holder)
