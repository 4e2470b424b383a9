"""monitor: tail output taken apart again, status lines, and the streaming seam
on `local: true` hosts (real bash, real tail)."""
import io
import threading
import time

import pytest

from deploytools.errors import UsageError
from deploytools.inventory import Fleet
from deploytools.monitor import TailSplitter, _flag, log_paths, monitor, status_text, tail_script
from deploytools.hoststate import HostState
from deploytools.report import Reporter
from deploytools.session import Session
from deploytools.supervisor import ProcessStatus

A, E = "/srv/x/log/access.log", "/srv/x/log/error.log"


def split(lines, paths=(A, E)):
    s = TailSplitter(list(paths))
    return [pair for line in lines for pair in s.feed(line)]


@pytest.mark.parametrize("lines, expected", [
    (["==> /srv/x/log/access.log <==", "GET /", "GET /a"], [(A, "GET /"), (A, "GET /a")]),
    # tail's blank line before a header is not a log line ...
    (["==> /srv/x/log/access.log <==", "GET /", "", "==> /srv/x/log/error.log <==", "boom"],
     [(A, "GET /"), (E, "boom")]),
    # ... but a blank line inside a log is
    (["==> /srv/x/log/error.log <==", "a", "", "b"], [(E, "a"), (E, ""), (E, "b")]),
    # a header naming another file is just a line of the log
    (["==> /srv/x/log/error.log <==", "==> /etc/passwd <=="], [(E, "==> /etc/passwd <==")]),
    (["before any header"], [(None, "before any header")]),
])
def test_tail_splitter(lines, expected):
    assert split(lines) == expected


def test_started_once_tail_has_been_through_every_log():
    s = TailSplitter([A, E])
    assert s.feed("==> /srv/x/log/access.log <==") == [] and not s.started
    assert s.feed("") == [] and s.feed("==> /srv/x/log/error.log <==") == [] and not s.started
    assert s.feed("") == [] and s.feed("==> /dev/null <==") == [] and s.started
    assert s.feed("") == [] and s.feed("==> /srv/x/log/access.log <==") == []
    assert s.feed("GET /") == [(A, "GET /")]


def test_tail_script_quotes_paths_and_execs_tail_when_following():
    s = tail_script(["/srv/a b/log/access.log"], 0, follow=True)
    assert s.startswith("exec tail -v -n 0 -F ") and "'/srv/a b/log/access.log' /dev/null" in s
    assert "-F" not in tail_script([A], 5, follow=False)


def test_log_paths_include_the_program_log():
    class S:
        name = "airship"
    assert [p.rsplit("/", 1)[1] for p in log_paths(S, "/srv/airship")] == [
        "access.log", "error.log", "airship.log", "supervisord.log"]


@pytest.mark.parametrize("state, health, expected", [
    (HostState(), None, "nothing deployed; supervisord not running"),
    (HostState(current="20260101T000000Z-abcdef1", manifest={"commit": "abcdef1234"},
               process=ProcessStatus("x", "RUNNING", 42, "0:01:02", "")), "HTTP 200",
     "release 20260101T000000Z-abcdef1 (commit abcdef1); RUNNING pid 42, up 0:01:02; health HTTP 200"),
    (HostState(current="r-abcdef1", process=ProcessStatus("x", "FATAL", None, None, "")),
     "no answer (ConnectionError)",
     "release r-abcdef1 (commit ?); FATAL; health no answer (ConnectionError)"),
])
def test_status_text(state, health, expected):
    assert status_text(state, health) == expected


def test_flag():
    assert _flag(None, True) is True and _flag(None, False) is False
    assert _flag("true", False) is True and _flag("no", True) is False and _flag(True, False)
    with pytest.raises(UsageError):
        _flag("maybe", True)


@pytest.fixture
def cfg(local_pair):
    return local_pair


