"""The choices made from host facts: which release a fleet rolls back to, and the probe rule."""
import pytest

from deploytools.hoststate import HostState, fleet_rollback_target
from deploytools.probe import accepts

R1, R2, R3, R4 = ("20261101T000000Z-aaaaaaa", "20261102T000000Z-bbbbbbb",
                  "20261103T000000Z-ccccccc", "20261104T000000Z-ddddddd")


def st(current, releases=(R1, R2, R3), rejected=(), never_live=()):
    return HostState(current=current, releases=sorted(releases), rejected=list(rejected),
                     never_live=list(never_live))


@pytest.mark.parametrize("states, want, why", [
    # Uniform fleet: the newest earlier release everywhere.
    ({"a": st(R3), "b": st(R3)}, R2, "every host is on"),
    # A deploy killed in wave 2: a on R3, b still on R2. Back to R2 everywhere, not R2/R1.
    ({"a": st(R3), "b": st(R2)}, R2, "mixed"),
    # Three releases in play: the oldest live one bounds the choice.
    ({"a": st(R4, (R1, R2, R3, R4)), "b": st(R3, (R1, R2, R3, R4)), "c": st(R2)}, R2, "mixed"),
    # The newest earlier release is missing on one host: go to one that all have.
    ({"a": st(R3), "b": st(R3, (R1, R3))}, R1, "every host is on"),
    # A rejected release (failed gate) is never a target, whichever host marked it.
    ({"a": st(R3, rejected=(R2,)), "b": st(R3)}, R1, "every host is on"),
    # A release a failed deploy staged and never switched to is not the previous one,
    # whichever host says so (R2 staged, the deploy failed; then R3 went live).
    ({"a": st(R3, never_live=(R2,)), "b": st(R3, never_live=(R2,))}, R1, "every host is on"),
    ({"a": st(R3), "b": st(R3, never_live=(R2,))}, R1, "every host is on"),
    # Mixed: a deploy of R3 killed after the canary; R3 was staged on b, never live there.
    ({"a": st(R3, never_live=()), "b": st(R2, never_live=(R3,))}, R2, "mixed"),
    # The same commit redeployed is not a rollback target.
    ({"a": st("20261105T000000Z-ccccccc", (R1, R3, "20261105T000000Z-ccccccc"))}, R1, ""),
    # A host with nothing deployed does not block the others.
    ({"a": st(R3), "b": HostState()}, R2, "every host is on"),
])
def test_fleet_rollback_target_is_one_release_for_every_host(states, want, why):
    choice = fleet_rollback_target(states)
    assert choice.release == want, choice.why
    assert why in choice.why


@pytest.mark.parametrize("states, why", [
    ({"a": HostState(), "b": HostState()}, "nothing is deployed"),
    ({"a": st(R1, (R1,))}, "no earlier release"),
    ({"a": st(R3, (R3,)), "b": st(R2, (R2,))}, "mixed"),
])
def test_fleet_rollback_target_says_why_there_is_none(states, why):
    choice = fleet_rollback_target(states)
    assert choice.release is None
    assert why in choice.why


@pytest.mark.parametrize("expect, status, ok", [
    (200, 200, True), (200, 204, False), (204, 204, True), (200, 503, False),
    ("2xx", 200, True), ("2xx", 299, True), ("2xx", 301, False), ("2xx", 500, False),
])
def test_probe_honours_expect_status(expect, status, ok):
    assert accepts(expect, status) is ok
