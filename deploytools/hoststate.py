"""Facts: what a service looks like on each host, read without changing anything.

`inspect_all` runs one read-only script per host and parses it into a
`HostState`; the choices made from those states (which release a rollback
returns to) are pure functions over them, tested on plain data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import render, supervisor
from .errors import DeployError, errors_text
from .inventory import each


@dataclass
class HostState:
    """What `inspect_script` reports about a service on one host."""
    current: str | None = None
    manifest: dict = field(default_factory=dict)
    releases: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    never_live: list[str] = field(default_factory=list)  # staged, never `current` here
    process: supervisor.ProcessStatus | None = None


def inspect_script(service, dir: str) -> str:
    """Read-only: the live release, the releases on disk, the live manifest, the
    process. `parse_inspect` reads what it prints."""
    return render.render_script("inspect.sh.j2", service=service, dir=dir)


def parse_inspect(stdout: str, service_name: str) -> HostState:
    state = HostState()
    status_lines: list[str] = []  # one per process: a service may run two slots
    for line in stdout.splitlines():
        if not line.startswith("@@"):
            continue
        key, _, value = line[2:].partition(" ")
        value = value.strip()
        if key == "current" and value:
            state.current = value
        elif key == "release":
            state.releases.append(value)
        elif key == "rejected":
            state.rejected.append(value)
        elif key == "never_live":
            state.never_live.append(value)
        elif key == "manifest":
            try:
                state.manifest = json.loads(value)
            except ValueError:
                state.manifest = {}
        elif key == "status":
            status_lines.append(value)
    if status_lines:
        state.process = supervisor.parse_status("\n".join(status_lines), service_name)
    state.releases.sort()
    return state


def inspect_all(service, fleet) -> dict[str, HostState]:
    """Every host's state of `service` (read only); any unreachable host is an error."""
    def inspect(t):
        r = t.run(inspect_script(service, service.dir_on(t.host)), what="inspecting")
        return parse_inspect(r.stdout, service.name)
    states, errors = each(fleet, inspect, parallel=service.parallel)
    if errors:
        raise DeployError("could not reach every host; nothing was changed:\n"
                          + errors_text(errors))
    return states


def commit_of(release: str) -> str:
    """The short commit a release name ends with: 20261126T101500Z-abc1234 -> abc1234."""
    return release.rsplit("-", 1)[-1]


@dataclass(frozen=True)
class RollbackChoice:
    release: str | None  # None: no release qualifies (see why)
    why: str


def fleet_rollback_target(states: dict[str, HostState]) -> RollbackChoice:
    """The one release the whole fleet goes back to, never one per host.

    Uniform fleet (every host on C): the newest release older than C, with
    another commit, on disk on every host, rejected on none, and live once on
    every host (a release that a failed deploy staged and never switched to is
    not "the previous release"; releases staged before that was recorded count
    as live).
    Mixed fleet (a deploy died half way, or went to some hosts only): the
    release live everywhere before it, i.e. the newest release no newer than
    the oldest live one, on disk everywhere, rejected nowhere, live once
    everywhere; the hosts already on it stay there.
    """
    live = {h: st for h, st in states.items() if st.current}
    if not live:
        return RollbackChoice(None, "nothing is deployed on any of these hosts")
    common = set.intersection(*(set(st.releases) for st in live.values()))
    # Rejected (a failed gate) or never live (staged by a deploy that failed before
    # switching to it) on any host: not a release to go back to.
    excluded = set().union(*(set(st.rejected) | set(st.never_live) for st in live.values()))
    currents = {st.current for st in live.values()}
    oldest = min(currents)
    if len(currents) == 1:
        older = sorted(r for r in common - excluded
                       if r < oldest and commit_of(r) != commit_of(oldest))
        if not older:
            return RollbackChoice(None, f"every host is on {oldest} and no earlier release "
                                        "that was live is on disk on all of them")
        return RollbackChoice(older[-1], f"every host is on {oldest}; {older[-1]} is the "
                                         "newest earlier release on every host")
    by_release: dict[str, list[str]] = {}
    for h, st in live.items():
        by_release.setdefault(st.current, []).append(h)
    mixed = "; ".join(f"{', '.join(hs)} on {r}" for r, hs in sorted(by_release.items()))
    candidates = sorted(r for r in common - excluded if r <= oldest)
    if not candidates:
        return RollbackChoice(None, f"the fleet is mixed ({mixed}) and no release up to "
                                    f"{oldest} is on disk on every host")
    return RollbackChoice(candidates[-1], f"the fleet is mixed ({mixed}); {candidates[-1]} "
                                          "was live on every host before the newer release")
