"""Remote shell scripts: values are quoted, never glued; facts come back as `@@` lines.

A step is one compound script per host (one round trip), rendered from
templates/remote/ (`render.render_script`), where every value is quoted at
one edge. Files travel inside the script as base64, so staging a release
needs no extra SFTP calls; the script itself reaches the host on stdin
(`inventory.Target.run`), so neither it nor a file in it is ever in argv.
Scripts report facts back with `@@key value` lines: `facts()` reads the
single-valued ones (the last wins), `fact_list()` the repeated ones.
"""
from __future__ import annotations

import shlex

from . import render

q = shlex.quote


def write_file(path: str, content: str, mode: int) -> str:
    """Bash that writes `content` to `path` atomically with `mode` (0600 from creation)."""
    return render.render_script("write_file.sh.j2", path=path, content=content, mode=mode)


def facts(stdout: str) -> dict[str, str]:
    """Parse `@@key value` lines a script printed (last one wins)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("@@"):
            key, _, value = line[2:].partition(" ")
            out[key] = value.strip()
    return out


def fact_list(stdout: str, key: str) -> list[str]:
    """Every value of a repeated fact (`@@pruned A`, `@@pruned B`), in order."""
    prefix = f"@@{key} "
    return [line[len(prefix):].strip() for line in stdout.splitlines()
            if line.startswith(prefix)]


def guarded(program: str, step: str) -> str:
    """`program` as a step that may fail without stopping the program around it: a
    subshell, still under `set -e` (not `( ... ) || x`, in which bash ignores -e inside
    the subshell, so a failed `cd` would not stop what follows it). A failure prints
    `@@step_failed STEP`."""
    return (f"set +e\n(\nset -e\n{program.rstrip()}\n)\nstep_rc=$?\nset -e\n"
            f"[ \"$step_rc\" = 0 ] || echo {render.shquote('@@step_failed ' + step)}\n")
