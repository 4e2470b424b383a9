"""Run `deploytools ARGS` counting its SSH round trips per host (an instrumented run).

    python benchmarks/roundtrips.py OUT.json deploy:skiff,ref=v2 --json

Every program sent to a host (`Target.run`, so one channel and one `bash -s`), and
every file put or read (`put`, `get`, and the gate's `read_growing` of an access log:
a few SFTP requests), is one round trip. Each is filed under the phase it ran in:
`bake` (inside the gate's bake window, where the access logs are read), `heartbeat`
(the lock's background beat, which only a deploy longer than its interval sees) or
`release` (everything else: what the bar "at most 3 per host" counts). OUT.json gets
{host: {phase: count}} and the `what` of each round trip, in order.
"""
from __future__ import annotations

import json
import sys
import threading
from collections import defaultdict
from pathlib import Path

# The deploytools of this checkout, whatever is installed (a script's own folder, not the
# checkout, is what Python puts first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploytools import gate, inventory  # noqa: E402
from deploytools.cli import program  # noqa: E402

_lock = threading.Lock()
_in_bake = threading.Event()
counts: dict = defaultdict(lambda: defaultdict(int))
trace: list = []


def _phase(what: str) -> str:
    if what == "lock heartbeat":
        return "heartbeat"
    return "bake" if _in_bake.is_set() else "release"


def _count(name: str, what: str) -> None:
    phase = _phase(what)
    with _lock:
        counts[name][phase] += 1
        trace.append([name, phase, what])


_run = inventory.Target.run


def run(self, script, *, check=True, timeout=None, what="", on_line=None):
    _count(self.name, what or script.splitlines()[0][:60])
    return _run(self, script, check=check, timeout=timeout, what=what, on_line=on_line)


def _wrap(cls, attr):
    real = getattr(cls, attr)

    def wrapped(self, *a, **kw):
        _count(self.name, attr)
        return real(self, *a, **kw)
    setattr(cls, attr, wrapped)


_bake = gate.bake


def bake(*a, **kw):
    _in_bake.set()
    try:
        return _bake(*a, **kw)
    finally:
        _in_bake.clear()


def main() -> None:
    out = sys.argv[1]
    inventory.Target.run = run
    for cls in (inventory.SSHTarget, inventory.LocalTarget):
        for attr in ("put", "get", "stream", "read_growing"):
            if attr in vars(cls):
                _wrap(cls, attr)
    gate.bake = bake
    try:
        program.run(["deploytools"] + sys.argv[2:])
    finally:
        with open(out, "w") as f:
            json.dump({"counts": counts, "trace": trace}, f, indent=1)


if __name__ == "__main__":
    main()
