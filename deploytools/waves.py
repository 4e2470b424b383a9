"""Which hosts go live in which wave: pure code over a host list, no I/O.

A deploy activates a release on a small canary first and widens only after
each wave has passed its health gate, so that a bad release reaches as few
users as possible. `rollout` (services.yaml, default ``[1, "50%", "100%"]``)
lists *cumulative* targets: an int is a number of hosts, ``"N%"`` a share of
the fleet rounded up (so a percentage never rounds a wave away to nothing).

    >>> compute_waves(["web-0", "web-1", "web-2", "web-3"], [1, "50%", "100%"])
    [['web-0'], ['web-1'], ['web-2', 'web-3']]

Targets that add no host (``[1, 1, ...]``, or 50% of a 2-host fleet after a
1-host canary) collapse: an empty wave would bake for nothing. The last wave
always reaches every host, whatever the last target says, because a deploy
that stops at 80% leaves the fleet running two releases with nobody deciding
to finish it.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Sequence, Union

Target = Union[int, str]

DEFAULT_ROLLOUT: list[Target] = [1, "50%", "100%"]

# "50%", "12.5%", " 100 % ": a decimal share of the fleet (services.yaml `rollout` too).
PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_COUNT = re.compile(r"^\s*\d+\s*$")


def parse_rollout(value: object) -> list[Target]:
    """Validate rollout targets; return them as ints (host counts) and "N%" strings.

    Accepts a list (from YAML) or a comma-separated string (from the command
    line, e.g. ``"1,50%,100%"``). Raises ValueError naming the bad item.
    """
    if isinstance(value, str):
        items: Sequence[object] = [part for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise ValueError(f"rollout must be a list like [1, \"50%\", \"100%\"], not {value!r}")
    if not items:
        raise ValueError("rollout is empty: give at least one target, e.g. [\"100%\"]")
    return [_parse_target(item) for item in items]


def _parse_target(item: object) -> Target:
    # bool is an int subclass; `true` in YAML is a mistake, not one host.
    if isinstance(item, int) and not isinstance(item, bool):
        if item <= 0:
            raise ValueError(f"rollout target {item!r} must be a positive host count")
        return item
    if isinstance(item, str):
        if _COUNT.match(item):
            return _parse_target(int(item))
        match = PERCENT.match(item)
        if match:
            share = Fraction(match.group(1))
            if not 0 < share <= 100:
                raise ValueError(
                    f"rollout target {item!r} must be a share above 0% and at most 100%")
            return f"{match.group(1)}%"
    raise ValueError(
        f"rollout target {item!r} is neither a host count (e.g. 2) nor a percentage (e.g. \"50%\")"
    )


def _hosts_for(target: Target, fleet: int) -> int:
    if isinstance(target, int):
        return min(target, fleet)
    # Fraction, not float: 7 * 100% must be exactly 7, never 7.000000001 -> 8.
    return math.ceil(Fraction(target.rstrip("%")) * fleet / 100)


def compute_waves(hosts: list[str], rollout: list[Target] | None = None) -> list[list[str]]:
    """Split `hosts` (kept in order) into waves following cumulative `rollout` targets.

    Empty waves are dropped and the last wave always ends with every host.
    """
    if len(set(hosts)) != len(hosts):
        dupes = sorted({h for h in hosts if hosts.count(h) > 1})
        raise ValueError(f"hosts listed more than once: {', '.join(dupes)}")
    targets = parse_rollout(DEFAULT_ROLLOUT if rollout is None else rollout)
    waves: list[list[str]] = []
    done = 0
    for target in targets:
        # A target below what is already live (e.g. [3, 1]) adds nothing.
        upto = max(done, _hosts_for(target, len(hosts)))
        if upto > done:
            waves.append(hosts[done:upto])
            done = upto
    if done < len(hosts):
        waves.append(hosts[done:])
    return waves
