"""Staging in the lock's round trip: the lock's output cut into the inspection and the
staging, and the lock's first host letting the others go as soon as it has its lock."""
import os
import signal
import threading
import time

import pytest

from deploytools.errors import Interrupted
from deploytools.inventory import Fleet
from deploytools.lock import FleetLock
from deploytools.rollout import split_folded
from deploytools.signals import terminating


def test_split_folded_cuts_each_output_at_the_marker():
    outs = {
        "web-0": "@@lock acquired\n@@current R1\n@@release R1\n@@folded_stage begin\n"
                 "@@release staged\n@@venv reused abc\n@@folded_stage end\n",
        "web-1": "@@lock acquired\n@@current R0\n",  # another live commit: did not stage
    }
    inspected, folded = split_folded(outs)
    assert inspected == {"web-0": "@@lock acquired\n@@current R1\n@@release R1\n",
                         "web-1": "@@lock acquired\n@@current R0\n"}
    # The inspection never sees the staging's `@@release staged` as a release named so.
    assert folded == {"web-0": "@@release staged\n@@venv reused abc\n@@folded_stage end\n"}


def test_the_others_are_locked_while_the_first_host_runs_its_then(local_pair):
    """`then` of the first host (the staging) still runs when the others take theirs:
    the lock's first step costs one lock, not one staging, of wall time."""
    fleet = Fleet(local_pair, ["h0", "h1"])
    service = local_pair.service("svc")
    began: dict[str, float] = {}
    cls = type(fleet["h0"])
    real_run = cls.run

    def run(self, script, **kw):
        began.setdefault(self.name, time.monotonic())
        return real_run(self, script, **kw)

    lock = FleetLock(fleet, service, "deploy", then=lambda t: (
        "sleep 1\necho then-ran\n" if t.name == "h0" else "echo then-ran\n"))
    cls.run = run
    try:
        t0 = time.monotonic()
        lock.acquire()
        took = time.monotonic() - t0
        try:
            assert lock.held == ["h0", "h1"]
            assert all("then-ran" in out for out in lock.outputs.values())
            # h1 was locked while h0 still slept in its `then`
            assert began["h1"] - began["h0"] < 0.8, began
            assert took >= 1.0
        finally:
            lock.release()
    finally:
        cls.run = real_run
        fleet.close()


def test_a_signal_while_the_others_are_locked_leaves_no_lock(local_pair, tmp_path):
    """SIGTERM while h1 runs its lock program (with a slow `then`, as a staging is):
    acquire() raises Interrupted and no host keeps a lock file."""
    fleet = Fleet(local_pair, ["h0", "h1"])
    service = local_pair.service("svc")
    lock = FleetLock(fleet, service, "deploy",
                     then=lambda t: "sleep 0.6\n" if t.name == "h1" else "")
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        with pytest.raises(Interrupted):
            with terminating():
                timer.start()
                lock.acquire()
        assert lock.held == []
        assert not (tmp_path / "h0" / "svc" / ".lock").exists()
        assert not (tmp_path / "h1" / "svc" / ".lock").exists()
    finally:
        timer.cancel()
        fleet.close()
