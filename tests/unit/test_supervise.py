"""templates/remote/supervise.py, the hosts' program that asks a service's supervisord
over its socket: `status` (supervisorctl's lines) and the rolling restart behind
`bin/ctl restart-program`.

It runs here against a small supervisord stand-in: the real XML-RPC calls over a real
UNIX socket, real processes for the slots' masters and workers (so the booted-worker
check reads the real /proc), and a state machine that goes as supervisord's does
(STOPPING, then STOPPED; STARTING, then RUNNING after `startsecs`). The system tests
restart the real thing under load (tests/system/test_zero_downtime.py).
"""
from __future__ import annotations

import importlib.util
import io
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from xmlrpc.client import Fault
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest

from deploytools import render, supervisor

_spec = importlib.util.spec_from_file_location(
    "supervise", render.TEMPLATES / "remote" / "supervise.py")
supervise = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(supervise)


class _Handler(SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False  # a UNIX socket has no TCP_NODELAY


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer,
              SimpleXMLRPCDispatcher):
    daemon_threads = True
    logRequests = False

    def __init__(self, path):
        socketserver.UnixStreamServer.__init__(self, path, _Handler)
        SimpleXMLRPCDispatcher.__init__(self, allow_none=False, encoding=None)


class Supervisord:
    """A stand-in for one service's supervisord: `group` with `n` processes. A start
    spawns a real master (sh) which, `boot` seconds later, forks its worker (sleep) and
    writes the worker's marker, as gunicorn's post_worker_init does; RUNNING comes
    `startsecs` after the start. `fail` names slots whose master exits after `boot`
    seconds instead (FATAL), `die` slots whose master exits once its worker booted.
    A stopped process exits `stop_time` after the stop (a graceful stop, or the kill
    after stopwaitsecs), whether or not anyone asks. `asked` counts the calls."""

    def __init__(self, tmp: Path, group: str = "skiff", n: int = 2, *, boot: float = 0.15,
                 startsecs: float = 0.4, stop_time: float = 0.1, forked: float = 0.0):
        self.group, self.boot, self.startsecs, self.stop_time = group, boot, startsecs, stop_time
        # forked: a new process is first, for that long, a fork of "supervisord" (this
        # process, FORK held) with its command line, where a TERM is noted and lost, as
        # in supervisord's child before its exec; a stop then sends TERM for real and
        # kills `stop_time` later, as supervisord does after stopwaitsecs.
        self.forked = forked
        self.parent = subprocess.Popen([sys.executable, "-c", FORK],
                                       env=dict(os.environ, HOLD="1")) if forked else None
        self.workers = tmp / "workers"
        self.workers.mkdir()
        self.sock = str(tmp / "supervisor.sock")
        self.fail: set[str] = set()
        self.die: set[str] = set()
        self.calls: list[tuple] = []
        self.asked = 0
        self.lock = threading.Lock()
        names = [group] if n == 1 else [f"{group}_{i}" for i in range(n)]
        self.procs = {}
        for name in names:
            self.procs[f"{group}:{name}"] = {"group": group, "name": name, "state": "STOPPED",
                                            "proc": None, "started": 0.0, "stopping": 0.0}
            self._spawn(f"{group}:{name}")
            self.procs[f"{group}:{name}"]["started"] -= startsecs  # RUNNING already
        self.server = _Server(self.sock)
        for fn in (self.getAllProcessInfo, self.getProcessInfo, self.stopProcess,
                   self.startProcess, self.signalProcessGroup, self.getPID):
            self.server.register_function(fn, "supervisor." + fn.__name__)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while len(list(self.workers.iterdir())) < n and time.monotonic() < deadline:
            time.sleep(0.01)  # every slot serving before the test begins

    def _spawn(self, spec):
        p = self.procs[spec]
        name = spec.split(":")[1]
        if name in self.fail:
            script = f"sleep {self.boot}; exit 1"
        elif name in self.die:
            script = f'sleep {self.boot}; sleep 60 & touch "$1/$!"; sleep 0.1; kill $!; exit 1'
        else:
            script = f'sleep {self.boot}; sleep 60 & touch "$1/$!"; wait'
        if self.forked:
            p["proc"] = subprocess.Popen(
                [sys.executable, "-c", FORK], start_new_session=True,
                env=dict(os.environ, PROGRAM=script, WORKERS=str(self.workers),
                         FORKED=str(self.forked)))
        else:
            p["proc"] = subprocess.Popen(["sh", "-c", script, "sh", str(self.workers)],
                                         start_new_session=True)
        p["state"], p["started"] = "STARTING", time.monotonic()

    def _update(self, spec):
        p = self.procs[spec]
        alive = p["proc"] is not None and p["proc"].poll() is None
        now = time.monotonic()
        if p["state"] == "STOPPING" and (not alive or now - p["stopping"] >= self.stop_time):
            self._kill(p)
            p["state"] = "STOPPED"
        elif p["state"] == "STARTING" and not alive:
            p["state"] = "FATAL"
        elif p["state"] == "STARTING" and now - p["started"] >= self.startsecs:
            p["state"] = "RUNNING"
        elif p["state"] == "RUNNING" and not alive:
            p["state"] = "EXITED"

    def _kill(self, p):
        if p["proc"] is not None and p["proc"].poll() is None:
            os.killpg(p["proc"].pid, signal.SIGKILL)
            p["proc"].wait()
        elif p["proc"] is not None:
            try:  # its worker, left by a master that took the TERM
                os.killpg(p["proc"].pid, signal.SIGKILL)
            except OSError:
                pass

    def _info(self, spec):
        self._update(spec)
        p = self.procs[spec]
        pid = p["proc"].pid if p["state"] in ("STARTING", "RUNNING", "STOPPING") else 0
        desc = {"RUNNING": f"pid {pid}, uptime 0:00:01", "FATAL": "Exited too quickly "
                "(process log may have details)"}.get(p["state"], "")
        return {"group": p["group"], "name": p["name"], "statename": p["state"], "pid": pid,
                "description": desc}

    def getAllProcessInfo(self):
        with self.lock:
            self.asked += 1
            return [self._info(s) for s in self.procs]

    def getProcessInfo(self, spec):
        with self.lock:
            self.asked += 1
            return self._info(spec)

    def stopProcess(self, spec, wait):
        with self.lock:
            self.calls.append(("stop", spec, wait, self._booted_others(spec)))
            p = self.procs[spec]
            if self._info(spec)["statename"] not in ("STARTING", "RUNNING"):
                raise Fault(70, f"NOT_RUNNING: {spec}")
            p["state"], p["stopping"] = "STOPPING", time.monotonic()
            if self.forked:
                p["proc"].send_signal(signal.SIGTERM)
            timer = threading.Timer(self.stop_time, self._stopped, [spec, p["proc"]])
            timer.daemon = True
            timer.start()
            return True

    def _stopped(self, spec, proc):
        with self.lock:
            if self.procs[spec]["proc"] is proc and self.procs[spec]["state"] == "STOPPING":
                self._kill(self.procs[spec])

    def getPID(self):
        return self.parent.pid if self.parent else os.getpid()

    def startProcess(self, spec, wait):
        with self.lock:
            self.asked += 1
            self.calls.append(("start", spec, wait))
            self._spawn(spec)
            return True

    def signalProcessGroup(self, group, sig):
        if group != self.group:
            raise Fault(10, f"BAD_NAME: {group}")
        with self.lock:
            self.calls.append(("signal", group, sig))
            return [{"group": p["group"], "name": p["name"],
                     "status": 80 if self._info(n)["statename"] == "RUNNING" else 60,
                     "description": "OK" if self._info(n)["statename"] == "RUNNING"
                     else "NOT_RUNNING"} for n, p in self.procs.items()]

    def _booted_others(self, spec):
        """The other slots whose current master has a booted worker: at a stop, what is
        still serving."""
        return sorted(s for s, p in self.procs.items() if s != spec and p["proc"] is not None
                      and supervise.booted(str(self.workers), p["proc"].pid)
                      and p["state"] in ("STARTING", "RUNNING"))

    def pid(self, spec):
        return self.procs[spec]["proc"].pid

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        for p in self.procs.values():
            self._kill(p)
        if self.parent:
            self.parent.kill()
            self.parent.wait()


