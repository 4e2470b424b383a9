"""Stopping cleanly when told to: SIGTERM and SIGHUP are handled like Ctrl-C.

A CI runner cancels a job with SIGTERM (then SIGKILL after a grace period), a
closed terminal sends SIGHUP. Inside `terminating()` the first of these (or
SIGINT) raises `Interrupted` in the main thread, where the deploy driver turns
it into a rollback of every touched host, a history record and an unlocked
fleet. Any further signal while that cleanup runs is reported and ignored:
a second Ctrl-C must not abandon a half-done rollback or leave the lock behind.

`held()` keeps the first signal back while a block runs (raised as it ends):
`inventory.each` starts its threads inside it, because an exception raised in
the middle of starting a thread leaves a thread that nobody waits for, which
would then go on changing its host while the rollback restores it.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from .errors import Interrupted

class _Hold(threading.local):
    depth = 0


_hold = _Hold()  # per thread: only the main thread's count matters to the handler
_pending: list[str] = []  # a signal that arrived while the main thread held signals

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
                if s is not None)


@contextmanager
def terminating():
    """Turn the first SIGINT/SIGTERM/SIGHUP into `Interrupted`; defer the rest."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    fired: list[str] = []

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if fired:
            sys.stderr.write(f"deploytools: {name} received while stopping after "
                             f"{fired[0]}; finishing the rollback and releasing the lock "
                             "first (SIGKILL would leave the fleet mixed)\n")
            sys.stderr.flush()
            return
        fired.append(name)
        if _hold.depth:  # the handler runs in the main thread: its own count
            _pending.append(name)
            return
        raise Interrupted(name)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def held():
    """Run the block with a terminating signal held back: it is raised (as
    `Interrupted`) once the block is over, never from inside it. Nests; a no-op
    outside the main thread, where signals are never raised anyway."""
    _hold.depth += 1
    try:
        yield
    finally:
        _hold.depth -= 1
        if not _hold.depth and _pending and threading.current_thread() is threading.main_thread():
            name = _pending.pop()
            _pending.clear()
            raise Interrupted(name)
