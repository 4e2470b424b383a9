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
    """Parse `supervisorctl status NAME:*`: one line per process (may be an error message).

    A plain program is one line (`NAME` or `NAME:NAME`); a service whose socket
    supervisord holds runs two slots (`NAME:NAME_0`, `NAME:NAME_1`), summed up as
    one status: RUNNING only when every slot is, else the first slot that is not.
    """
    slot = re.compile(rf"(?:{re.escape(name)}:)?{re.escape(name)}(?:_\d+)?")
    found: list[ProcessStatus] = []
    for line in output.splitlines():
        m = _STATUS.match(line.strip())
        if not m or not slot.fullmatch(m.group("name")):
            continue
        rest = m.group("rest").strip()
        r = _RUNNING.search(rest)
        found.append(ProcessStatus(name, m.group("state"), int(r.group("pid")) if r else None,
                                   r.group("uptime") if r else None, rest))
    if not found:
        return ProcessStatus(name, "UNKNOWN", None, None, output.strip()[:200])
    return next((p for p in found if p.state != "RUNNING"), found[0])
