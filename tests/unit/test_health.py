"""The canary decision is pure: tables of counts in, verdicts out; statistics checked exactly."""
import json
import math
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest

from deploytools.config import Gate  # services.yaml `gate:`, judged as it is
from deploytools.health import (
    AccessRecord, Counts, Verdict, binom_sf, clopper_pearson, count_window, judge, next_step,
    parse_access_line,
)

# --- binom_sf ----------------------------------------------------------------


def brute_sfs(n, p):
    """[P[Bin(n, p) >= k] for k in 0..n+1] in exact rational arithmetic.

    p is taken as the decimal it is written as (Fraction("0.1"), not the
    binary float): as exact, and much faster; the float differs by ~1e-17.
    """
    p = Fraction(str(p))
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    tails = [Fraction(0)]
    for term in reversed(pmf):
        tails.append(tails[-1] + term)
    return [float(t) for t in reversed(tails)]


@pytest.mark.parametrize("n", [1, 2, 5, 10, 30, 60])
@pytest.mark.parametrize("p", [0.001, 0.05, 0.3, 0.5, 0.9, 0.999])
def test_binom_sf_matches_exact_sum(n, p):
    exact = brute_sfs(n, p)
    for k in range(0, n + 2):
        assert binom_sf(k, n, p) == pytest.approx(exact[k], rel=1e-11, abs=1e-300), (k, n, p)


@pytest.mark.parametrize("k, n, p, expected", [
    (0, 10, 0.3, 1.0),
    (-3, 10, 0.3, 1.0),
    (0, 0, 0.3, 1.0),
    (1, 0, 0.3, 0.0),
    (11, 10, 0.3, 0.0),
    (1, 10, 0.0, 0.0),
    (0, 10, 0.0, 1.0),
    (10, 10, 1.0, 1.0),
    (1, 10, 0.5, 1 - 0.5**10),
    (10, 10, 0.5, 0.5**10),
])
def test_binom_sf_edges(k, n, p, expected):
    assert binom_sf(k, n, p) == pytest.approx(expected, rel=1e-12)


def test_binom_sf_far_tail_does_not_underflow_to_garbage():
    # 400 of 400 at p=0.1 is 1e-400: below the smallest float, so exactly 0 is right.
    assert binom_sf(400, 400, 0.1) == 0.0
    # 200 of 400 at p=0.1: about 1e-62, must be positive and match the exact sum.
    assert binom_sf(200, 400, 0.1) == pytest.approx(brute_sfs(400, 0.1)[200], rel=1e-10)


def test_binom_sf_large_n_is_fast_and_sane():
    # Mean 1000, sd ~31.6: 1100 is ~3.2 sd out.
    sf = binom_sf(1100, 1_000_000, 0.001)
    assert 3e-4 < sf < 2e-3
    assert binom_sf(900, 1_000_000, 0.001) > 0.99


@pytest.mark.parametrize("bad", [(1, 10, -0.1), (1, 10, 1.5), (1, -1, 0.5)])
def test_binom_sf_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        binom_sf(*bad)


# --- clopper_pearson ---------------------------------------------------------

@pytest.mark.parametrize("k, n, conf, lo, hi", [
    # Closed forms at the ends: hi = 1 - (a/2)^(1/n), lo = (a/2)^(1/n).
    (0, 10, 0.95, 0.0, 1 - 0.025 ** 0.1),
    (10, 10, 0.95, 0.025 ** 0.1, 1.0),
    (0, 100, 0.99, 0.0, 1 - 0.005 ** 0.01),
    # Published values (e.g. R's binom.test).
    (5, 10, 0.95, 0.187086028, 0.812913972),
    (1, 10, 0.95, 0.002528579, 0.445016117),
    (0, 0, 0.95, 0.0, 1.0),
])
def test_clopper_pearson_known_values(k, n, conf, lo, hi):
    got = clopper_pearson(k, n, conf)
    assert got == pytest.approx((lo, hi), abs=1e-8)


def test_clopper_pearson_k0_n10_upper_is_0_3085():
    assert clopper_pearson(0, 10, 0.95)[1] == pytest.approx(0.3085, abs=5e-5)


