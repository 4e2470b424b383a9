"""`deploytools monitor`: the logs of a service on all its hosts at once.

    deploytools monitor:airship                   # a status line per host, then follow (Ctrl-C ends)
    deploytools monitor:airship,lines=50          # the last 50 lines of each log per host, and exit
    deploytools monitor:airship,lines=20,follow=true    # those 20, then follow

The logs are gunicorn's access.log and error.log, the program's own log
(supervisord's capture of its stdout/stderr, log/<service>.log) and
supervisord.log. Following runs one `tail -F` per host through the execution
seam's streaming call (`Target.stream`), so a line shows up here as soon as
tail sees it; every line is prefixed by its host (coloured on a terminal)
and the log it came from. `--json` prints one event per line instead.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

from .booleans import FALSE as _FALSE, TRUE as _TRUE
from .errors import ConnectionFailed, DeployError, UsageError
from .hoststate import HostState, inspect_script, parse_inspect
from .inventory import each
from .probe import probe
from .script import q

LOGS = ("access.log", "error.log", "{service}.log", "supervisord.log")
# A colour per host, in host order: cyan, yellow, magenta, green, blue, red.
COLOURS = ("36", "33", "35", "32", "34", "31")
STATUS = "status"  # the label of our own lines about a host
# Followed after the logs: tail prints its header once it has been through
# every log, so from then on no line written is missed.
SENTINEL = "/dev/null"
_HEADER = re.compile(r"^==> (.+) <==$")


def log_paths(service, dir: str) -> list[str]:
    return [f"{dir}/log/{name.format(service=service.name)}" for name in LOGS]


def label(path: str) -> str:
    """log/access.log -> access"""
    name = path.rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".log") else name


def tail_script(paths: list[str], lines: int, *, follow: bool) -> str:
    """tail with a `==> path <==` header before every file's lines (-v), so one
    stream can carry several logs; `TailSplitter` takes them apart again."""
    files = " ".join(q(p) for p in paths)
    if follow:
        # exec: when the channel closes, the pty's hangup reaches tail itself.
        # -F follows a log across rotation and waits for one not written yet.
        return f"exec tail -v -n {int(lines)} -F -s 0.25 {files} {SENTINEL} 2>/dev/null\n"
    return f"tail -v -n {int(lines)} {files} 2>/dev/null || true\n"


class TailSplitter:
    """`tail -v` output -> (path, line) pairs.

    Only headers naming one of our files count as headers; the blank line
    tail prints before a header is dropped (a blank log line is kept).
    `started` turns true at the SENTINEL's header: tail is following every log.
    """

    def __init__(self, paths: list[str]):
        self.paths = set(paths)
        self.current: str | None = None
        self.started = False
        self._blank = False

    def feed(self, line: str) -> list[tuple[str | None, str]]:
        m = _HEADER.match(line)
        if m and (m.group(1) in self.paths or m.group(1) == SENTINEL):
            if m.group(1) == SENTINEL:
                self.started = True
            else:
                self.current = m.group(1)
            self._blank = False
            return []
        out = []
        if self._blank:
            out.append((self.current, ""))
            self._blank = False
        if line == "":
            self._blank = True
        else:
            out.append((self.current, line))
        return out


def status_text(state: HostState, health: str | None = None) -> str:
    """One line about a host: live release and commit, process state, health."""
    proc = state.process
    if proc is None:
        process = "supervisord not running"
    else:
        process = proc.state + (f" pid {proc.pid}" if proc.pid else "") + \
            (f", up {proc.uptime}" if proc.uptime else "")
    if not state.current:
        return f"nothing deployed; {process}"
    commit = (state.manifest.get("commit") or "?")[:7]
    text = f"release {state.current} (commit {commit}); {process}"
    return text + (f"; health {health}" if health else "")


def _flag(value, default: bool) -> bool:
    if value is None or isinstance(value, bool):
        return default if value is None else value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise UsageError(f"follow={value!r}: use true or false.")


class Printer:
    """Prefixes lines with their host and log; one event per line in JSON mode."""

    def __init__(self, reporter, hosts: list[str], labels: list[str]):
        self.reporter = reporter
        stream = reporter.stream
        self.colour = (not reporter.json_mode and not os.environ.get("NO_COLOR")
                       and hasattr(stream, "isatty") and stream.isatty())
        self.host_width = max(len(h) for h in hosts)
        self.label_width = max(len(x) for x in labels + [STATUS])
        self.colours = {h: COLOURS[i % len(COLOURS)] for i, h in enumerate(hosts)}

    def line(self, host: str, log: str, text: str) -> None:
        if self.reporter.json_mode:
            self.reporter.event("log" if log != STATUS else "host_status", host=host, log=log,
                                line=text)
            return
        name = host.ljust(self.host_width)
        if self.colour:
            name = f"\x1b[{self.colours[host]}m{name}\x1b[0m"
        self.reporter.event("log", f"{name} {log.ljust(self.label_width)} | {text}")


def _lines(value) -> int | None:
    """`lines=` as given on the command line (text) or by a caller (int)."""
    if value is None:
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        n = -1
    if n < 0:
        raise UsageError(f"lines={value}: give a number of lines, 0 or more "
                         "(e.g. deploytools monitor:SERVICE,lines=50).")
    return n


def monitor(session, name: str, *, lines: int | None = None, follow=None) -> None:
    service = session.config.service(name)
    hosts = session.hosts_for(service)
    follow = _flag(follow, default=lines is None)
    lines = _lines(lines)
    labels = [label(p) for p in log_paths(service, "")]
    printer = Printer(session.reporter, hosts, labels)
    with session.fleet(hosts) as fleet:
        live = _status(service, fleet, printer)
        if not live:
            raise ConnectionFailed(f"no host of {service.name} could be reached "
                                   f"({', '.join(hosts)}); see the lines above.")
        if follow:
            _follow(service, live, printer, lines or 0)
        else:
            _last(service, live, printer, lines if lines is not None else 10)


def _status(service, fleet, printer) -> list:
    """Print a status line per host; return the hosts that answered."""
    def inspect(t):
        r = t.run(inspect_script(service, service.dir_on(t.host)), what="inspecting")
        state = parse_inspect(r.stdout, service.name)
        health = probe(service, t.host, timeout=2)[1] if state.current else None
        return status_text(state, health)
    texts, errors = each(fleet, inspect, parallel=service.parallel)
    for t in fleet:
        if t.name in errors:
            err = errors[t.name]
            printer.line(t.name, STATUS, "unreachable: " + (err.message if isinstance(
                err, DeployError) else str(err)).splitlines()[0])
        else:
            printer.line(t.name, STATUS, texts[t.name])
    return [t for t in fleet if t.name in texts]


def _last(service, targets, printer, lines: int) -> None:
    def read(t):
        paths = log_paths(service, service.dir_on(t.host))
        text = t.run(tail_script(paths, lines, follow=False), what="reading logs").stdout
        split = TailSplitter(paths)
        return [pair for raw in text.splitlines() for pair in split.feed(raw)]
    out, errors = each(targets, read, parallel=service.parallel)
    for t in targets:  # host by host, each log in order: easy to read in a script
        if t.name in errors:
            printer.line(t.name, STATUS, f"could not read the logs: {errors[t.name]}")
            continue
        for path, text in out[t.name]:
            printer.line(t.name, label(path) if path else "?", text)


def _follow(service, targets, printer, lines: int) -> None:
    stop = threading.Event()
    running = [len(targets)]
    count = threading.Lock()

    def follow_one(t):
        try:
            stream_one(t)
        finally:
            with count:
                running[0] -= 1

    def stream_one(t):
        paths = log_paths(service, service.dir_on(t.host))
        split = TailSplitter(paths)

        def on_line(raw):
            was_started = split.started
            pairs = split.feed(raw)
            if split.started and not was_started:
                printer.line(t.name, STATUS, "following " + " ".join(label(p) for p in paths))
            for path, text in pairs:
                printer.line(t.name, label(path) if path else "?", text)
        try:
            code = t.stream(tail_script(paths, lines, follow=True), on_line, stop=stop)
        except DeployError as e:
            if not stop.is_set():
                printer.line(t.name, STATUS, f"stopped following: {e.message}")
            return
        if code is not None:
            printer.line(t.name, STATUS, f"stopped following: tail exited with status {code}")

    threads = [threading.Thread(target=follow_one, args=(t,), name=f"monitor-{t.name}",
                                daemon=True) for t in targets]
    for th in threads:
        th.start()
    # Ctrl-C (SIGINT) is how following ends, also for a monitor started with SIGINT
    # ignored (a script's background job inherits that, and Python then raises no
    # KeyboardInterrupt): `kill -INT` must still end it.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        # Sleep, not join: a join that Ctrl-C interrupts can leave a live thread
        # marked finished (CPython 3.11), and we must wait for each to end its tail.
        while running[0]:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how following ends: not an error
    finally:
        stop.set()
        for th in threads:
            th.join(3)
        if main:
            signal.signal(signal.SIGINT, previous)
