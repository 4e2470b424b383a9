"""A small, bounded HTTP load generator for the system tests and benchmarks.

    with LoadGen(["http://127.0.0.11:8100/", ...], threads=8, duration=60) as load:
        ...                      # deploy while every URL gets steady traffic
    print(load.stats.summary())  # requests, failures, status codes, latency

Each thread sends GETs round-robin over the URLs (thread i starts at URL i,
so every host gets its share) until the duration is over, `max_requests`
have been sent, or `stop()` is called: it always stops by itself. `rate`
caps the total requests per second, so the load can be kept below what the
machine can serve (a saturated host answers slowly, and a slow health probe
is a failed one). A failure is a connection error, a timeout (30 s by
default: a slow answer on a busy machine is not a lost request) or a 5xx;
4xx answers are counted by status but are not failures.

Run by hand:  python tests/loadgen.py URL [URL ...] --duration 10 --threads 4
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import requests


@dataclass
class Stats:
    """What the load generator saw. Updated under a lock while it runs."""

    requests: int = 0
    failures: int = 0  # connection errors + timeouts + 5xx
    connection_errors: int = 0  # refused, reset, timed out: no HTTP answer at all
    statuses: collections.Counter = field(default_factory=collections.Counter)
    per_url: dict = field(default_factory=dict)  # url -> {"requests": n, "failures": n}
    latencies: list = field(default_factory=list)  # seconds, answered requests only
    errors: list = field(default_factory=list)  # first few failure descriptions
    started: float = 0.0
    elapsed: float = 0.0

    def percentile(self, q: float) -> Optional[float]:
        """Latency at quantile q (0..1) by the nearest-rank method, or None without data."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
        return ordered[rank - 1]

    def summary(self) -> dict:
        ms = {f"p{int(q * 100)}_ms": (None if self.percentile(q) is None
                                       else round(self.percentile(q) * 1000, 1))
              for q in (0.5, 0.95, 0.99)}
        return {
            "requests": self.requests, "failures": self.failures,
            "connection_errors": self.connection_errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "seconds": round(self.elapsed, 1),
            "rps": round(self.requests / self.elapsed, 1) if self.elapsed else 0.0,
            **ms,
            "max_ms": round(max(self.latencies) * 1000, 1) if self.latencies else None,
            "per_url": self.per_url,
            "first_errors": self.errors[:5],
        }


class LoadGen:
    """Threads sending GETs to `urls`; bounded by `duration` seconds and `max_requests`."""

    def __init__(self, urls: list[str], *, threads: int = 4, duration: float = 60.0,
                 max_requests: Optional[int] = None, rate: Optional[float] = None,
                 timeout: float = 30.0):
        if not urls:
            raise ValueError("LoadGen needs at least one URL")
        if threads < 1 or duration <= 0:
            raise ValueError("LoadGen needs threads >= 1 and duration > 0")
        self.urls = list(urls)
        self.threads = threads
        self.duration = duration
        self.max_requests = max_requests
        self.rate = rate
        self.timeout = timeout
        self.stats = Stats(per_url={u: {"requests": 0, "failures": 0} for u in self.urls})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = itertools.count()  # tickets: thread-safe in CPython
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"loadgen-{i}") for i in range(threads)]

    # -- running ---------------------------------------------------------------
    def start(self) -> "LoadGen":
        self.stats.started = time.monotonic()
        self._deadline = self.stats.started + self.duration
        for w in self._workers:
            w.start()
        return self

    def stop(self) -> Stats:
        """Stop sending (requests in flight finish) and return the final stats."""
        self._stop.set()
        return self.wait()

    def wait(self) -> Stats:
        """Wait until the load ends by itself (duration or max_requests) and return the stats."""
        for w in self._workers:
            w.join(self.duration + self.timeout + 5)
        self.stats.elapsed = time.monotonic() - self.stats.started
        return self.stats

    def __enter__(self) -> "LoadGen":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, index: int) -> None:
        session = requests.Session()
        urls = itertools.islice(itertools.cycle(self.urls), index % len(self.urls), None)
        # Each thread's share of the rate: one request every `gap` seconds.
        gap = self.threads / self.rate if self.rate else 0.0
        next_at = time.monotonic() + (gap * index / self.threads)
        while not self._stop.is_set():
            if gap:
                pause = next_at - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    break
                next_at = max(next_at + gap, time.monotonic() - gap)
            if time.monotonic() >= self._deadline:
                break
            ticket = next(self._sent)
            if self.max_requests is not None and ticket >= self.max_requests:
                break
            self._one(session, next(urls))

    def _one(self, session: requests.Session, url: str) -> None:
        t0 = time.monotonic()
        status: object
        try:
            r = session.get(url, timeout=self.timeout)
            status, failed, conn = r.status_code, r.status_code >= 500, False
        except requests.RequestException as e:
            status, failed, conn = type(e).__name__, True, True
        took = time.monotonic() - t0
        with self._lock:
            s = self.stats
            s.requests += 1
            s.statuses[status] += 1
            s.per_url[url]["requests"] += 1
            if not conn:
                s.latencies.append(took)
            if failed:
                s.failures += 1
                s.connection_errors += conn
                s.per_url[url]["failures"] += 1
                if len(s.errors) < 20:
                    s.errors.append(f"{time.strftime('%H:%M:%S')} {url}: {status}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--rate", type=float, help="total requests per second (default: as fast as possible)")
    args = parser.parse_args(argv)
    load = LoadGen(args.urls, threads=args.threads, duration=args.duration,
                   max_requests=args.max_requests, rate=args.rate).start()
    stats = load.wait()
    print(json.dumps(stats.summary(), indent=2))
    return 1 if stats.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