# A fork of the stand-in's "supervisord": the same command line as its `parent` (HOLD
# set: it only waits), then the program. A TERM before the exec is noted and lost.
FORK = """
import os, signal, sys, time
if os.environ.get("HOLD"):
    time.sleep(3600)
signal.signal(signal.SIGTERM, lambda *a: None)
time.sleep(float(os.environ["FORKED"]))
os.execvp("sh", ["sh", "-c", os.environ["PROGRAM"], "sh", os.environ["WORKERS"]])
"""


@pytest.fixture
def sd(tmp_path):
    made = []

    def make(**kw):
        made.append(Supervisord(tmp_path, **kw))
        return made[-1]
    yield make
    for s in made:
        s.close()


def restart(s, workers=True):
    out = io.StringIO()
    rc = supervise.restart(supervise.connect(s.sock), s.group,
                           str(s.workers) if workers else None, 5, 5, out=out,
                           startsecs=s.startsecs)
    return rc, out.getvalue()


def test_status_prints_supervisorctl_lines_that_parse_status_reads(sd):
    s = sd()
    out = io.StringIO()
    assert supervise.status(supervise.connect(s.sock), "skiff", out=out) == 0
    # supervisorctl 4.3: '%(namespec)-33s%(state)-10s%(desc)s' (30 + 3 at least).
    assert out.getvalue().splitlines() == [
        f"skiff:skiff_{i}{' ' * 20}RUNNING   pid {s.pid(f'skiff:skiff_{i}')}, uptime 0:00:01"
        for i in (0, 1)]
    st = supervisor.parse_status(out.getvalue(), "skiff")
    assert (st.state, st.pid) == ("RUNNING", s.pid("skiff:skiff_0"))
    out = io.StringIO()
    assert supervise.status(supervise.connect(s.sock), "other", out=out) == 4
    assert out.getvalue() == "other: ERROR (no such group)\n"
    assert supervisor.parse_status(out.getvalue(), "other").state == "UNKNOWN"


