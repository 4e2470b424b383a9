"""The bake window's evidence: access logs read from the offset where the window opened, the
tool's own probes, and `bake` itself end to end on local hosts (real files, real HTTP,
real bash through the LocalTarget seam; no SSH)."""
from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploytools import config, gate, inventory
from deploytools.errors import ConnectionFailed, DeployError
from deploytools.health import Counts
from deploytools.inventory import Fleet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp_path: Path, port: int, gate_yaml: str = "{}", hosts=("a", "b"),
                extra_hosts: str = "") -> config.Config:
    lines = ["hosts:"]
    for i, h in enumerate(hosts, 1):
        lines.append(f"  {h}: {{local: true, address: 127.0.0.{i}, root: roots/{h}}}")
    text = "\n".join(lines) + "\n" + extra_hosts + f"""
services:
  web:
    kind: wsgi
    repo: /nonexistent/repo.git
    app: app:application
    hosts: [{", ".join(hosts)}]
    port: {port}
    health: {{timeout: 1}}
    gate: {gate_yaml}
"""
    path = tmp_path / "services.yaml"
    path.write_text(text)
    return config.load(path)


def log_path(cfg, name: str) -> Path:
    return Path(cfg.service("web").dir_on(cfg.hosts[name])) / "log" / "access.log"  # gunicorn's


def stamp(t: float) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(t))


def line(t: float, status: int = 200, path: str = "/") -> str:
    return f'{stamp(t)} 127.0.0.1 "GET {path} HTTP/1.1" {status} 12 0.001\n'


def append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


# --- scripts -----------------------------------------------------------------


def read_by_program(path, offset):
    """Target.read_growing as a host without SFTP runs it: the program, in bash."""
    out = subprocess.run(["bash", "-c", "set -euo pipefail\n"
                          + inventory.read_growing_script(str(path), offset)],
                         capture_output=True, text=True, check=True).stdout
    return inventory.parse_read_growing(out)


def read_locally(path, offset):
    return inventory.LocalTarget(config.Host(name="a", local=True)).read_growing(str(path), offset)


@pytest.mark.parametrize("read", [read_by_program, read_locally], ids=["program", "file"])
def test_read_growing_gives_the_bytes_from_the_offset_or_from_the_start_when_rotated(
        tmp_path, read):
    assert "'/srv/it'\"'\"'s here/log/access.log'" in inventory.read_growing_script(
        "/srv/it's here/log/access.log", 12)
    log = tmp_path / "it's $(here)" / "access.log"
    assert read(log, None) == (0, 0, b"")  # absent: nothing served yet
    assert read(log, 0) == (0, 0, b"")
    append(log, "0123456789\nabc\n")
    assert read(log, None) == (15, 0, b"")
    assert read(log, 11) == (15, 11, b"abc\n")  # from the offset on
    assert read(log, 99) == (15, 0, b"0123456789\nabc\n")  # rotated: all of it
    with open(log, "ab") as f:
        f.write(b"d\xc3\xa9\xff\x00\n")  # any bytes, exactly
    assert read(log, 15) == (21, 15, b"d\xc3\xa9\xff\x00\n")


def test_what_a_shell_startup_file_prints_before_the_program_is_skipped():
    assert inventory.parse_read_growing("Welcome to web-0!\n@@read_growing 3 0\nYWJj\n") == \
        (3, 0, b"abc")
    with pytest.raises(DeployError, match="no @@read_growing line"):
        inventory.parse_read_growing("Welcome to web-0!\n")


def test_complete_lines_leave_a_line_being_written_for_the_next_read():
    assert gate.complete_lines(b"a\nb\nc") == (["a", "b"], 4)
    assert gate.complete_lines(b"c") == ([], 0)
    assert gate.complete_lines("é\n".encode()) == (["é"], 3)  # bytes, not characters


# --- AccessLogs ----------------------------------------------------------------


def test_access_logs_count_the_lines_after_the_offset(tmp_path):
    cfg = make_config(tmp_path, free_port())
    svc = cfg.service("web")
    t = float(int(time.time()))
    # Earlier traffic (the warm-up, or before it): before the offset, not counted, even
    # when its timestamps fall in the window's second.
    append(log_path(cfg, "a"), line(t + 1, 500) * 5)
    with Fleet(cfg, ["a", "b"]) as fleet:
        logs = gate.AccessLogs(fleet, svc, ["a", "b"])
        assert logs.offsets["a"] == log_path(cfg, "a").stat().st_size
        assert logs.offsets["b"] == 0  # no log yet: nothing served yet
        append(log_path(cfg, "a"),
               line(t) + line(t, 502) + line(t + 1)
               + line(t + 1, 200, "/healthz")       # the probes, counted by the Prober
               + line(t + 1, 500, "/healthz?x=1")
               + "garbage\n" + '[99/Zzz/2024:00:00:00 +0000] x "GET /" 200 1 0\n')
        got = logs.counts(["a", "b"])
        assert got == {"a": Counts(1, 3), "b": Counts(0, 0)}
        # The window grows with the bake: each check reads what is new and adds it up.
        read_to = dict(logs.read_to)
        append(log_path(cfg, "a"), line(t + 2, 500))
        append(log_path(cfg, "b"), line(t + 1, 503) + line(t + 1))
        got = logs.counts(["a", "b"])
        assert got == {"a": Counts(2, 4), "b": Counts(1, 2)}
        assert logs.read_to["a"] == read_to["a"] + len(line(t + 2, 500))
        assert logs.counts(["a", "b"]) == got  # nothing new: nothing more


