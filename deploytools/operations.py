"""Every task but deploy: rollback, restart, status, setup, history, unlock.

Each is one function taking the session and plain arguments; the fabfile
calls exactly one of them.
"""
from __future__ import annotations

import json
import time

from . import lock as lock_mod
from . import releases
from .errors import DeployError, RestoreFailed, UsageError
from .inventory import Fleet, each
from .rollout import Rollout, now_iso, probe, restore, _errors_text
from .script import facts
from .vcs import ServiceRepo


def _service_and_hosts(session, name: str):
    service = session.config.service(name)
    return service, session.hosts_for(service)


def _inspect_all(service, fleet):
    def inspect(t):
        r = t.run(releases.inspect_script(service, service.dir_on(t.host)), what="inspecting")
        return releases.parse_inspect(r.stdout, service.name)
    states, errors = each(fleet, inspect, parallel=service.parallel)
    if errors:
        raise DeployError("could not reach every host; nothing was changed:\n" + _errors_text(errors))
    return states


def deploy(session, name: str, ref: str | None = None, *, force: bool = False,
           smart: bool = False) -> dict:
    service, hosts = _service_and_hosts(session, name)
    return Rollout(session, service, hosts, ref=ref, force=force,
                   action="smart_deploy" if smart else "deploy").run()


def plan(session, name: str, ref: str | None = None) -> dict:
    raise DeployError("plan is not implemented yet")


def migrate(session, name: str, to: str | None = None) -> None:
    raise DeployError("migrate is not implemented yet")


def media(session, name: str) -> None:
    raise DeployError("media is not implemented yet")


def rollback(session, name: str, to: str | None = None) -> dict:
    """Back to the previous release (or `to`: a release name, tag or commit) on every host."""
    service, hosts = _service_and_hosts(session, name)
    report = session.reporter
    started = time.monotonic()
    with Fleet(session.config, hosts) as fleet:
        states = _inspect_all(service, fleet)
        targets: dict[str, str] = {}
        problems = []
        commit = None
        if to and not any(to in st.releases for st in states.values()):
            commit = ServiceRepo(service).update().resolve(to)
        for h, st in states.items():
            if to:
                if to in st.releases:
                    target = to
                else:
                    matches = [r for r in st.releases if r.endswith("-" + commit[:7])]
                    target = matches[-1] if matches else None
            else:
                target = releases.previous_release(st)
            if target is None:
                problems.append(f"{h}: no {'release matching ' + repr(to) if to else 'earlier release'}"
                                f" on disk (releases: {', '.join(st.releases) or 'none'})")
            targets[h] = target
        if problems:
            raise UsageError("cannot roll back; nothing was changed:\n  " + "\n  ".join(problems))
        lock = lock_mod.FleetLock(fleet, service, "rollback", wait=session.lock_wait)
        with lock:
            record = {"service": service.name, "action": "rollback", "hosts": hosts,
                      "started": now_iso(), "user": lock.owner["user"], "job": lock.owner["job"]}

            def back(t):
                st = states[t.name]
                if targets[t.name] == st.current:
                    report.event("restored", f"  {t.name}: already on {st.current}", host=t.name)
                    return "noop"
                restore(service, t, targets[t.name])
                report.event("restored", f"  {t.name}: {st.current} -> {targets[t.name]}",
                             host=t.name, release=targets[t.name])
                return "restored"
            report.event("rollback", f"{service.name}: rolling back {', '.join(hosts)}",
                         service=service.name, hosts=hosts)
            _, errors = each(fleet, back, parallel=service.parallel)
            record["outcome"] = "unrestored" if errors else "success"
            record["duration"] = round(time.monotonic() - started, 2)

            def write(t):
                st = states[t.name]
                rec = dict(record, host=t.name, from_release=st.current,
                           from_commit=st.manifest.get("commit"), to_release=targets[t.name],
                           release=targets[t.name], commit=targets[t.name].rsplit("-", 1)[-1],
                           error=str(errors[t.name]) if t.name in errors else None)
                t.run(lock_mod.history_append_script(service.dir_on(t.host), rec), check=False)
            each(fleet, write, parallel=service.parallel)
        if errors:
            raise RestoreFailed("rollback failed on some hosts; a human must look:\n"
                                + _errors_text(errors))
    report.event("done", f"{service.name} rolled back on {', '.join(hosts)} "
                         f"({time.monotonic() - started:.1f}s)", service=service.name)
    return record


