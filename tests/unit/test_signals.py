"""SIGTERM/SIGHUP are handled like Ctrl-C, and a second signal never interrupts the cleanup."""
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from deploytools.errors import Interrupted
from deploytools.inventory import each
from deploytools.signals import held, terminating


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_first_signal_raises_interrupted_naming_it(sig):
    with pytest.raises(Interrupted) as info:
        with terminating():
            os.kill(os.getpid(), sig)
            signal.pause()  # the handler raises before this returns
    assert str(info.value) == f"interrupted by {signal.Signals(sig).name}"
    assert isinstance(info.value, KeyboardInterrupt)  # caught where Ctrl-C is


def test_later_signals_are_deferred_while_cleaning_up(capsys):
    cleaned = []
    with terminating():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except Interrupted:
            # The rollback and the lock release run here: more signals must not stop them.
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            cleaned.append("rolled back")
    assert cleaned == ["rolled back"]
    assert capsys.readouterr().err.count("received while stopping after SIGTERM") == 2


def test_handlers_are_restored_afterwards():
    before = signal.getsignal(signal.SIGTERM)
    with terminating():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_held_signal_is_raised_when_the_block_ends():
    done = []
    with pytest.raises(Interrupted) as info:
        with terminating():
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now, and did not raise
                done.append("whole block")
            done.append("after the block")
    assert done == ["whole block"]
    assert info.value.signal_name == "SIGTERM"


def test_each_returns_only_after_every_started_call_ended(monkeypatch):
    """A SIGTERM landing inside Thread.start() (after the thread runs, before the pool
    records it): each must still wait for that call, or it goes on changing its host
    while the caller rolls the host back."""
    started, ended, real_start = [], [], threading.Thread.start

    def start_then_signal(thread):
        real_start(thread)
        if thread.name.startswith("ThreadPoolExecutor") and len(started) < 2:
            time.sleep(0.05)  # the thread has taken its call
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs at the next bytecode

    def slow(target):
        started.append(target.name)
        time.sleep(0.4)
        ended.append(target.name)

    monkeypatch.setattr(threading.Thread, "start", start_then_signal)
    hosts = [SimpleNamespace(name=f"web-{i}") for i in range(3)]
    with pytest.raises(Interrupted):
        with terminating():
            each(hosts, slow, parallel=3)
    assert started and sorted(ended) == sorted(started), (started, ended)
    time.sleep(0.6)
    assert sorted(ended) == sorted(started)  # and none started after each returned
