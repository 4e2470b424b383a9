"""The SSH seam with scripts on stdin: big programs and outputs, timeouts, exit codes."""
from __future__ import annotations

import time

import pytest

from deploytools.config import load
from deploytools.inventory import Fleet

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def target(deployenv):
    cfg = load(str(deployenv.config))
    with Fleet(cfg, ["web-0"]) as fleet:
        yield fleet["web-0"]


def test_a_large_program_and_large_outputs_on_both_streams(target):
    blob = "x" * 1_500_000  # a program far beyond the 128 KiB single-argument limit
    r = target.run(f"v='{blob}'\nprintf '%s' \"${{#v}}\"\n"
                   "head -c 3000000 /dev/zero | tr '\\0' o\nhead -c 2000000 /dev/zero >&2\n")
    assert r.stdout.startswith("1500000") and len(r.stdout) == 7 + 3_000_000
    assert len(r.stderr) == 2_000_000


def test_exit_codes_stdin_and_the_command_line(target):
    assert target.run("exit 7", check=False).exited == 7
    assert target.run("false\necho not-reached", check=False).stdout == ""
    r = target.run("tr '\\0' ' ' < /proc/$$/cmdline; echo\ncat; echo after")
    assert r.stdout.split("\n")[1:] == ["after", ""]
    assert r.stdout.split("\n")[0].strip().endswith("bash -s")


def test_a_timeout_returns_124_in_time_and_the_connection_still_works(target):
    t0 = time.monotonic()
    r = target.run("echo started; sleep 30", check=False, timeout=1.5)
    assert r.exited == 124 and "timed out" in r.stderr
    assert time.monotonic() - t0 < 5
    assert target.run("echo ok").stdout == "ok\n"
