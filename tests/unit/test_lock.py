"""The deploy lock on `local: true` hosts (real files, real bash): who holds it,
refusals that name the holder, heartbeats, stale locks, release on failure."""
import json
import os
import subprocess
import sys
import time

import pytest

from deploytools.errors import LockedError
from deploytools.inventory import Fleet
from deploytools.lock import FleetLock, parse_holder, staleness

@pytest.fixture
def setup(local_pair, tmp_path):
    fleet = Fleet(local_pair, ["h0", "h1"])
    yield local_pair.service("svc"), fleet, tmp_path
    fleet.close()


def lock_file(tmp_path, host):
    return tmp_path / host / "svc" / ".lock"


def test_second_lock_is_refused_naming_the_holder(setup, monkeypatch):
    service, fleet, tmp = setup
    monkeypatch.setenv("DEPLOYTOOLS_USER", "alice")
    first = FleetLock(fleet, service, "deploy")
    first.acquire()
    try:
        holder = json.loads(lock_file(tmp, "h0").read_text())
        assert holder["user"] == "alice" and holder["pid"] == os.getpid()
        monkeypatch.setenv("DEPLOYTOOLS_USER", "bob")
        with pytest.raises(LockedError) as e:
            FleetLock(fleet, service, "deploy").acquire()
        msg = str(e.value)
        assert e.value.exit_code == 4
        assert "alice" in msg and f"pid {os.getpid()}" in msg and holder["started"] in msg
        assert "stale" not in msg
        assert json.loads(lock_file(tmp, "h0").read_text())["id"] == first.owner["id"]
    finally:
        first.release()
    assert not lock_file(tmp, "h0").exists() and not lock_file(tmp, "h1").exists()


def test_failing_on_a_later_host_releases_the_earlier_ones(setup):
    service, fleet, tmp = setup
    other = FleetLock(Fleet(fleet.config, ["h1"]), service, "deploy")
    other.acquire()
    try:
        with pytest.raises(LockedError):
            FleetLock(fleet, service, "deploy").acquire()
        assert not lock_file(tmp, "h0").exists()  # taken, then given back
    finally:
        other.release()


def test_lock_wait_gets_the_lock_once_it_is_released(setup):
    service, fleet, tmp = setup
    first = FleetLock(fleet, service, "deploy")
    first.acquire()
    import threading
    threading.Timer(1.0, first.release).start()
    second = FleetLock(fleet, service, "deploy", wait=10)
    t0 = time.monotonic()
    second.acquire()
    assert 0.8 < time.monotonic() - t0 < 5
    assert json.loads(lock_file(tmp, "h1").read_text())["id"] == second.owner["id"]
    second.release()


def test_heartbeat_touches_every_lock_file(setup, monkeypatch):
    service, fleet, tmp = setup
    monkeypatch.setenv("DEPLOYTOOLS_LOCK_HEARTBEAT", "0.3")
    lock = FleetLock(fleet, service, "deploy")
    lock.acquire()
    try:
        for h in ("h0", "h1"):
            os.utime(lock_file(tmp, h), (time.time() - 100, time.time() - 100))
        time.sleep(1.0)
        for h in ("h0", "h1"):
            assert time.time() - lock_file(tmp, h).stat().st_mtime < 1.0
    finally:
        lock.release()
    time.sleep(0.5)  # the heartbeat is stopped: it must not bring the file back
    assert not lock_file(tmp, "h0").exists()


def _plant(tmp, holder, hosts=("h0", "h1")):
    for h in hosts:
        lock_file(tmp, h).parent.mkdir(parents=True, exist_ok=True)
        lock_file(tmp, h).write_text(json.dumps(holder) + "\n")


def test_lock_of_a_dead_process_here_is_taken_over_loudly(setup):
    service, fleet, tmp = setup
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = FleetLock(fleet, service, "deploy").owner
    holder.update(pid=dead.pid, proc_start=None, user="carol", wave=2)
    _plant(tmp, holder)
    said = []
    lock = FleetLock(fleet, service, "deploy", wait=30,
                     say=lambda kind, message, **f: said.append((kind, message)))
    lock.acquire()  # no waiting for the dead, and no silent takeover either
    try:
        assert [k for k, _ in said] == ["lock_takeover"]
        msg = said[0][1]
        assert f"process {dead.pid}" in msg and "carol" in msg and "wave 2" in msg
        assert "mixed" in msg
        assert [h["id"] for h in lock.taken_over] == [holder["id"]]
        for h in ("h0", "h1"):
            assert json.loads(lock_file(tmp, h).read_text())["id"] == lock.owner["id"]
    finally:
        lock.release()