def test_access_logs_read_a_rotated_log_from_its_start(tmp_path):
    cfg = make_config(tmp_path, free_port())
    t = float(int(time.time()))
    append(log_path(cfg, "a"), line(t) * 50)
    with Fleet(cfg, ["a"]) as fleet:
        logs = gate.AccessLogs(fleet, cfg.service("web"), ["a"])
        log_path(cfg, "a").write_text(line(t + 1, 500) + line(t + 1))  # rotated: shorter now
        assert logs.counts(["a"]) == {"a": Counts(1, 2)}


def test_an_unreachable_host_fails_the_gate(tmp_path):
    cfg = make_config(tmp_path, free_port(), hosts=("a",),
                      extra_hosts=f"  gone: {{address: 127.0.0.1, port: {free_port()}}}\n"
                                  f"ssh: {{known_hosts: {tmp_path}/known_hosts, "
                                  f"connect_timeout: 2}}\n")
    with Fleet(cfg, ["a", "gone"]) as fleet:
        # It fails the gate as a lost host, not as the release's fault (no rejected mark).
        with pytest.raises(ConnectionFailed, match="cannot read the access log.*gone"):
            gate.AccessLogs(fleet, cfg.service("web"), ["a", "gone"])


# --- Prober --------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    status = {"127.0.0.1": 200, "127.0.0.2": 200}

    def do_GET(self):
        code = self.status[self.server.server_address[0]]
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    """Start an HTTP server per address on one port: the hosts' health URLs."""
    started = []

    def start(port, statuses):
        handler = type("H", (Handler,), {"status": statuses})
        for address in statuses:
            srv = http.server.ThreadingHTTPServer((address, port), handler)
            threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
            started.append(srv)
    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def test_prober_counts_failed_answers_and_refused_connections(tmp_path, servers):
    port = free_port()
    cfg = make_config(tmp_path, port, hosts=("a", "b", "c"))
    servers(port, {"127.0.0.1": 200, "127.0.0.2": 503})  # c (127.0.0.3) refuses
    hosts = {n: cfg.hosts[n] for n in ("a", "b", "c")}
    prober = gate.Prober(cfg.service("web"), hosts, interval=0.05).start()
    time.sleep(0.6)
    prober.stop()
    ends = time.time() + 1
    a, b, c = (prober.counts([n], 0, ends) for n in ("a", "b", "c"))
    assert a.requests >= 5 and a.errors == 0
    assert b.requests >= 5 and b.errors == b.requests
    assert c.requests >= 5 and c.errors == c.requests
    assert prober.counts(["a", "b"], 0, ends) == a + b
    # The window is [start, end) over the times the answers came.
    first = prober.samples["a"][0][0]
    assert prober.counts(["a"], first, first) == Counts(0, 0)
    assert prober.counts(["a"], first, ends).requests == a.requests
    assert prober.counts(["a"], first + 1e-6, ends).requests == a.requests - 1


# --- bake, end to end -------------------------------------------------------------


