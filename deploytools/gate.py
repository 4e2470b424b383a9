"""The bake window after a wave: count errors on new and old hosts, ask `health.judge`.

Counts come from each host's gunicorn access log over the window (real user
traffic) plus the tool's own probes (a failed connection is an error). The
probe path is left out of the log counts so probes are not counted twice.

The window opens when the warm-up ends and lasts `bake` seconds, to the
fraction (no rounding to whole seconds). Its log evidence is every line after
the byte each host's log had reached when the window opened, up to the read:
the window is cut by offsets, not by the lines' one-second timestamps, so
the warm-up is never counted, a host's clock does not matter, and a busy host
cannot outgrow a fixed tail. The probes count over the same [start, end). An
access log that cannot be read fails the gate: no evidence is not evidence of
health.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import requests

from . import health, lb, probe
from .errors import DeployError, HealthGateFailed, fleet_failure
from .inventory import each


class Prober:
    """Probes every host's health URL at a fixed interval in background threads."""

    def __init__(self, service, hosts: dict, interval: float):
        self.service = service
        self.hosts = hosts
        self.interval = interval
        self.timeout = min(2.0, service.health.timeout)
        self.samples: dict[str, list[tuple[float, bool]]] = {n: [] for n in hosts}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True)
                         for n in hosts]

    def _loop(self, name: str) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            t = time.time()
            ok = probe.probe(self.service, self.hosts[name], timeout=self.timeout,
                             session=session).ok
            # Stamped when the answer came, as gunicorn stamps its access-log lines.
            self.samples[name].append((time.time(), ok))
            self._stop.wait(max(0.0, self.interval - (time.time() - t)))

    def start(self) -> "Prober":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def counts(self, names, start: float, end: float) -> health.Counts:
        total = health.Counts(0, 0)
        for n in names:
            window = [ok for t, ok in list(self.samples[n]) if start <= t < end]
            total = total + health.Counts(sum(1 for ok in window if not ok), len(window))
        return total


def complete_lines(data: bytes) -> tuple[list[str], int]:
    """The whole lines in `data` (a log's bytes from a read's start) and how many bytes
    they take: a line still being written is left for the next read."""
    n = data.rfind(b"\n") + 1
    return data[:n].decode("utf-8", "replace").splitlines(), n


class AccessLogs:
    """The hosts' access logs, read from where each one stood when the window opened.
    Each check reads only what was logged since the previous one (`read_to`) and adds
    it up (`seen`): a bake costs its traffic once, however many checks it makes. The
    reads go through the host's SFTP session (`Target.read_growing`): no process on
    the host for any of them, where a program per read started about ten (14 ms of the
    host's CPU, every host, every check)."""

    def __init__(self, fleet, service, names):
        self.fleet, self.service = fleet, service
        sizes = self._each(names, lambda t, path: t.read_growing(path, None), "sizing")
        self.offsets = {n: size for n, (size, _, _) in sizes.items()}
        self.read_to = dict(self.offsets)
        self.seen = {n: health.Counts(0, 0) for n in names}

    def _path(self, t) -> str:
        return f"{self.service.dir_on(t.host)}/{self.service.access_log}"  # kind command: its output

    def _each(self, names, read, what: str) -> dict:
        out, errors = each([self.fleet[n] for n in names],
                           lambda t: read(t, self._path(t)), parallel=self.service.parallel)
        if errors:
            # No evidence fails the gate; a host that cannot be reached at all is not
            # the release's fault, and says so (the release is not marked rejected).
            said = "; ".join(f"{n}: {e.message if isinstance(e, DeployError) else e}"
                             for n, e in errors.items())
            raise fleet_failure(errors, f"cannot read the access log ({what}), so the gate "
                                f"has no evidence: {said}", HealthGateFailed)
        return out

    def counts(self, names) -> dict[str, health.Counts]:
        """Each host's errors and requests logged since the window opened (the offsets),
        probes (the health path) excluded."""
        reads = self._each(names, lambda t, path: t.read_growing(path, self.read_to[t.name]),
                           "reading")
        for n, (_, start, data) in reads.items():
            lines, used = complete_lines(data)
            self.read_to[n] = start + used
            self.seen[n] = self.seen[n] + health.count_lines(
                lines, exclude_paths=(self.service.health.path,))
        return {n: self.seen[n] for n in names}


