"""The one health probe: GET the service's health path on a host, judged by
`health.expect_status`.

Readiness after an activation (`wait_healthy`), the gate's background probes
(`gate.Prober`), `status` and `monitor` all ask this module, so a host is
healthy by one rule everywhere.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from .errors import HealthGateFailed


def url(service, host) -> str:
    """The health URL of `service` on `host`: its address and the service's port."""
    port = service.bind.rsplit(":", 1)[1] if service.bind else service.port
    return f"http://{host.address}:{port}{service.health.path}"


def accepts(expect_status: int | str, status: int) -> bool:
    """Does `status` satisfy `health.expect_status` (a code, or "2xx")?"""
    if expect_status == "2xx":
        return 200 <= status <= 299
    return status == expect_status


@dataclass(frozen=True)
class Seen:
    ok: bool
    what: str  # "HTTP 200", "HTTP 503 (expected 200)", "no answer (ConnectTimeout)"

    def __iter__(self):  # ok, what = probe(...)
        return iter((self.ok, self.what))


def probe(service, host, *, timeout: float | None = None,
          session: requests.Session | None = None) -> Seen:
    """One probe of `service` on `host`."""
    expect = service.health.expect_status
    try:
        r = (session or requests).get(url(service, host),
                                      timeout=timeout or service.health.timeout)
    except requests.RequestException as e:
        return Seen(False, f"no answer ({type(e).__name__})")
    if accepts(expect, r.status_code):
        return Seen(True, f"HTTP {r.status_code}")
    return Seen(False, f"HTTP {r.status_code} (expected {expect})")


def wait_healthy(service, host, timeout: float) -> None:
    """Probe until the host answers as `expect_status` says, or raise HealthGateFailed."""
    deadline = time.monotonic() + timeout
    while True:
        ok, seen = probe(service, host)
        if ok:
            return
        if time.monotonic() >= deadline:
            raise HealthGateFailed(f"health check {url(service, host)} failed: {seen} "
                                   f"after {timeout:g}s", host=host.name)
        time.sleep(service.health.interval)
