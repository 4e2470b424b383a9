"""Start, reload and inspect a service through its own supervisord instance.

Commands are built here; `parse_status` turns `supervisorctl status` output
into data and is tested on strings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import render
from .script import q


def ctl(dir: str) -> str:
    """The supervisorctl command line of the service's own supervisord (the
    remote templates define it as a `ctl` shell function)."""
    return f"{q(dir)}/tools/bin/supervisorctl -c {q(dir)}/etc/supervisord.conf"


def ensure_running_script(dir: str) -> str:
    """Bash: start the service's supervisord unless it is up (idempotent).

    Prints `@@supervisord started`."""
    return render.render_script("ensure_supervisord.sh.j2", dir=dir)


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    state: str  # RUNNING, STOPPED, FATAL, BACKOFF, STARTING, ... or UNKNOWN
    pid: int | None
    uptime: str | None
    detail: str


_STATUS = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s*(?P<rest>.*)$")
_RUNNING = re.compile(r"pid (?P<pid>\d+), uptime (?P<uptime>[\d:]+(?: days?, [\d:]+)?)")


def parse_status(output: str, name: str) -> ProcessStatus:
    """Parse `supervisorctl status NAME` (one line; may be an error message)."""
    for line in output.splitlines():
        m = _STATUS.match(line.strip())
        if not m or m.group("name").split(":")[-1] != name:
            continue
        rest = m.group("rest").strip()
        r = _RUNNING.search(rest)
        return ProcessStatus(name, m.group("state"), int(r.group("pid")) if r else None,
                             r.group("uptime") if r else None, rest)
    return ProcessStatus(name, "UNKNOWN", None, None, output.strip()[:200])