def restart(session, name: str, *, hard: bool = False) -> None:
    """Graceful reload (or hard restart) of the live release, then verify it serves."""
    service, hosts = _service_and_hosts(session, name)
    report = session.reporter
    with Fleet(session.config, hosts) as fleet:
        states = _inspect_all(service, fleet)

        def go(t):
            d = service.dir_on(t.host)
            t.run(releases.reload_script(service, d, hard=hard), what="restarting")
            current = states[t.name].current
            timeout = service.health.timeout + service.graceful_timeout
            t.run(releases.wait_ready_script(service, d, current, timeout), what="waiting")
            from .rollout import wait_healthy
            wait_healthy(service, t.host, service.health.timeout)
            report.event("restarted", f"  {t.name}: {'restarted' if hard else 'reloaded'} "
                                      f"{current}", host=t.name, release=current)
        _, errors = each(fleet, go, parallel=service.parallel)
        if errors:
            raise DeployError(f"restart of {service.name} failed:\n" + _errors_text(errors))


def status(session, name: str) -> list[dict]:
    service, hosts = _service_and_hosts(session, name)
    with Fleet(session.config, hosts) as fleet:
        states = _inspect_all(service, fleet)
    repo = None
    rows = []
    for h in hosts:
        st = states[h]
        proc = st.process
        commit = st.manifest.get("commit")
        healthy, seen = probe(service, session.config.hosts[h], timeout=2) if st.current else (False, "-")
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
    session.reporter.table(rows, ["host", "release", "commit", "tag", "state", "pid", "uptime",
                                  "health"])
    for row in rows:
        session.reporter.event("status", "", service=service.name, **row)
    return rows


def setup(session, name: str) -> None:
    service, hosts = _service_and_hosts(session, name)
    with Fleet(session.config, hosts) as fleet:
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
            raise DeployError(f"setup of {service.name} failed:\n" + _errors_text(errors))


def history(session, name: str, limit: int = 20) -> list[dict]:
    service, hosts = _service_and_hosts(session, name)
    with Fleet(session.config, hosts) as fleet:
        out, errors = each(fleet, lambda t: t.run(
            lock_mod.history_read_script(service.dir_on(t.host), limit * 4)).stdout,
            parallel=service.parallel)
    if errors:
        raise DeployError("could not read the history of every host:\n" + _errors_text(errors))
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
    table = [{"when": r.get("started"), "who": r.get("user"), "action": r.get("action"),
              "from": (r.get("from_commit") or "")[:7], "to": (r.get("commit") or "")[:7],
              "tag": r.get("tag"), "outcome": r.get("outcome"),
              "secs": r.get("duration"), "hosts": ",".join(r["hosts_seen"])} for r in rows]
    session.reporter.table(table, ["when", "who", "action", "from", "to", "tag", "outcome",
                                   "secs", "hosts"])
    for r in rows:
        session.reporter.event("history", "", **{k: v for k, v in r.items() if k != "hosts_seen"},
                               hosts_seen=r["hosts_seen"])
    return rows


def unlock(session, name: str) -> None:
    service, hosts = _service_and_hosts(session, name)
    with Fleet(session.config, hosts) as fleet:
        out, errors = each(fleet, lambda t: t.run(lock_mod.unlock_script(service.dir_on(t.host))
                                                  ).stdout, parallel=service.parallel)
    if errors:
        raise DeployError("could not unlock every host:\n" + _errors_text(errors))
    freed = [h for h, text in out.items() if "@@unlocked" in text]
    session.reporter.event("unlock", f"{service.name}: lock removed on {', '.join(freed)}" if freed
                           else f"{service.name}: no lock held", hosts=freed)