def test_status_of_a_program_names_it_alone_and_exits_3_when_it_is_down(sd):
    s = sd(group="harbor", n=1, startsecs=30)
    rpc = supervise.connect(s.sock)
    supervise.stop(rpc, "harbor:harbor", 5)
    out = io.StringIO()
    assert supervise.status(rpc, "harbor", out=out) == 3
    assert out.getvalue() == f"harbor{' ' * 27}STOPPED   \n"
    rpc.startProcess("harbor:harbor", False)
    out = io.StringIO()
    assert supervise.status(rpc, "harbor", out=out) == 0  # STARTING is not down
    assert out.getvalue() == f"harbor{' ' * 27}STARTING  \n"


def test_status_without_supervisord_says_it_as_supervisorctl_does(tmp_path, capsys):
    sock = str(tmp_path / "supervisor.sock")
    assert supervise.main([sock, "status", "skiff"]) == 4
    out = capsys.readouterr().out
    assert out == f"unix://{sock} no such file\n"
    assert supervisor.parse_status(out, "skiff").state == "UNKNOWN"
    assert supervise.main([sock, "restart", "skiff", "-", "5", "5"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_signal_reaches_the_group_and_fails_naming_a_process_that_did_not_take_it(sd):
    s = sd()
    rpc = supervise.connect(s.sock)
    assert supervise.signal(rpc, "skiff", "HUP") == 0
    assert s.calls == [("signal", "skiff", "HUP")]
    supervise.stop(rpc, "skiff:skiff_1", 5)
    with pytest.raises(supervise.Failed, match=r"^skiff:skiff_1: ERROR \(NOT_RUNNING\)$"):
        supervise.signal(rpc, "skiff", "HUP")
    with pytest.raises(supervise.Failed, match=r"^other: ERROR \(BAD_NAME: other\)$"):
        supervise.signal(rpc, "other", "HUP")


def test_slots_restart_one_at_a_time_each_stopped_while_the_other_serves(sd):
    s = sd()
    old = {n: s.pid(n) for n in s.procs}
    rc, out = restart(s)
    assert rc == 0
    new = {n: s.pid(n) for n in s.procs}
    assert all(new[n] != old[n] for n in s.procs)
    assert out == f"@@slot_pids {new['skiff:skiff_0']} {new['skiff:skiff_1']}\n"
    # Stops never wait inside supervisord (its event loop would spin), and each slot
    # stops only while the other has a booted worker.
    assert s.calls == [("stop", "skiff:skiff_0", False, ["skiff:skiff_1"]),
                       ("start", "skiff:skiff_0", False),
                       ("stop", "skiff:skiff_1", False, ["skiff:skiff_0"]),
                       ("start", "skiff:skiff_1", False)]
    # It returns once supervisord says RUNNING for every slot, not at the boot.
    assert all(s.getProcessInfo(n)["statename"] == "RUNNING" for n in s.procs)


def test_a_slot_that_is_down_restarts_first_while_the_running_one_serves(sd):
    # A FATAL or STOPPED slot next to a RUNNING one (the `restart` task, an activation
    # that cannot reload both): the down one comes back before the RUNNING one stops.
    s = sd()
    supervise.stop(supervise.connect(s.sock), "skiff:skiff_1", 5)
    s.calls.clear()
    rc, out = restart(s)
    assert rc == 0
    assert s.calls == [("start", "skiff:skiff_1", False),
                       ("stop", "skiff:skiff_0", False, ["skiff:skiff_1"]),
                       ("start", "skiff:skiff_0", False)]
    # The pids in the slots' order, as the readiness check reads them.
    assert out == f"@@slot_pids {s.pid('skiff:skiff_0')} {s.pid('skiff:skiff_1')}\n"
    assert all(s.getProcessInfo(n)["statename"] == "RUNNING" for n in s.procs)


def test_a_restart_asks_supervisord_when_something_can_have_changed(sd):
    # Each call costs supervisord about a millisecond: the waits look at /proc, and
    # ask it once a process is gone, when RUNNING is due, or every 0.2 s all the same
    # (16 calls here; polling it every 20 to 60 ms made 56).
    s = sd(stop_time=0.3, boot=0.3, startsecs=0.5)
    assert restart(s)[0] == 0
    assert s.asked <= 20, s.asked


def test_gone_is_true_for_an_exited_process_not_yet_reaped(tmp_path):
    p = subprocess.Popen(["sleep", "5"])
    try:
        assert not supervise.gone(p.pid)
        p.kill()
        deadline = time.monotonic() + 5
        while not supervise.gone(p.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert supervise.gone(p.pid)  # a zombie: its parent has not waited yet
        assert Path(f"/proc/{p.pid}").exists()
    finally:
        p.kill()
        p.wait()
    assert supervise.gone(p.pid)


def test_a_wait_asks_supervisord_even_while_the_pid_looks_alive(sd):
    # A pid reused, or /proc hidden the other way: supervisord still has the last word.
    s = sd()
    rpc = supervise.connect(s.sock)
    rpc.stopProcess("skiff:skiff_0", False)
    t0 = time.monotonic()
    supervise.wait_stopped(rpc, ["skiff:skiff_0"], [os.getpid()], 5)
    assert time.monotonic() - t0 < 1


def test_a_slot_that_does_not_boot_fails_and_the_other_keeps_serving(sd):
    s = sd()
    s.fail.add("skiff_0")
    with pytest.raises(supervise.Failed, match=r"skiff:skiff_0 does not start: .*FATAL"):
        restart(s)
    assert [c[:2] for c in s.calls] == [("stop", "skiff:skiff_0"), ("start", "skiff:skiff_0")]
    assert s.getProcessInfo("skiff:skiff_1")["statename"] == "RUNNING"


def test_a_slot_that_dies_after_its_worker_booted_fails_the_restart(sd):
    s = sd()
    s.die.add("skiff_1")
    with pytest.raises(supervise.Failed, match=r"skiff:skiff_1 died after it started"):
        restart(s)


def test_without_workers_each_slot_is_waited_for_until_running(sd):
    s = sd(startsecs=0.3)
    t = time.monotonic()
    rc, out = restart(s, workers=False)
    assert rc == 0 and time.monotonic() - t >= 2 * 0.3
    # The second slot stopped only once the first was RUNNING again.
    assert s.calls[2][:2] == ("stop", "skiff:skiff_1")


def test_one_process_says_it_drops_connections_and_waits_until_running(sd):
    s = sd(group="harbor", n=1)
    rc, out = restart(s)
    assert rc == 0
    assert out.splitlines() == [
        "@@drops harbor binds its own port: connections are refused until it is back "
        "(socket: inherit avoids it)", f"@@slot_pids {s.pid('harbor:harbor')}"]
    assert s.getProcessInfo("harbor:harbor")["statename"] == "RUNNING"


def test_one_process_that_does_not_start_fails_with_supervisords_verdict(sd):
    s = sd(group="harbor", n=1)
    s.fail.add("harbor")
    with pytest.raises(supervise.Failed, match=r"^harbor:harbor does not start: harbor FATAL "
                       r"Exited too quickly \(process log may have details\)$"):
        restart(s)


def test_a_process_that_does_not_stop_in_time_fails(sd):
    s = sd(stop_time=2)
    with pytest.raises(supervise.Failed, match=r"skiff:skiff_0 did not stop in 0.3s"):
        supervise.stop(supervise.connect(s.sock), "skiff:skiff_0", 0.3)


def test_parent_of_reads_proc_stat_whatever_the_command_is_named(tmp_path):
    exe = tmp_path / "a b) c"
    exe.symlink_to("/bin/sleep")
    p = subprocess.Popen([str(exe), "5"])
    try:
        time.sleep(0.05)
        assert supervise.parent_of(p.pid) == os.getpid()
    finally:
        p.kill()
        p.wait()
    assert supervise.parent_of(p.pid) is None
    assert supervise.parent_of(os.getpid()) == os.getppid()


def test_calls_escape_what_xml_would_read_as_markup(sd):
    s = sd()
    with pytest.raises(supervise.Fault, match=r"BAD_NAME: a<b>&c"):
        supervise.connect(s.sock).signalProcessGroup("a<b>&c", "HUP")


def test_it_needs_only_the_standard_library(tmp_path):
    # The hosts run it with `python -I -S`: no site-packages, so no supervisor import.
    r = subprocess.run([sys.executable, "-I", "-S", "-", str(tmp_path / "none.sock"),
                        "status", "skiff"], input=(render.TEMPLATES / "remote" /
                                                   "supervise.py").read_text(),
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (4, f"unix://{tmp_path}/none.sock no such file\n")


def _respawned(s, spec):
    """`spec` started afresh by the stand-in, as a retry of supervisord's: a fork now."""
    with s.lock:
        s._kill(s.procs[spec])
        s._spawn(spec)
    pid = s.pid(spec)
    # supervisord's child has its handlers from the fork; this one once Python set it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return pid
        time.sleep(0.005)
    raise AssertionError("the fork did not take its TERM handler")


def test_a_fork_loses_the_term_of_a_stop_as_supervisords_child_does(sd):
    """The stand-in is honest: a stop asked of a just-forked process waits out the
    stop time (supervisord's stopwaitsecs), then kills."""
    s = sd(forked=0.3, stop_time=1.5)
    pid = _respawned(s, "skiff:skiff_0")
    rpc = supervise.connect(s.sock)
    assert supervise.Forks(rpc).forked_only(pid)
    t0 = time.monotonic()
    rpc.stopProcess("skiff:skiff_0", False)
    supervise.wait_stopped(rpc, ["skiff:skiff_0"], [pid], 5)
    assert time.monotonic() - t0 >= 1.4


def test_stop_waits_for_a_fork_to_exec_so_its_term_is_not_lost(sd):
    s = sd(forked=0.3, stop_time=3)
    pid = _respawned(s, "skiff:skiff_0")
    rpc = supervise.connect(s.sock)
    t0 = time.monotonic()
    assert supervise.stop_group(rpc, "skiff", 10) == 0
    took = time.monotonic() - t0
    assert 0.25 <= took < 1.5, took  # the fork's 0.3 s, not the 3 s kill
    assert {i["statename"] for i in rpc.getAllProcessInfo()} == {"STOPPED"}
    assert not supervise.Forks(rpc).forked_only(pid)
    stops = [c[1] for c in s.calls if c[0] == "stop"]
    assert sorted(stops) == ["skiff:skiff_0", "skiff:skiff_1"]


def test_stop_of_a_group_says_an_unknown_group_and_skips_what_is_down(sd):
    s = sd()
    rpc = supervise.connect(s.sock)
    with pytest.raises(supervise.Failed, match=r"^nope: ERROR \(no such group\)$"):
        supervise.stop_group(rpc, "nope", 5)
    supervise.stop(rpc, "skiff:skiff_1", 5)
    assert supervise.stop_group(rpc, "skiff", 5) == 0
    assert [c[1] for c in s.calls if c[0] == "stop"] == ["skiff:skiff_1", "skiff:skiff_0"]


def test_reload_signals_only_when_every_process_is_running(sd):
    s = sd()
    rpc = supervise.connect(s.sock)
    out = io.StringIO()
    assert supervise.reload(rpc, "skiff", "HUP", out=out) == 0
    assert [line.split()[:2] for line in out.getvalue().splitlines()] == [
        ["skiff:skiff_0", "RUNNING"], ["skiff:skiff_1", "RUNNING"]]
    assert s.calls[-1] == ("signal", "skiff", "HUP")
    supervise.stop(rpc, "skiff:skiff_1", 5)
    calls, out = len(s.calls), io.StringIO()
    assert supervise.reload(rpc, "skiff", "HUP", out=out) == 3  # as status says it
    assert "skiff:skiff_1" in out.getvalue() and "STOPPED" in out.getvalue()
    assert len(s.calls) == calls  # nothing signalled
    out = io.StringIO()
    assert supervise.reload(rpc, "nope", "HUP", out=out) == 4
    assert out.getvalue() == "nope: ERROR (no such group)\n"


@pytest.mark.parametrize("argv", [
    [], ["/s"], ["/s", "status"], ["/s", "nope", "skiff"], ["/s", "status", "skiff", "x"],
    ["/s", "signal", "skiff"], ["/s", "reload", "skiff"], ["/s", "stop", "skiff"],
    ["/s", "restart", "skiff", "-", "5"], ["/s", "restart", "skiff", "-", "5", "5", "1", "x"],
])
def test_a_wrong_command_line_is_a_usage_error_not_a_traceback(argv, capsys):
    assert supervise.main(argv) == 2
    assert capsys.readouterr().err.startswith("usage: supervise.py SOCKET status GROUP")


@pytest.mark.parametrize("argv,rc", [
    (["status", "skiff"], 4), (["reload", "skiff", "HUP"], 4), (["signal", "skiff", "HUP"], 1),
    (["stop", "skiff", "5"], 1), (["restart", "skiff", "-", "5", "5"], 1),
    (["restart", "skiff", "-", "5", "5", "1"], 1),
])
def test_each_right_command_line_gets_as_far_as_the_socket(argv, rc, tmp_path, capsys):
    assert supervise.main([str(tmp_path / "none.sock")] + argv) == rc
    assert "no such file" in "".join(capsys.readouterr())
