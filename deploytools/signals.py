"""Stopping cleanly when told to: SIGTERM and SIGHUP are handled like Ctrl-C.

A CI runner cancels a job with SIGTERM (then SIGKILL after a grace period), a
closed terminal sends SIGHUP. Inside `terminating()` the first of these (or
SIGINT) raises `Interrupted` in the main thread, where the deploy driver turns
it into a rollback of every touched host, a history record and an unlocked
fleet. Any further signal while that cleanup runs is reported and ignored:
a second Ctrl-C must not abandon a half-done rollback or leave the lock behind.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from .errors import Interrupted

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
        raise Interrupted(name)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
