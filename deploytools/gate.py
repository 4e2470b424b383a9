"""The bake window after a wave: count errors on new and old hosts, ask `health.judge`.

Counts come from each host's gunicorn access log over the window (real user
traffic) plus the tool's own probes (a failed connection is an error). The
probe path is left out of the log counts so probes are not counted twice.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime, timedelta, timezone

import requests

from . import health
from .script import q


def settings_for(service) -> health.GateSettings:
    names = {f.name for f in dataclasses.fields(health.GateSettings)}
    values = {k: v for k, v in dataclasses.asdict(service.gate).items() if k in names}
    return health.GateSettings(**values)


class Prober:
    """Probes every host's health URL at a fixed interval in background threads."""

    def __init__(self, service, hosts: dict, interval: float):
        from .rollout import probe_url
        self.urls = {name: probe_url(service, host) for name, host in hosts.items()}
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
            try:
                ok = session.get(self.urls[name], timeout=self.timeout).status_code < 500
            except requests.RequestException:
                ok = False
            self.samples[name].append((t, ok))
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


def log_counts(fleet, service, names, start: float, end: float) -> health.Counts:
    """Errors and requests in the hosts' access logs in [start, end), probes excluded."""
    from .inventory import each
    begin = datetime.fromtimestamp(int(start), timezone.utc)
    finish = datetime.fromtimestamp(int(end), timezone.utc)  # log times are whole seconds

    def read(t):
        path = f"{service.dir_on(t.host)}/log/access.log"
        return t.run(f"tail -c 8000000 {q(path)} 2>/dev/null || true", what="reading access log").stdout
    out, errors = each([fleet[n] for n in names], read, parallel=service.parallel)
    if errors:
        # An unreadable log is no evidence of health: count the host as failing.
        return health.Counts(len(errors), len(errors))
    total = health.Counts(0, 0)
    for text in out.values():
        total = total + health.count_window(text.splitlines(), begin, finish,
                                            exclude_paths=(service.health.path,))
    return total


def bake(fleet, service, new: list[str], old: list[str], say) -> health.Verdict:
    """Run the bake window for the hosts of a wave; return the final verdict.

    Interim checks can fail early (at the stricter alpha); passing is decided
    only at the end. An inconclusive end extends the bake up to
    `max_extensions` times, then resolves by `on_inconclusive`.
    """
    settings = settings_for(service)
    hosts = {n: fleet[n].host for n in new + old}
    prober = Prober(service, hosts, settings.probe_interval).start()
    try:
        time.sleep(settings.warmup)
        start = time.time()
        deadline = start + settings.bake
        step = max(1.0, settings.bake / 4)
        extensions = 0
        while True:
            now = min(time.time() + step, deadline)
            time.sleep(max(0.0, now - time.time()))
            now = time.time()
            final = now >= deadline
            c = prober.counts(new, start, now) + log_counts(fleet, service, new, start, now)
            b = None
            if old:
                b = prober.counts(old, start, now) + log_counts(fleet, service, old, start, now)
            verdict = health.judge(c, b, settings, final=final)
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
