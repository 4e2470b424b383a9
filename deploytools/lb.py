"""HAProxy in front of a service: take a host out of the pool around its restart.

The runtime API is HAProxy's admin socket on the LB host, reached over SSH
like any host (through the execution seam). Each command goes to the socket
from a tiny Python program run on the LB host; the commands travel on its
stdin, one per line, every value validated and quoted:

    set server BACKEND/SERVER state drain|ready
    show stat                 per-server CSV: status, current sessions, 5xx, errors

`parse_stat` turns `show stat` into data and is tested on strings. Around a
host's activation (`pool_guard`): drain, wait until its current sessions
reach 0 (bounded by `drain_timeout`), activate, wait ready, then `ready`.
A host whose activation or restore fails stays drained: it returns to the
pool only once it serves a good release again.
"""
from __future__ import annotations

import csv
import io
import re
import threading
import time
from contextlib import contextmanager

from .errors import DeployError
from .inventory import target_for
from . import handoff, render
from .script import facts

# HAProxy proxy and server names: letters, digits, '-', '_', '.', ':'.
NAME = re.compile(r"[A-Za-z0-9_.:-]+")
NAME_RULE = "letters, digits, '-', '_', '.' and ':'"

class LBError(DeployError):
    """The load balancer could not be driven (socket, command, drain timeout)."""


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise LBError(f"invalid HAProxy {what} {value!r}: use {NAME_RULE}.")
    return value


def command_script(socket_path: str, commands: list[str]) -> str:
    """Bash: send `commands` to the admin socket; prints each answer then `@@end`."""
    for c in commands:
        if "\n" in c or "\r" in c:
            raise LBError(f"an HAProxy command is one line: {c!r}")
    return render.render_script("haproxy.sh.j2", socket=socket_path,
                                commands="\n".join(commands) + "\n")


def split_answers(stdout: str) -> list[str]:
    answers, cur = [], []
    for line in stdout.splitlines():
        if line == "@@end":
            answers.append("\n".join(cur).strip())
            cur = []
        else:
            cur.append(line)
    return answers