class HAProxyCounts:
    """`gate.source: haproxy`: each host's requests and errors (5xx answers, connection
    and response errors) counted by HAProxy since this object was made. The same
    interface as AccessLogs; the window runs from the snapshot to each call."""

    def __init__(self, service, config, names: list[str]):
        self.service, self.config = service, config
        self.base = self._read(names)

    def _read(self, names: list[str]) -> dict[str, dict[str, int]]:
        try:
            with lb.connect(self.service, self.config) as balancer:
                return balancer.counters(names)
        except DeployError as e:
            raise HealthGateFailed("cannot read HAProxy's counters, so the gate has no "
                                   f"evidence: {e}") from None

    def counts(self, names) -> dict[str, health.Counts]:
        now = self._read(list(names))
        out = {}
        for n in names:
            a, b = self.base.get(n, {}), now[n]
            errors = sum(b[k] - a.get(k, 0) for k in ("hrsp_5xx", "econ", "eresp"))
            out[n] = health.Counts(max(0, errors), max(0, b["requests"] - a.get("requests", 0)))
        return out


def pool(counts: dict, names) -> health.Counts:
    """The counts of `names` added up (hosts of a wave, log plus probes)."""
    return sum((counts[n] for n in names), health.Counts(0, 0))


def per_host(log: dict, probes: dict) -> dict:
    """{host: {"log": [errors, requests], "probes": [errors, requests]}}, for the record."""
    return {n: {"log": [log[n].errors, log[n].requests],
                "probes": [probes[n].errors, probes[n].requests]} for n in log}


def bake(fleet, service, new: list[str], old: list[str], say) -> health.Verdict:
    """Run the bake window for the hosts of a wave; return the final verdict.

    Interim checks can fail early (at the stricter alpha); passing is decided
    only at the end. An inconclusive end extends the bake up to
    `max_extensions` times, then resolves by `on_inconclusive`.
    """
    settings = service.gate
    hosts = {n: fleet[n].host for n in new + old}
    prober = Prober(service, hosts, settings.probe_interval).start()
    try:
        time.sleep(settings.warmup)
        # Where each log (or HAProxy's counters) stands now: what comes after is the window.
        if settings.source == "logs":
            logs = AccessLogs(fleet, service, new + old)
        else:
            logs = HAProxyCounts(service, fleet.config, new + old)
        # The window's clock starts once every offset is known: a slow round trip must not
        # eat into the bake (the lines logged while it ran count, a little early).
        start = time.time()
        deadline = start + settings.bake
        step = max(1.0, settings.bake / 4)
        extensions = 0
        while True:
            time.sleep(max(0.0, min(time.time() + step, deadline) - time.time()))
            end = time.time()
            final = end >= deadline
            log = logs.counts(new + old)
            probes = {n: prober.counts([n], start, end) for n in new + old}
            c = pool(log, new) + pool(probes, new)
            b = pool(log, old) + pool(probes, old) if old else None
            verdict = health.judge(c, b, settings, final=final)
            verdict = dataclasses.replace(verdict, figures={
                **verdict.figures, "window": [round(start, 3), round(end, 3)],
                "hosts": per_host(log, probes)})
            if verdict.outcome == "fail":
                return verdict
            if final:
                action = health.next_step(verdict, extensions, settings)
                if action == "extend":
                    extensions += 1
                    deadline += settings.bake
                    say("gate_extend", f"    inconclusive, extending the bake ({verdict.reason})",
                        figures=verdict.figures)
                    continue
                if action == "rollback" and verdict.outcome != "fail":
                    return dataclasses.replace(
                        verdict, outcome="fail",
                        reason=f"inconclusive after {extensions} extension(s) and "
                               f"on_inconclusive is rollback: {verdict.reason}")
                if action == "proceed" and verdict.outcome == "inconclusive":
                    say("gate_warning", "    WARNING: the gate was inconclusive; proceeding "
                                        "because on_inconclusive is proceed", figures=verdict.figures)
                return verdict
    finally:
        prober.stop()