def test_same_hostname_elsewhere_is_judged_by_heartbeat_not_pid(setup):
    """Two CI runners both called `runner`: a pid from the other one means nothing here."""
    service, fleet, tmp = setup
    holder = dict(FleetLock(fleet, service, "deploy").owner, pid=999999, machine="other-boot/ns")
    _plant(tmp, holder, hosts=("h0",))
    with pytest.raises(LockedError) as e:
        FleetLock(fleet, service, "deploy").acquire()
    assert "stale" not in str(e.value)  # fresh heartbeat: a live deploy elsewhere
    assert "unlock:svc,force=true" in str(e.value)
    os.utime(lock_file(tmp, "h0"), (time.time() - 60, time.time() - 60))
    lock = FleetLock(fleet, service, "deploy")
    lock.acquire()
    try:
        assert lock.taken_over[0]["stale"] == "no heartbeat for 60s (it beats every 5s)"
    finally:
        lock.release()


def test_unreadable_stale_lock_is_refused_not_taken(setup):
    service, fleet, tmp = setup
    path = lock_file(tmp, "h0")
    path.parent.mkdir(parents=True)
    path.write_text("garbage\n")
    os.utime(path, (time.time() - 300, time.time() - 300))
    with pytest.raises(LockedError) as e:
        FleetLock(fleet, service, "deploy").acquire()
    assert "stale" in str(e.value) and "deploytools unlock:svc" in str(e.value)
    assert path.read_text() == "garbage\n"


def test_note_records_progress_only_in_our_own_lock(setup):
    service, fleet, tmp = setup
    lock = FleetLock(fleet, service, "deploy")
    lock.acquire()
    h1 = fleet["h1"]
    try:
        out = h1.run(lock.note_program(h1, wave=3) + "echo after\n").stdout
        assert json.loads(lock_file(tmp, "h1").read_text())["wave"] == 3
        assert "after" in out and "step_failed" not in out
        assert "wave" not in json.loads(lock_file(tmp, "h0").read_text())  # its own host only
    finally:
        lock.release()
    assert not lock_file(tmp, "h1").exists()  # a note never recreates a released lock
    h1.run(lock.note_program(h1, wave=4))
    assert not lock_file(tmp, "h1").exists()


def test_a_failed_note_never_stops_the_program_it_is_part_of(setup):
    service, fleet, tmp = setup
    lock = FleetLock(fleet, service, "deploy")
    lock.acquire()
    h1 = fleet["h1"]
    try:
        blocker = lock_file(tmp, "h1").with_name(".lock.new")
        blocker.mkdir()  # the note's temporary file cannot be written (root ignores modes)
        out = h1.run(lock.note_program(h1, wave=2) + "echo after\n").stdout
        assert "@@step_failed lock_note" in out and "after" in out
        blocker.rmdir()
    finally:
        lock.release()


@pytest.mark.parametrize("holder, stale", [
    ({"machine": "me", "pid": 1, "age": 100, "heartbeat": 5}, None),  # alive here: no matter the beat
    ({"machine": "me", "pid": 99, "age": 1, "heartbeat": 5, "controller": "ci"},
     "its process 99 on ci is gone"),
    ({"machine": "other", "pid": 99, "age": 14, "heartbeat": 5}, None),  # can't see its pid
    ({"machine": "other", "pid": 99, "age": 16, "heartbeat": 5},
     "no heartbeat for 16s (it beats every 5s)"),
    ({"machine": "other", "pid": 99, "age": 4, "heartbeat": 1}, "no heartbeat for 4s (it beats every 1s)"),
    ({"controller": "me", "pid": 99, "age": 1, "heartbeat": 5}, None),  # a hostname proves nothing
    ({"raw": "garbage", "age": 3}, None),
    ({"raw": "garbage", "age": 300}, "no heartbeat for 300s (it beats every 5s)"),
])
def test_staleness(holder, stale):
    assert staleness(holder, machine="me", alive=lambda pid, start: pid == 1) == stale