def test_local_stream_delivers_lines_as_they_come_and_stops(cfg):
    seen = []
    stop = threading.Event()
    with Fleet(cfg, ["h0"]) as fleet:
        t = threading.Thread(target=lambda: seen.append(fleet["h0"].stream(
            "echo one; sleep 0.3; printf 'two\\nthr'; sleep 0.2; echo ee; exec sleep 30",
            lambda line: seen.append((time.monotonic(), line)), stop=stop)))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.9)
        stop.set()
        t.join(5)
    assert not t.is_alive()
    lines = [x[1] for x in seen if isinstance(x, tuple)]
    assert lines == ["one", "two", "three"]
    assert seen[0][0] - t0 < 0.25  # the first line did not wait for the rest
    assert seen[-1] is None  # stopped, not finished


def test_local_stream_returns_the_exit_status(cfg):
    with Fleet(cfg, ["h0"]) as fleet:
        assert fleet["h0"].stream("echo a; exit 3", lambda line: None) == 3


def test_lines_mode_prints_each_log_of_each_host_prefixed(cfg, tmp_path):
    for h in ("h0", "h1"):
        log = tmp_path / h / "svc" / "log"
        log.mkdir(parents=True)
        (log / "svc.log").write_text("".join(f"{h} program {i}\n" for i in range(5)))
        (log / "supervisord.log").write_text(f"{h} supervisord\n")
    out = io.StringIO()
    session = Session(reporter=Reporter(stream=out))
    session._config = cfg
    monitor(session, "svc", lines=2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("h0 status") and "nothing deployed" in lines[0]
    assert lines[2:] == [
        "h0 svc         | h0 program 3", "h0 svc         | h0 program 4",
        "h0 supervisord | h0 supervisord",
        "h1 svc         | h1 program 3", "h1 svc         | h1 program 4",
        "h1 supervisord | h1 supervisord"]


@pytest.mark.parametrize("started", ["as usual", "with SIGINT ignored"])
def test_follow_on_local_hosts_shows_each_new_line_and_ends_on_ctrl_c(cfg, tmp_path, started):
    """`started` with SIGINT ignored: what a background job of a script inherits."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    logs = {h: tmp_path / h / "svc" / "log" for h in ("h0", "h1")}
    for d in logs.values():
        d.mkdir(parents=True)
        (d / "error.log").write_text("old line, not shown\n")  # the others do not exist yet
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploytools", "monitor:svc"], cwd=root, text=True,
        env=dict(os.environ, DEPLOYTOOLS_CONFIG=cfg.path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_IGN if started != "as usual" else signal.SIG_DFL))
    try:
        following = 0
        while following < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            following += " following " in line
        for h, d in logs.items():
            for name in ("access.log", "error.log", "svc.log", "supervisord.log"):
                with open(d / name, "a") as f:
                    f.write(f"{h}-{name}-marker\n")
        seen = set()
        t0 = time.monotonic()
        while len(seen) < 8 and time.monotonic() - t0 < 5:
            line = proc.stdout.readline()
            host, log, _, text = line.split(None, 3)
            assert text.strip() == f"{host}-{log}.log-marker", line
            seen.add((host, log))
        assert len(seen) == 8
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "old line" not in out

    def cmdline(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return ""
    left = [cmdline(p) for p in os.listdir("/proc") if p.isdigit() and str(tmp_path) in cmdline(p)]
    assert not left


def test_host_prefix_is_coloured_on_a_terminal_only(monkeypatch):
    from deploytools.monitor import Printer

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Printer(Reporter(stream=stream), ["web-0", "web-10"], ["access"])
        p.line("web-0", "access", "GET /")
        p.line("web-10", "access", "GET /a")
    assert pipe.getvalue() == "web-0  access | GET /\nweb-10 access | GET /a\n"
    assert tty.getvalue() == ("\x1b[36mweb-0 \x1b[0m access | GET /\n"
                              "\x1b[33mweb-10\x1b[0m access | GET /a\n")
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Tty()
    Printer(Reporter(stream=plain), ["web-0"], ["access"]).line("web-0", "access", "x")
    assert plain.getvalue() == "web-0 access | x\n"