def parse_stat(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """`show stat` CSV -> {(proxy, server): {column: value}}."""
    text = text.strip()
    if text.startswith("# "):
        text = text[2:]
    rows = csv.DictReader(io.StringIO(text))
    return {(r["pxname"], r["svname"]): {k: v for k, v in r.items() if k} for r in rows
            if r.get("pxname") and r.get("svname")}


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def errors_of(row: dict[str, str]) -> dict[str, int]:
    """The counters that mean a failed request: answers 5xx, connection and response errors."""
    return {"hrsp_5xx": _int(row.get("hrsp_5xx")), "econ": _int(row.get("econ")),
            "eresp": _int(row.get("eresp")), "requests": _int(row.get("stot"))}


def server_name(settings, host: str) -> str:
    """The HAProxy server of `host` under a service's `lb:` settings (config.Lb)."""
    return check_name(settings.server.replace("{host}", host), "server name")


class Balancer:
    """One HAProxy, driven through `target` (the LB host)."""

    def __init__(self, settings, target):
        self.settings = settings
        self.target = target
        self.backend = check_name(settings.backend, "backend name")
        self._lock = threading.Lock()  # one command at a time on the LB host's connection

    def run(self, *commands: str) -> list[str]:
        with self._lock:
            r = self.target.run(command_script(self.settings.socket, list(commands)),
                                what="talking to HAProxy")
        answers = split_answers(r.stdout)
        for c, a in zip(commands, answers):
            if c.startswith("set ") and a:  # a set command answers nothing when it worked
                raise LBError(f"HAProxy on {self.target.name} refused `{c}`: {a}")
        return answers

    def set_state(self, host: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise LBError(f"unknown server state {state!r}")
        self.run(f"set server {self.backend}/{server_name(self.settings, host)} state {state}")

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        return parse_stat(self.run("show stat")[0])

    def server_row(self, host: str) -> dict[str, str]:
        row = self.stats().get((self.backend, server_name(self.settings, host)))
        if row is None:
            raise LBError(f"HAProxy on {self.target.name} has no server "
                          f"{self.backend}/{server_name(self.settings, host)}: check lb.backend "
                          f"and lb.server in services.yaml")
        return row

    def states(self, hosts: list[str]) -> dict[str, str]:
        """Each host's server status as HAProxy shows it (UP, DRAIN, MAINT, DOWN...)."""
        rows = self.stats()
        return {h: rows.get((self.backend, server_name(self.settings, h)), {}).get("status", "?")
                for h in hosts}

    def drain(self, host: str) -> int:
        """Set `host` to drain and wait until its current sessions reach 0 (bounded).
        Returns the sessions still open when the wait ended."""
        self.set_state(host, "drain")
        _DRAINED.add(self._key(host))
        deadline = time.monotonic() + float(self.settings.drain_timeout)
        while True:
            scur = _int(self.server_row(host).get("scur"))
            if scur == 0 or time.monotonic() >= deadline:
                return scur
            time.sleep(0.2)

    def ready(self, host: str) -> None:
        self.set_state(host, "ready")
        _DRAINED.discard(self._key(host))

    def _key(self, host: str) -> tuple[str, str, str]:
        return (self.target.name, self.backend, host)

    def drained_by_us(self, host: str) -> bool:
        """Did this process drain `host` and not put it back (a failed activation)?"""
        return self._key(host) in _DRAINED

    def counters(self, hosts: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Per-host error counters of the backend (and `BACKEND` for the backend itself)."""
        rows = self.stats()
        out = {"BACKEND": errors_of(rows.get((self.backend, "BACKEND"), {}))}
        for h in hosts or []:
            out[h] = errors_of(rows.get((self.backend, server_name(self.settings, h)), {}))
        return out


@contextmanager
def connect(service, config):
    """The service's Balancer for the block (its own connection to the LB host, closed
    after), or None when the service has no `lb:`."""
    settings = getattr(service, "lb", None)
    if not settings:
        yield None
        return
    target = target_for(config.hosts[settings.host], config.ssh)
    try:
        yield Balancer(settings, target)
    finally:
        target.close()


@contextmanager
def out_of_pool(lb: Balancer | None, host: str, say=None):
    """Drain `host` for the block; back to `ready` only when the block succeeded, so a
    host whose activation or restore failed stays out of the pool. Hosts are taken out
    one at a time, so the rest of the pool keeps serving."""
    if lb is None:
        yield
        return
    with _SERIAL:
        left = lb.drain(host)
        if say:
            say("lb", f"  {host}: drained on {lb.target.name}"
                      + (f" ({left} sessions still open after {lb.settings.drain_timeout:g}s)"
                         if left else ""), host=host, sessions=left)
        yield
        lb.ready(host)
        if say:
            say("lb", f"  {host}: back in the pool", host=host)


@contextmanager
def around_activation(lb: Balancer | None, service, t, release: str | None, *,
                      restart: bool | None = None, say=None):
    """Out of the pool around an activation of `release` on target `t` that restarts the
    program (`restart`: known; None: asked from the host). A graceful reload stays in."""
    if lb is None or release is None:  # None: nothing to serve, nothing to put back
        yield
        return
    if lb.drained_by_us(t.name):  # left out by a failed activation: back in only once it serves
        restart = True
    if restart is None:
        r = t.run(handoff.restart_needed_script(service, service.dir_on(t.host), release),
                  what="checking whether the activation restarts")
        restart = facts(r.stdout).get("restart") == "yes"
    with out_of_pool(lb if restart else None, t.name, say):
        yield


_SERIAL = threading.Lock()
# Hosts drained by this process and not yet back in the pool: a deploy's waves and
# its rollback each open their own LB connection, and the rollback must know.
_DRAINED: set[tuple[str, str, str]] = set()


def states_or_error(service, config, hosts: list[str]) -> dict[str, str] | None:
    """For `status`: each host's state in HAProxy (UP, DRAIN, MAINT, DOWN...), a short
    error in place of each when HAProxy cannot be asked, or None without an `lb:`."""
    if not getattr(service, "lb", None):
        return None
    try:
        with connect(service, config) as balancer:
            return balancer.states(hosts)
    except DeployError as e:
        why = f"unreachable ({e.message.splitlines()[0][:40]})"
        return {h: why for h in hosts}