def test_parse_holder():
    assert parse_holder("@@lock acquired\n") is None
    h = parse_holder('@@lock held\n@@age 7\n@@holder {"user": "a", "pid": 3}\n')
    assert h == {"user": "a", "pid": 3, "age": 7.0}
    assert parse_holder("@@lock held\n@@age 0\n@@holder \n")["retry"]
    assert parse_holder("@@lock held\n@@age 2\n@@holder nonsense\n") == {"raw": "nonsense", "age": 2.0}


def test_history_row_shows_steps_and_gate_figures():
    from deploytools.lock import HISTORY_COLUMNS, history_row
    rec = {"started": "2026-01-01T00:00:00+00:00", "user": "ci", "action": "deploy",
           "from_commit": "a" * 40, "commit": "b" * 40, "tag": "production-2026-01-01",
           "outcome": "success", "duration": 12.5, "hosts_seen": ["web-0", "web-1"],
           "steps": ["fetch", "venv_reused", "activate_reload"],
           "gates": [{"wave": 1, "outcome": "pass", "figures": {"e_c": 0, "n_c": 120, "e_b": 1,
                                                                "n_b": 360}},
                     {"wave": 2, "outcome": "inconclusive",
                      "figures": {"e_c": 0, "n_c": 40, "e_b": None, "n_b": None}}]}
    row = history_row(rec)
    assert list(row) == list(HISTORY_COLUMNS)
    assert row == {"when": "2026-01-01T00:00:00+00:00", "who": "ci", "action": "deploy",
                   "from": "aaaaaaa", "to": "bbbbbbb", "tag": "production-2026-01-01",
                   "outcome": "success", "secs": 12.5, "hosts": "web-0,web-1",
                   "steps": "fetch,venv_reused,activate_reload",
                   "gates": "1:pass 0/120 vs 1/360; 2:inconclusive 0/40"}
    assert history_row({"action": "rollback", "commit": "abc1234", "host": "web-2"})["hosts"] == "web-2"


def test_then_runs_under_the_lock_in_the_same_round_trip_and_release_runs_before(setup):
    """Issue 13: what a deploy reads under the lock comes back with it (one round trip),
    and the history line goes with the unlock, which happens even when it fails."""
    service, fleet, tmp = setup
    lock = FleetLock(fleet, service, "deploy",
                     then=lambda t: f"echo '@@seen {t.name}'; test -f {lock_file(tmp, t.name)}")
    lock.acquire()
    assert {h: out.splitlines()[-1] for h, out in lock.outputs.items()} == \
        {"h0": "@@seen h0", "h1": "@@seen h1"}
    outs = lock.release(before=lambda t: f"echo '@@before {t.name}'\nfalse\necho never")
    for h in ("h0", "h1"):
        assert not lock_file(tmp, h).exists()
        assert f"@@before {h}" in outs[h] and "never" not in outs[h]
        assert "@@step_failed before_unlock" in outs[h] and "@@unlocked" in outs[h]
    # Held elsewhere: `then` never runs there, and nothing of ours is left.
    other = FleetLock(Fleet(fleet.config, ["h1"]), service, "deploy")
    other.acquire()
    try:
        lock = FleetLock(fleet, service, "deploy", then=lambda t: "echo '@@then ran'")
        with pytest.raises(LockedError):
            lock.acquire()
        assert not lock_file(tmp, "h0").exists() and "h1" not in lock.outputs
    finally:
        other.release()


def test_a_takeover_reports_the_furthest_wave_any_host_noted(setup):
    """Each wave notes itself on its own hosts only: the takeover reads every host's."""
    service, fleet, tmp = setup
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = FleetLock(fleet, service, "deploy").owner
    holder.update(pid=dead.pid, proc_start=None, user="carol", wave=1)
    for h, wave in (("h0", 1), ("h1", 3)):
        lock_file(tmp, h).parent.mkdir(parents=True, exist_ok=True)
        lock_file(tmp, h).write_text(json.dumps(dict(holder, wave=wave)) + "\n")
    said = []
    lock = FleetLock(fleet, service, "deploy", say=lambda kind, message, **f: said.append(message))
    lock.acquire()
    try:
        assert "reached wave 3" in said[0] and lock.taken_over[0]["wave"] == 3
    finally:
        lock.release()
