"""SIGTERM/SIGHUP are handled like Ctrl-C, and a second signal never interrupts the cleanup."""
import os
import signal

import pytest

from deploytools.errors import Interrupted
from deploytools.signals import terminating


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
