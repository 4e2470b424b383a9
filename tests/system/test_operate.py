"""Issue 5 on four real SSH hosts: monitor, the deploy lock, history and status,
and the init.d script that `setup` installs.

A service of its own (`opsdemo`: the airship sample from its own origin, on
port 8010) keeps these tests out of test_deploy.py's way. The tests run in
file order and build on each other.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

import build_repos
from sysenv import ServiceEnv

pytestmark = pytest.mark.system

SVC = "opsdemo"
PORT = 8010
HOSTS = ["web-0", "web-1", "web-2", "web-3"]
ROOT = Path(__file__).resolve().parents[2]
LOGS = {"access": "access.log", "error": "error.log", SVC: f"{SVC}.log",
        "supervisord": "supervisord.log"}


class Ops(ServiceEnv):
    """The deployenv's fleet, with a services.yaml holding only opsdemo."""

    SERVICE, PORT = SVC, PORT

    def __init__(self, env, sample, dir: Path):
        super().__init__(env, sample, dir, {
            "kind": "django", "repo": str(sample.origin), "role": "web",
            "app": "airship.wsgi:application", "port": PORT, "workers": 2,
            "graceful_timeout": 5, "env": {"DJANGO_SETTINGS_MODULE": "airship.settings"},
            "production_branch": "opsdemo-production", "tag_prefix": "opsdemo-",
            # a canary, then the rest; no bake extensions: the fleet has no user traffic
            "rollout": [1, "100%"], "gate": {"max_extensions": 0}, "keep_releases": 10})

    def manifest(self, host: str) -> dict:
        return json.loads((self.srv(host) / "current" / ".deploy" / "manifest.json").read_text())

    def locks(self) -> dict:
        return {h: (self.srv(h) / ".lock").exists() for h in HOSTS}


