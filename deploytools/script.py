"""Building remote shell scripts: values are quoted, never glued.

A step is one compound script per host (one round trip). Files travel inside
the script as base64, so staging a release needs no extra SFTP calls.
Scripts report facts back with `@@key value` lines, parsed by `facts()`.
"""
from __future__ import annotations

import base64
import shlex

q = shlex.quote


def write_file(path: str, content: str, mode: int) -> str:
    """A line that writes `content` to `path` atomically with `mode`."""
    data = base64.b64encode(content.encode()).decode()
    tmp = path + ".tmp"
    return (f"(umask 077; printf %s {q(data)} | base64 -d > {q(tmp)}) && "
            f"chmod {mode:o} {q(tmp)} && mv -f {q(tmp)} {q(path)}")


def facts(stdout: str) -> dict[str, str]:
    """Parse `@@key value` lines a script printed (last one wins)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("@@"):
            key, _, value = line[2:].partition(" ")
            out[key] = value.strip()
    return out