@pytest.mark.parametrize("k, n", [(1, 7), (3, 20), (17, 40), (60, 20_000)])
def test_clopper_pearson_bounds_hit_their_tails(k, n):
    lo, hi = clopper_pearson(k, n, 0.9)
    assert binom_sf(k, n, lo) == pytest.approx(0.05, rel=1e-9)
    assert 1 - binom_sf(k + 1, n, hi) == pytest.approx(0.05, rel=1e-9)
    assert lo < k / n < hi


@pytest.mark.parametrize("bad", [(3, 2, 0.95), (-1, 2, 0.95), (1, 2, 1.0), (1, 2, 0.0)])
def test_clopper_pearson_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        clopper_pearson(*bad)


# --- judge -------------------------------------------------------------------

S = Gate()

CASES = [
    # id, canary (e, n), baseline (e, n) or None, final, outcome
    # DESIGN's worked example.
    ("design-fail", (60, 20_000), (180, 180_000), True, "fail"),
    ("design-fail-interim", (60, 20_000), (180, 180_000), False, "fail"),  # p=8e-6 < 0.001
    ("design-pass", (20, 20_000), (180, 180_000), True, "pass"),
    ("design-pass-interim-waits", (20, 20_000), (180, 180_000), False, "inconclusive"),
    # Same 1% on both with plenty of traffic: no false alarm.
    ("same-1pct", (100, 10_000), (1_000, 100_000), True, "pass"),
    ("same-1pct-interim", (100, 10_000), (1_000, 100_000), False, "inconclusive"),
    # Ceiling: 20% of 200 fails even against an equally bad baseline.
    ("ceiling", (40, 200), (200, 1_000), False, "fail"),
    ("ceiling-no-baseline", (40, 200), None, True, "fail"),
    # No traffic.
    ("none-anywhere", (0, 0), (0, 0), True, "inconclusive"),
    ("none-anywhere-no-baseline", (0, 0), None, True, "inconclusive"),
    ("silent-canary", (0, 0), (3, 500), False, "fail"),
    ("silent-canary-final", (0, 0), (0, 10), True, "fail"),
    # Tiny traffic proves nothing either way.
    ("tiny", (0, 5), (10, 1_000), True, "inconclusive"),
    ("tiny-one-error", (1, 5), (10, 1_000), True, "inconclusive"),
    ("tiny-no-baseline", (0, 20), None, True, "inconclusive"),
    # No baseline (last wave) or a baseline without traffic: only the ceiling.
    ("alone-clean", (0, 150), None, True, "pass"),
    ("alone-at-2pct", (20, 1_000), None, True, "pass"),
    ("alone-near-ceiling", (45, 1_000), None, True, "inconclusive"),
    ("baseline-idle", (0, 150), (0, 0), True, "pass"),
    ("baseline-idle-bad", (40, 200), (0, 0), True, "fail"),
    # Relative: 3x worse with enough evidence fails below the ceiling...
    ("triple", (30, 10_000), (100, 100_000), True, "fail"),
    # ...but a difference under min_diff does not, however significant: 30x
    # worse at 0.03% is still within the 0.1 percentage points that matter.
    ("tiny-diff", (30, 100_000), (10, 1_000_000), True, "pass"),
    # Below the ratio: 1.2x worse is tolerated.
    ("slightly-worse", (240, 20_000), (1_800, 180_000), True, "pass"),
    # Quiet service: a clean baseline allows only min_diff, 150 probes cannot show it.
    ("quiet-clean", (0, 150), (0, 150), True, "inconclusive"),
    ("busy-clean", (0, 5_000), (0, 50_000), True, "pass"),
    # A canary whose errors are zero never fails the relative test.
    ("zero-errors", (0, 2_000), (500, 2_000), True, "pass"),
]