class Traffic:
    """Writes gunicorn access lines for `rate` requests a second to each host's log."""

    def __init__(self, cfg, error_every: dict, rate: int = 100):
        self.cfg, self.error_every, self.rate = cfg, error_every, rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        while not self.stop.wait(1 / 20):  # 20 batches a second
            now = time.time()
            for host, every in self.error_every.items():
                text = ""
                for i in range(self.rate // 20):
                    n += 1
                    text += line(now, 500 if every and n % every == 0 else 200)
                append(log_path(self.cfg, host), text)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


GATE = "{warmup: 0.2, bake: 2, min_diff: 0.05, min_requests: 50, max_extensions: 0}"


def run_bake(cfg, new, old):
    events = []
    with Fleet(cfg, new + old) as fleet:
        t0 = time.monotonic()
        verdict = gate.bake(fleet, cfg.service("web"), new, old,
                            lambda kind, msg, **kw: events.append((kind, msg)))
    return verdict, time.monotonic() - t0, events


def test_bake_passes_a_healthy_canary_on_log_and_probe_counts(tmp_path, servers):
    port = free_port()
    cfg = make_config(tmp_path, port, GATE)
    servers(port, {"127.0.0.1": 200, "127.0.0.2": 200})
    with Traffic(cfg, {"a": 0, "b": 0}):
        verdict, took, _ = run_bake(cfg, ["a"], ["b"])
    f = verdict.figures
    assert verdict.outcome == "pass", verdict.reason
    start, end = f["window"]
    assert 2 <= end - start < 2.5  # the bake itself: not rounded up to whole seconds
    log_a, probes_a = f["hosts"]["a"]["log"], f["hosts"]["a"]["probes"]
    assert log_a[1] >= 100 and probes_a[1] >= 5  # ~100 lines and ~10 probes a second
    assert f["n_c"] == log_a[1] + probes_a[1] and f["e_c"] == 0
    assert f["n_b"] == f["hosts"]["b"]["log"][1] + f["hosts"]["b"]["probes"][1]
    assert took >= 2


def test_bake_fails_a_bad_canary_at_an_interim_check(tmp_path, servers):
    port = free_port()
    cfg = make_config(tmp_path, port, GATE.replace("bake: 2", "bake: 8"))
    servers(port, {"127.0.0.1": 200, "127.0.0.2": 200})
    with Traffic(cfg, {"a": 5, "b": 0}):  # a: every 5th request fails
        verdict, took, _ = run_bake(cfg, ["a"], ["b"])
    assert verdict.outcome == "fail" and "ceiling" in verdict.reason
    assert not verdict.figures["final"] and took < 8  # before the 8 s bake is over
    assert verdict.figures["hosts"]["b"]["log"][0] == 0


def test_bake_fails_a_canary_that_refuses_its_probes(tmp_path, servers):
    port = free_port()
    cfg = make_config(tmp_path, port, GATE)
    servers(port, {"127.0.0.2": 200})  # a is down: its log stays empty, its probes fail
    with Traffic(cfg, {"b": 0}):
        verdict, _, _ = run_bake(cfg, ["a"], ["b"])
    assert verdict.outcome == "fail"
    assert verdict.figures["hosts"]["a"]["probes"][0] == verdict.figures["hosts"]["a"]["probes"][1] > 0


def test_inconclusive_bake_rolls_back_by_default(tmp_path, servers):
    port = free_port()
    cfg = make_config(tmp_path, port, GATE.replace("min_requests: 50", "min_requests: 100000"))
    servers(port, {"127.0.0.1": 200, "127.0.0.2": 200})
    with Traffic(cfg, {"a": 0, "b": 0}):
        verdict, _, _ = run_bake(cfg, ["a"], ["b"])
    assert verdict.outcome == "fail" and "on_inconclusive is rollback" in verdict.reason


def test_a_short_bake_takes_its_own_length_not_a_whole_second(tmp_path, servers):
    """Issue 13: the window is cut by log offsets, so a 0.3 s bake lasts 0.3 s (it used to
    round up to whole seconds, up to 2 s) and still counts the lines logged in it."""
    port = free_port()
    cfg = make_config(tmp_path, port, "{warmup: 0, bake: 0.3, min_requests: 1, "
                                      "max_extensions: 0, on_inconclusive: proceed}")
    servers(port, {"127.0.0.1": 200, "127.0.0.2": 200})
    with Traffic(cfg, {"a": 0, "b": 0}):
        verdict, took, _ = run_bake(cfg, ["a"], ["b"])
    start, end = verdict.figures["window"]
    assert 0.299 <= end - start < 0.8 and took < 1.0, (start, end, took)  # ms rounding
    assert verdict.figures["hosts"]["a"]["log"][1] > 0  # ~100 lines a second were counted


def test_reading_a_log_the_server_keeps_writing_never_fails(tmp_path):
    """The bytes after the size the read took are for the next read: `head` stops
    there, and `tail`, still writing, gets SIGPIPE, which must not fail the program
    (pipefail: it failed a 16-host benchmark's gate, exit 141)."""
    log = tmp_path / "access.log"
    append(log, "x" * 99 + "\n")
    stop = threading.Event()

    def writer():
        with open(log, "a") as f:
            while not stop.is_set():
                f.write(("y" * 99 + "\n") * 100)  # 10 KB at a time, ~10 MB/s
                f.flush()
                time.sleep(0.001)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        offset = 0
        for _ in range(30):
            _, start, data = read_by_program(log, offset)
            lines, used = gate.complete_lines(data)
            assert start == offset and all(len(x) == 99 for x in lines) and used > 0
            offset += used
    finally:
        stop.set()
        thread.join()
