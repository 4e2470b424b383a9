"""Waves are data in, data out: each case is a fleet, a rollout and the wave sizes expected."""
import pytest

from deploytools.waves import DEFAULT_ROLLOUT, compute_waves, parse_rollout


def fleet(n):
    return [f"web-{i}" for i in range(n)]


DEFAULT = [1, "50%", "100%"]

SIZES = [
    # hosts, rollout, sizes of the waves
    (1, DEFAULT, [1]),
    (2, DEFAULT, [1, 1]),  # 50% of 2 is the canary itself: that wave collapses
    (3, DEFAULT, [1, 1, 1]),  # 50% of 3 rounds up to 2
    (4, DEFAULT, [1, 1, 2]),
    (7, DEFAULT, [1, 3, 3]),
    (100, DEFAULT, [1, 49, 50]),
    (1, [2, "100%"], [1]),
    (2, [2, "100%"], [2]),
    (3, [2, "100%"], [2, 1]),
    (4, [2, "100%"], [2, 2]),
    (7, [2, "100%"], [2, 5]),
    (100, [2, "100%"], [2, 98]),
    (1, ["25%", "50%", "100%"], [1]),
    (2, ["25%", "50%", "100%"], [1, 1]),
    (3, ["25%", "50%", "100%"], [1, 1, 1]),
    (4, ["25%", "50%", "100%"], [1, 1, 2]),
    (7, ["25%", "50%", "100%"], [2, 2, 3]),
    (100, ["25%", "50%", "100%"], [25, 25, 50]),
    (1, [1, 1, "100%"], [1]),
    (4, [1, 1, "100%"], [1, 3]),
    (7, [1, 1, "100%"], [1, 6]),
    (100, [1, 1, "100%"], [1, 99]),
    # A last target below 100% still finishes the fleet.
    (4, [1, "50%"], [1, 1, 2]),
    (100, ["10%"], [10, 90]),
    (7, [3], [3, 4]),
    # Targets beyond the fleet are capped; decreasing targets collapse.
    (3, [5, "100%"], [3]),
    (7, [3, 1, "100%"], [3, 4]),
    (100, ["12.5%", "100%"], [13, 87]),
    (7, ["100%"], [7]),
    (0, DEFAULT, []),
]


@pytest.mark.parametrize("n, rollout, sizes", SIZES)
def test_wave_sizes(n, rollout, sizes):
    waves = compute_waves(fleet(n), rollout)
    assert [len(w) for w in waves] == sizes
    # Every host exactly once, in the order given.
    assert [h for w in waves for h in w] == fleet(n)


def test_hosts_keep_their_order():
    hosts = ["db-9", "web-3", "app-1", "web-0"]
    assert compute_waves(hosts, DEFAULT) == [["db-9"], ["web-3"], ["app-1", "web-0"]]


def test_default_rollout_is_used_when_none():
    assert DEFAULT_ROLLOUT == DEFAULT
    assert compute_waves(fleet(4)) == compute_waves(fleet(4), DEFAULT)


def test_duplicate_hosts_are_refused():
    with pytest.raises(ValueError, match="web-1"):
        compute_waves(["web-0", "web-1", "web-1"], DEFAULT)


@pytest.mark.parametrize("value, parsed", [
    ([1, "50%", "100%"], [1, "50%", "100%"]),
    ((2, "100%"), [2, "100%"]),
    ("1,50%,100%", [1, "50%", "100%"]),
    (" 1 , 50 % ,100%", [1, "50%", "100%"]),
    (["3", "12.5%"], [3, "12.5%"]),
    ([1, "50"], [1, 50]),  # a bare number is a host count, not a share
    ([3, 1], [3, 1]),  # decreasing is allowed: compute_waves collapses it
])
def test_parse_rollout_accepts(value, parsed):
    assert parse_rollout(value) == parsed


@pytest.mark.parametrize("value, named", [
    ([0, "100%"], "0"),
    (["0"], "0"),
    ([-1], "-1"),
    (["150%"], "150%"),
    (["0%"], "0%"),
    (["abc"], "abc"),
    ([1.5], "1.5"),
    ([True], "True"),
    (["-5%"], "-5%"),
    ([], "empty"),
    ("", "''"),
    (None, "None"),
    ({"a": 1}, "a"),
])
def test_parse_rollout_names_the_bad_item(value, named):
    with pytest.raises(ValueError) as info:
        parse_rollout(value)
    assert named in str(info.value)


def test_compute_waves_validates_rollout():
    with pytest.raises(ValueError, match="150%"):
        compute_waves(fleet(4), [1, "150%"])