@pytest.mark.parametrize("canary, baseline, final, outcome",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge(canary, baseline, final, outcome):
    v = judge(Counts(*canary), Counts(*baseline) if baseline else None, S, final=final)
    assert v.outcome == outcome, v.reason
    assert isinstance(v, Verdict) and v.reason
    json.dumps(v.figures, allow_nan=False)  # goes into --json and the history as is


@pytest.mark.parametrize("canary, baseline", [(c[1], c[2]) for c in CASES])
def test_interim_checks_never_pass(canary, baseline):
    v = judge(Counts(*canary), Counts(*baseline) if baseline else None, S, final=False)
    assert v.outcome in ("fail", "inconclusive")


def test_design_example_figures():
    v = judge(Counts(60, 20_000), Counts(180, 180_000), S, final=True)
    assert v.figures["p_value"] == pytest.approx(8e-6, rel=0.05)
    assert v.figures["e_c"] == 60 and v.figures["n_b"] == 180_000
    assert "60 of 20,000" in v.reason and "180 of 180,000" in v.reason
    v = judge(Counts(20, 20_000), Counts(180, 180_000), S, final=True)
    assert v.figures["pass_threshold"] == pytest.approx(0.002)  # max(1.5 * 0.1%, 0.1% + 0.1%)
    assert v.figures["pass_upper"] < 0.002


def test_settings_change_the_decision():
    # The same counts pass or not depending on the configured numbers.
    canary, baseline = Counts(0, 150), Counts(0, 150)
    assert judge(canary, baseline, Gate(min_diff=0.05), final=True).outcome == "pass"
    assert judge(Counts(0, 150), None, Gate(min_requests=200), final=True).outcome \
        == "inconclusive"
    assert judge(Counts(30, 200), None, Gate(max_error_rate=0.05), final=True).outcome \
        == "fail"
    assert judge(Counts(30, 200), None, Gate(max_error_rate=0.5), final=True).outcome \
        == "pass"
    triple = Counts(30, 10_000), Counts(100, 100_000)
    assert judge(*triple, Gate(ratio=4), final=True).outcome != "fail"


# --- next_step (step 5) ------------------------------------------------------

@pytest.mark.parametrize("outcome, used, on_inconclusive, step", [
    ("pass", 0, "rollback", "proceed"),
    ("fail", 0, "proceed", "rollback"),
    ("inconclusive", 0, "rollback", "extend"),
    ("inconclusive", 1, "rollback", "extend"),
    ("inconclusive", 2, "rollback", "rollback"),
    ("inconclusive", 2, "proceed", "proceed"),
])
def test_next_step(outcome, used, on_inconclusive, step):
    settings = Gate(on_inconclusive=on_inconclusive)
    assert next_step(Verdict(outcome, "", {}), used, settings) == step


# --- settings and counts -----------------------------------------------------

def test_default_settings():
    s = Gate()
    assert (s.warmup, s.bake, s.max_error_rate, s.ratio) == (5, 30, 0.05, 1.5)
    assert (s.alpha_interim, s.alpha_final, s.min_diff) == (0.001, 0.01, 0.001)
    assert (s.ceiling_confidence, s.pass_confidence, s.min_requests) == (0.99, 0.95, 100)
    assert (s.max_extensions, s.on_inconclusive, s.probe_interval) == (2, "rollback", 0.2)


@pytest.mark.parametrize("key, value", [
    ("bake", 0), ("warmup", -1), ("max_error_rate", 0), ("max_error_rate", 1.5),
    ("ratio", 0.5), ("alpha_final", 1), ("ceiling_confidence", 0), ("min_diff", -0.1),
    ("min_requests", 0), ("max_extensions", -1), ("on_inconclusive", "ignore"),
    ("probe_interval", 0),
])
def test_bad_settings_name_themselves(key, value):
    with pytest.raises(ValueError, match=key):
        Gate(**{key: value})


def test_counts():
    assert Counts(0, 0).rate == 0.0
    assert Counts(1, 4).rate == 0.25
    assert Counts(1, 4) + Counts(2, 6) == Counts(3, 10)
    with pytest.raises(ValueError):
        Counts(5, 4)
    with pytest.raises(ValueError):
        Counts(-1, 4)


# --- access logs ---------------------------------------------------------------

UTC = timezone.utc


@pytest.mark.parametrize("line, expected", [
    ('[26/Nov/2026:09:45:01 +0000] 10.0.0.5 "GET /healthz HTTP/1.1" 200 2 0.001234',
     AccessRecord(datetime(2026, 11, 26, 9, 45, 1, tzinfo=UTC), 200, "GET /healthz HTTP/1.1",
                  0.001234)),
    ('[01/Feb/2027:23:59:59 -0530] ::1 "POST /api/x?y=1 HTTP/1.0" 502 - 12.5\n',
     AccessRecord(datetime(2027, 2, 1, 23, 59, 59,
                           tzinfo=timezone(-timedelta(hours=5, minutes=30))),
                  502, "POST /api/x?y=1 HTTP/1.0", 12.5)),
    # A client can put quotes in the request line.
    ('[26/Nov/2026:09:45:01 +0100] 1.2.3.4 "GET /a"b" HTTP/1.1" 404 9 0.01',
     AccessRecord(datetime(2026, 11, 26, 9, 45, 1, tzinfo=timezone(timedelta(hours=1))), 404,
                  'GET /a"b" HTTP/1.1', 0.01)),
    ('[26/Nov/2026:09:45:01 +0000] 1.2.3.4 "" 400 0 -',
     AccessRecord(datetime(2026, 11, 26, 9, 45, 1, tzinfo=UTC), 400, "", None)),
    ("", None),
    ("garbage", None),
    ("[2026-11-26 09:45:01] [123] [INFO] Booting worker with pid: 123", None),
    ('[26/Foo/2026:09:45:01 +0000] 1.2.3.4 "GET / HTTP/1.1" 200 2 0.1', None),
    ('[31/Feb/2026:09:45:01 +0000] 1.2.3.4 "GET / HTTP/1.1" 200 2 0.1', None),
    ('[26/Nov/2026:09:45:01 +0000] 1.2.3.4 "GET / HTTP/1.1" OK 2 0.1', None),
    ('[26/Nov/2026:09:45:01] 1.2.3.4 "GET / HTTP/1.1" 200 2 0.1', None),
])
def test_parse_access_line(line, expected):
    assert parse_access_line(line) == expected


@pytest.mark.parametrize("request_line, path", [
    ("GET /healthz HTTP/1.1", "/healthz"),
    ("GET /a/b?c=d HTTP/1.1", "/a/b"),
    ("", ""),
    ("junk", ""),
])
def test_record_path(request_line, path):
    assert AccessRecord(datetime(2026, 1, 1, tzinfo=UTC), 200, request_line).path == path


LOG = """\
[26/Nov/2026:09:44:59 +0000] 1.1.1.1 "GET / HTTP/1.1" 500 0 0.1
[26/Nov/2026:09:45:00 +0000] 1.1.1.1 "GET / HTTP/1.1" 200 10 0.1
[26/Nov/2026:09:45:01 +0000] 1.1.1.1 "GET /healthz HTTP/1.1" 503 0 0.1
[26/Nov/2026:10:45:05 +0100] 1.1.1.1 "GET /api HTTP/1.1" 502 0 0.1
[26/Nov/2026:09:45:10 +0000] 1.1.1.1 "GET /static/app.css HTTP/1.1" 500 0 0.1
[26/Nov/2026:09:45:20 +0000] 1.1.1.1 "GET /api HTTP/1.1" 499 0 0.1
[2026-11-26 09:45:21 +0000] [7] [ERROR] Worker timeout (pid:8)
[26/Nov/2026:09:45:30 +0000] 1.1.1.1 "GET / HTTP/1.1" 500 0 0.1
""".splitlines()

START = datetime(2026, 11, 26, 9, 45, 0, tzinfo=UTC)
END = datetime(2026, 11, 26, 9, 45, 30, tzinfo=UTC)


@pytest.mark.parametrize("exclude, expected", [
    ((), Counts(errors=3, requests=5)),  # [start, end): 09:44:59 and 09:45:30 are out
    (("/healthz",), Counts(errors=2, requests=4)),
    (("/healthz", "/static/"), Counts(errors=1, requests=3)),
    (("/stat",), Counts(errors=3, requests=5)),  # a folder, not a string prefix
])
def test_count_window(exclude, expected):
    assert count_window(LOG, START, END, exclude) == expected


def test_count_window_needs_aware_times():
    with pytest.raises(ValueError):
        count_window(LOG, START.replace(tzinfo=None), END)
