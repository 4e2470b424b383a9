"""Who owns a service's listening socket, and so whether its restarts drop requests.

`inherit`: supervisord owns the socket (an `[fcgi-program]` with two slots) and
hands it to the program as fd 0; a restart goes one slot at a time (`bin/ctl
restart-program`), so some process is always accepting and the socket is never
closed: no connection is refused or reset. The WSGI kinds always inherit
(gunicorn binds `fd://0`); kind command opts in with `socket: inherit` when the
program can serve a listening socket it finds on fd 0.

`bind`: the program binds its own port (kind command by default). A restart
stops it and starts it again: connections are refused until it listens again,
and the tool says so when it restarts one.
"""
from __future__ import annotations

from . import render

def inherits(service) -> bool:
    """Does supervisord hold the service's socket (`socket: inherit`)?"""
    return service.socket == "inherit"


def target(service) -> str:
    """The supervisorctl name of all the service's processes: `NAME:*` (a group of two
    slots, or the one process of a plain program)."""
    return f"{service.name}:*"


def restart_needed_script(service, dir: str, release: str | None) -> str:
    """Read-only: will activating `release` restart the program rather than reload it?
    Prints `@@restart yes|no`."""
    if release is None or service.reload_signal == "restart":
        return "echo '@@restart yes'\n"
    return render.render_script("restart_needed.sh.j2", dir=dir, release=release)