@pytest.fixture(scope="module")
def ops(deployenv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("operate")
    sample = build_repos.build(tmp / "samples", names=["airship"])["airship"]
    env = Ops(deployenv, sample, tmp)
    yield env
    env.stop_everywhere()


def tails_running() -> list[str]:
    """Command lines of `tail` processes reading opsdemo's logs (the fleet shares /proc)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith("tail ") and f"/srv/{SVC}/log/" in cmd:
            found.append(f"{pid}: {cmd}")
    return found


# --- setup links the init.d script and the systemd unit into the host ----------

def test_setup_links_init_script_and_unit_into_each_host(ops):
    fleet = ops.env.fleet
    for h in HOSTS:
        system = fleet.host(h).srv / ".system"
        (system / "etc" / "init.d").mkdir(parents=True, exist_ok=True)
        (system / "etc" / "systemd" / "system").mkdir(parents=True, exist_ok=True)
    # Someone else's unit of the same name on web-3 is left alone.
    foreign = fleet.host("web-3").srv / ".system/etc/systemd/system" / f"{SVC}.service"
    if not foreign.is_symlink():
        foreign.symlink_to("/opt/other/opsdemo.service")
    for _ in range(2):  # idempotent
        ops.fab(f"setup:{SVC}")
    for h in HOSTS:
        system = fleet.host(h).srv / ".system/etc"
        assert os.readlink(system / "init.d" / SVC) == f"/srv/{SVC}/etc/init.d/{SVC}"
        unit = os.readlink(system / "systemd/system" / f"{SVC}.service")
        assert unit == ("/opt/other/opsdemo.service" if h == "web-3"
                        else f"/srv/{SVC}/etc/systemd/{SVC}.service")
        # the link resolves on the host itself
        r = fleet.ssh(h, f"head -c 9 /srv/.system/etc/init.d/{SVC}")
        assert r.stdout == "#!/bin/sh", r.stderr
    # the hosts share the controller's /etc: it must stay untouched
    assert not os.path.lexists(f"/etc/init.d/{SVC}")
    assert not os.path.lexists(f"/etc/systemd/system/{SVC}.service")


def test_first_deploy(ops):
    ops.fab(f"deploy:{SVC},ref=v1")
    assert ops.revisions() == {h: ops.sha("v1") for h in HOSTS}


# --- monitor --------------------------------------------------------------------

def test_monitor_shows_lines_from_every_host_within_a_second(ops):
    assert not tails_running()
    mon = ops.spawn(f"monitor:{SVC}")
    try:
        for h in HOSTS:
            _, line = mon.wait_for(lambda x, h=h: x.startswith(f"{h} ") and " status " in x
                                   and "release" in x, timeout=30)
            assert ops.current(h) in line and "RUNNING" in line and "HTTP 200" in line, line
        for h in HOSTS:  # each host's tail has opened its logs
            mon.wait_for(lambda x, h=h: x.startswith(f"{h} ") and "following" in x, timeout=30)
        written = {}
        for h in HOSTS:
            for label, name in LOGS.items():
                marker = f"marker-{h}-{label}-{uuid.uuid4().hex[:8]}"
                with open(ops.srv(h) / "log" / name, "a") as f:
                    f.write(f"{marker} written by the test\n")
                written[marker] = (h, label, time.monotonic())
            # and a real request, logged by gunicorn itself
            marker = f"req-{h}-{uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            requests.get(f"http://{ops.env.fleet.host(h).address}:{PORT}/?{marker}", timeout=5)
            written[marker] = (h, "access", t0)
        latencies = {}
        for marker, (h, label, t0) in written.items():
            seen_at, line = mon.wait_for(lambda x, m=marker: m in x, timeout=5)
            assert line.split()[0] == h and line.split()[1] == label, line
            assert line.index(marker) > line.index("|"), line
            latencies[marker] = seen_at - t0
        print(f"\nmonitor latency: max {max(latencies.values()) * 1000:.0f} ms, "
              f"mean {sum(latencies.values()) / len(latencies) * 1000:.0f} ms "
              f"over {len(latencies)} lines")
        slow = {m: round(t, 3) for m, t in latencies.items() if t >= 1.0}
        assert not slow, f"lines that took a second or more: {slow}"
        assert tails_running()  # one per host, while following
    finally:
        if mon.proc.poll() is None:
            mon.proc.send_signal(signal.SIGINT)
        try:
            code, out, err = mon.finish(timeout=15)
        finally:
            mon.kill()
    assert code in (0, 130), err
    assert "Traceback" not in err, err
    deadline = time.monotonic() + 5  # sshd hangs up the remote tails as the channels close
    while tails_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tails_running()


def test_monitor_lines_prints_the_last_lines_of_each_log_and_exits(ops):
    t0 = time.monotonic()
    # (each run's health probe adds a line to access.log, after our marker)
    out = ops.fab(f"monitor:{SVC},lines=5", timeout=60).stdout.splitlines()
    assert time.monotonic() - t0 < 30
    for h in HOSTS:
        for label in LOGS:
            mine = [x for x in out if x.startswith(f"{h} {label} ") and "written by the test" in x]
            assert len(mine) == 1 and f"marker-{h}-{label}-" in mine[0], (h, label, out)
    # a status line per host, then the logs grouped by host, in host order
    assert [x.split()[:2] for x in out[:4]] == [[h, "status"] for h in HOSTS]
    hosts_in_order = [x.split()[0] for x in out[4:]]
    assert hosts_in_order == sorted(hosts_in_order, key=HOSTS.index)
    modern = ops.fab("monitor", SVC, "--lines", "10").stdout.splitlines()
    ours = lambda lines: [x for x in lines if "written by the test" in x]  # noqa: E731
    assert ours(modern) == ours(out)
    js = [json.loads(x) for x in ops.fab(f"monitor:{SVC},lines=1", "--json").stdout.splitlines()]
    logs = {(e["host"], e["log"]) for e in js if e["event"] == "log"}
    assert logs == {(h, label) for h in HOSTS for label in LOGS}
    assert not tails_running()


# --- the deploy lock ------------------------------------------------------------

def test_two_deploys_at_once_exactly_one_runs(ops):
    before = {h: len(ops.history(h)) for h in HOSTS}
    # Two operators, two machines' caches; the heartbeat every second so we can see it.
    a = ops.spawn(f"deploy:{SVC},ref=v2", user="alice", cache="cache-alice",
                  DEPLOYTOOLS_LOCK_HEARTBEAT="1")
    b = ops.spawn(f"deploy:{SVC},ref=v2", user="bob", cache="cache-bob",
                  DEPLOYTOOLS_LOCK_HEARTBEAT="1")
    lock = ops.srv("web-0") / ".lock"
    mtimes = set()
    try:
        while a.proc.poll() is None or b.proc.poll() is None:
            try:
                mtimes.add(lock.stat().st_mtime_ns)
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        results = {"alice": a.finish(), "bob": b.finish()}
    finally:
        a.kill()
        b.kill()
    codes = sorted(r[0] for r in results.values())
    assert codes == [0, 4], results
    winner = "alice" if results["alice"][0] == 0 else "bob"
    loser = "bob" if winner == "alice" else "alice"
    err = results[loser][2]
    assert f"locked by another deploy: {winner} (deploy from " in err, err
    assert f"pid {(a if winner == 'alice' else b).pid}" in err, err
    assert "since 20" in err and "deploytools unlock:" in err and "Traceback" not in err
    assert len(mtimes) >= 3, "the winner's heartbeat never touched the lock file"
    assert ops.revisions() == {h: ops.sha("v2") for h in HOSTS}
    assert not any(ops.locks().values())
    for h in HOSTS:  # only the deploy that ran left a record
        new = ops.history(h)[before[h]:]
        assert [(r["user"], r["outcome"]) for r in new] == [(winner, "success")]


def lock_wave(ops, host: str):
    try:
        return json.loads((ops.srv(host) / ".lock").read_text()).get("wave")
    except (OSError, ValueError):
        return None


def test_killed_deploy_lock_is_taken_over_loudly_and_recorded(ops):
    victim = ops.spawn(f"deploy:{SVC},ref=v3")
    try:
        victim.wait_for(lambda x: x.startswith("wave 1/"), timeout=240)
        # The canary's activation notes the wave in its lock before it switches.
        deadline = time.monotonic() + 60
        while lock_wave(ops, "web-0") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.finish(timeout=10)
    finally:
        victim.kill()
    assert all(ops.locks().values())
    # Only the wave's host names it; the takeover reads the furthest wave of them all.
    assert {h: lock_wave(ops, h) for h in HOSTS} == {
        "web-0": 1, "web-1": None, "web-2": None, "web-3": None}
    r = ops.fab(f"deploy:{SVC},ref=v3", timeout=300)
    assert "WARNING: taking over the lock of a dead deploy" in r.stdout, r.stdout
    assert f"process {victim.pid}" in r.stdout and "reached wave 1" in r.stdout, r.stdout
    assert not any(ops.locks().values())
    assert ops.revisions() == {h: ops.sha("v3") for h in HOSTS}
    for h in HOSTS:
        rec = ops.history(h)[-1]
        assert rec["outcome"] == "success"
        assert [x["pid"] for x in rec["took_over_lock"]] == [victim.pid]


def test_unlock_refuses_a_live_lock_without_force(ops):
    holder = {"id": "livelock0001", "user": "mallory", "action": "deploy",
              "controller": "elsewhere", "machine": "another-machine", "pid": 4242,
              "heartbeat": 5, "started": "2026-11-29T00:00:00+00:00"}
    for h in HOSTS:
        (ops.srv(h) / ".lock").write_text(json.dumps(holder) + "\n")
    try:
        r = ops.fab(f"unlock:{SVC}", check=False)
        assert r.returncode == 4, r.stderr
        assert "still running" in r.stderr and "mallory" in r.stderr, r.stderr
        assert f"deploytools unlock:{SVC},force=true" in r.stderr and "Traceback" not in r.stderr
        assert all(ops.locks().values())  # refused: nothing removed
        out = ops.fab(f"unlock:{SVC},force=true")
        assert "lock removed" in out.stdout and "mallory" in out.stdout
    finally:
        for h in HOSTS:
            (ops.srv(h) / ".lock").unlink(missing_ok=True)
    assert not any(ops.locks().values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_while_staging_releases_the_lock(ops, sig):
    live = {h: ops.current(h) for h in HOSTS}
    run = ops.spawn(f"deploy:{SVC},ref=v4")
    try:
        run.wait_for(lambda x: x.startswith("staging "), timeout=120)
        run.proc.send_signal(sig)
        code, out, err = run.finish(timeout=120)
    finally:
        run.kill()
    name = signal.Signals(sig).name
    assert code == 1, (out, err)
    assert f"interrupted by {name} before any host was switched" in err, err
    assert "Traceback" not in err, err
    assert not any(ops.locks().values())
    assert {h: ops.current(h) for h in HOSTS} == live  # stopped before any switch
    for h in HOSTS:
        rec = ops.history(h)[-1]
        assert (rec["outcome"], rec["commit"], rec["error"]) == (
            "failed", ops.sha("v4"), f"interrupted by {name}")


def test_sigterm_mid_wave_rolls_back_every_touched_host(ops):
    """A CI runner cancelling the job: SIGTERM in wave 2, and a second one during the
    rollback, which must still finish, write the history and release the lock."""
    live = {h: ops.current(h) for h in HOSTS}
    serving = ops.revisions()
    assert None not in serving.values() and ops.sha("v4") not in serving.values()
    run = ops.spawn(f"deploy:{SVC},ref=v4")
    try:
        run.wait_for(lambda x: x.startswith("wave 2/"), timeout=240)
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for(lambda x: x.startswith("rolling back"), timeout=60)
        run.proc.send_signal(signal.SIGTERM)
        code, out, err = run.finish(timeout=240)
    finally:
        run.kill()
    assert code == 1, (out, err)
    assert "every host this deploy touched was rolled back" in err, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err, err
    assert {h: ops.current(h) for h in HOSTS} == live, (out, err)
    assert ops.revisions() == serving
    assert not any(ops.locks().values())
    for h in HOSTS:
        rec = ops.history(h)[-1]
        assert (rec["outcome"], rec["failed_wave"]) == ("rolled_back", 2), rec


# --- history and status agree with the hosts ------------------------------------

def git_tags(ops, sha: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ops.sample.origin), "tag", "--points-at", sha],
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(t for t in out if t.startswith("opsdemo-"))


def test_history_and_status_agree_with_the_hosts(ops):
    ops.fab(f"rollback:{SVC}")  # v3 -> v2
    assert ops.revisions() == {h: ops.sha("v2") for h in HOSTS}
    ops.fab(f"rollback:{SVC}")  # v2 -> v1
    assert ops.revisions() == {h: ops.sha("v1") for h in HOSTS}
    ops.fab("host:web-0", f"deploy:{SVC},ref=v3")

    # status: what `current` and its manifest say, per host
    rows = [json.loads(x) for x in ops.fab(f"status:{SVC}", "--json").stdout.splitlines()]
    rows = {r["host"]: r for r in rows if r["event"] == "status"}
    table = ops.fab(f"status:{SVC}").stdout.splitlines()
    assert table[0].split()[:5] == ["HOST", "RELEASE", "COMMIT", "TAG", "STATE"]
    # the host rows (the table is followed by the service's env line)
    lines = {x.split()[0]: x.split() for x in table[1:]
             if x.strip() and not x.lstrip().startswith("env:")}
    assert [x for x in table if x.lstrip().startswith("env:")], table
    assert set(rows) == set(lines) == set(HOSTS)
    for h in HOSTS:
        commit = ops.manifest(h)["commit"]
        assert commit == ops.sha("v3" if h == "web-0" else "v1")
        tags = git_tags(ops, commit)
        expect = {"release": ops.current(h), "commit": commit[:7],
                  "tag": tags[-1] if tags else None, "state": "RUNNING", "healthy": True}
        assert {k: rows[h][k] for k in expect} == expect, rows[h]
        assert lines[h][1:5] == [expect["release"], expect["commit"], expect["tag"] or "-",
                                 "RUNNING"]
    # history: the records on the hosts, one entry per deploy or rollback
    on_hosts: dict[tuple, dict] = {}
    for h in HOSTS:
        for rec in ops.history(h):
            key = (rec["started"], rec["action"], rec["release"])
            on_hosts.setdefault(key, {"rec": rec, "hosts": []})["hosts"].append(h)
    events = [json.loads(x) for x in ops.fab(f"history:{SVC}", "--json").stdout.splitlines()]
    entries = [e for e in events if e["event"] == "history"]
    assert len(entries) == len(on_hosts) == 9
    assert [e["started"] for e in entries] == sorted(k[0] for k in on_hosts)
    for e in entries:
        want = on_hosts[(e["started"], e["action"], e["release"])]
        assert sorted(e["hosts_seen"]) == sorted(want["hosts"])
        for k in ("outcome", "user", "commit", "from_commit", "duration", "tag", "steps",
                  "gates"):
            assert e.get(k) == want["rec"].get(k), k
    v = ops.sha
    assert [(e["action"], e["outcome"], e["commit"][:7], len(e["hosts_seen"]))
            for e in entries] == [
        ("deploy", "success", v("v1")[:7], 4),
        ("deploy", "success", v("v2")[:7], 4),   # the one of the two concurrent deploys
        ("deploy", "success", v("v3")[:7], 4),   # after the killed one, which left no record
        ("deploy", "failed", v("v4")[:7], 4),    # Ctrl-C while staging
        ("deploy", "failed", v("v4")[:7], 4),    # SIGTERM while staging
        ("deploy", "rolled_back", v("v4")[:7], 4),  # SIGTERM in wave 2
        ("rollback", "success", v("v2")[:7], 4),
        ("rollback", "success", v("v1")[:7], 4),
        ("deploy", "success", v("v3")[:7], 1),
    ]
    # the table: one row per entry, same order, same facts
    table = ops.fab(f"history:{SVC}").stdout.splitlines()
    assert table[0].split()[:5] == ["WHEN", "WHO", "ACTION", "FROM", "TO"]
    assert len(table) - 1 == len(entries)
    for row, e in zip(table[1:], entries):
        cells = row.split()
        assert cells[0] == e["started"] and cells[1] == e["user"] and cells[2] == e["action"]
        assert cells[3] == ((e.get("from_commit") or "")[:7] or "-")
        assert cells[4] == e["commit"][:7]
        assert e["outcome"] in cells


# --- the init.d script ------------------------------------------------------------

def wait_served(ops, host, want: bool, timeout: float = 15) -> dict | None:
    deadline = time.monotonic() + timeout
    while True:
        got = ops.served(host)
        if (got is not None) == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_initd_script_answers_status_stop_start_restart(ops):
    fleet = ops.env.fleet
    h = "web-2"
    initd = f"/srv/{SVC}/etc/init.d/{SVC}"
    supervisord_pid = ops.srv(h) / "run" / "supervisord.pid"

    r = fleet.ssh(h, f"{initd} status")
    assert r.returncode == 0 and "RUNNING" in r.stdout, (r.stdout, r.stderr)

    r = fleet.ssh(h, f"{initd} stop", timeout=120)
    assert r.returncode == 0, r.stderr
    assert wait_served(ops, h, False) is None  # stopped serving
    r = fleet.ssh(h, f"{initd} status")
    assert r.returncode == 3 and "not running" in r.stdout

    r = fleet.ssh(h, f"{initd} start", timeout=120)
    assert r.returncode == 0 and "RUNNING" in r.stdout, (r.stdout, r.stderr)
    assert wait_served(ops, h, True)["revision"] == ops.sha("v1")  # serves the live release

    before = int(supervisord_pid.read_text())
    r = fleet.ssh(h, f"{initd} restart", timeout=120)
    assert r.returncode == 0 and "RUNNING" in r.stdout, (r.stdout, r.stderr)
    assert int(supervisord_pid.read_text()) != before
    assert wait_served(ops, h, True)["revision"] == ops.sha("v1")

    # through the host's own link, the way `service opsdemo status` runs it
    r = fleet.ssh(h, f"/srv/.system/etc/init.d/{SVC} status")
    assert r.returncode == 0 and "RUNNING" in r.stdout
    assert fleet.ssh(h, f"{initd} frobnicate").returncode == 2
    # and deploytools sees the restarted service as healthy
    rows = [json.loads(x) for x in ops.fab(f"status:{SVC}", "--json").stdout.splitlines()]
    row = next(r for r in rows if r.get("host") == h)
    assert row["state"] == "RUNNING" and row["healthy"]
