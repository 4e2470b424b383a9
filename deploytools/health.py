"""Is the new release healthy? The canary decision as pure statistics, plus the log parser.

After each wave the rollout driver counts errors (e = 5xx + failed
connections) and requests (n) on the new hosts (c, the canary) and on the
hosts still serving the old release (b, the baseline), and asks `judge` for a
verdict. Raw thresholds ("fail above 1% errors") either cry wolf on a service
that always runs at 1%, or miss a doubling on one that runs at 0.1%, and with
little traffic a single 500 looks like a 100% error rate. So the decision
compares the canary with the baseline and asks how sure we are, with exact
binomial tests that stay honest at zero and small counts:

1. no traffic on c while b has traffic: fail; none on either: inconclusive.
2. ceiling: fail if the 99% Clopper-Pearson lower bound of e_c/n_c > C.
3. relative (exact conditional binomial, a Poisson rate-ratio test):
   p = P[Bin(e_c + e_b, p0) >= e_c] with p0 = r*n_c / (r*n_c + n_b);
   fail if p < alpha and the rates differ by at least `min_diff`.
4. at the end of the bake only: pass if n_c >= min_requests and the 95%
   upper bound of e_c/n_c <= min(C, max(r*rate_b, rate_b + min_diff)).
5. otherwise inconclusive: the driver extends the bake (`next_step`), then
   follows `on_inconclusive`. A release never passes for lack of evidence.

Step 0 (a process not RUNNING, a readiness probe not 2xx) is a hard gate the
driver checks before calling `judge`. The design follows Kayenta's judge,
Argo Rollouts' analysis, Flagger's thresholds and the SRE Workbook's
"Canarying Releases". The bounds are the two ends of the two-sided interval
at the given confidence, the textbook reading of "the 99% lower bound".

Passing needs evidence, and evidence needs traffic: against a baseline with
no errors the allowed rate is `min_diff` (0.1%), which takes about 3,700
error-free canary requests to show at 95%. A quiet service whose only
traffic is the tool's probes ends inconclusive and, by default, rolls back;
raise `min_diff` or `bake`, or set `on_inconclusive: proceed`, for such services.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional

from .config import Gate

# --- exact binomial helpers -------------------------------------------------


def binom_sf(k: int, n: int, p: float) -> float:
    """P[Bin(n, p) >= k], exact up to float rounding for any n, including tiny tails.

    The terms are summed from the start of the tail outwards, relative to the
    first term (so nothing underflows), and the sum stops once the rest of the
    tail provably cannot change it. When k is below the mean the complement
    is summed instead: then the answer is >= ~1/2 and `1 - small` is accurate.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability {p!r} must be between 0 and 1")
    if n < 0:
        raise ValueError(f"number of trials {n!r} must not be negative")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    if k >= n * p:
        return _tail(k, n, p, upward=True)
    return max(0.0, 1.0 - _tail(k - 1, n, p, upward=False))


def _log_pmf(i: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def _tail(start: int, n: int, p: float, *, upward: bool) -> float:
    """Sum of pmf(start..n) (upward) or pmf(0..start) (downward), from start away from the mode.

    From `start` away from the mode the terms shrink and, the binomial being
    log-concave, so does their ratio q: what is left after a term t is below
    t*q/(1-q), which is the stopping rule.
    """
    odds = p / (1.0 - p)
    total, term, i = 1.0, 1.0, start
    while (i < n) if upward else (i > 0):
        q = (n - i) / (i + 1) * odds if upward else i / ((n - i + 1) * odds)
        term *= q
        i += 1 if upward else -1
        total += term
        if q < 1.0 and term * q / (1.0 - q) < 1e-17 * total:
            break
    return math.exp(_log_pmf(start, n, p)) * total


def _bisect(f, target: float) -> float:
    """The p in [0, 1] where increasing f(p) crosses target."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):  # adjacent floats: as exact as it gets
            break
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for k successes in n trials.

    Exact (never too narrow), unlike the normal approximation which gives
    [0, 0] for 0 errors in 10 requests. With no trials it is (0, 1).
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must be between 0 and 1")
    tail = (1.0 - confidence) / 2
    # lo: the rate at which seeing k or more is just `tail` likely.
    lo = 0.0 if k == 0 else _bisect(lambda q: binom_sf(k, n, q), tail)
    # hi: the rate at which seeing k or fewer is just `tail` likely.
    hi = 1.0 if k == n else _bisect(lambda q: binom_sf(k + 1, n, q), 1.0 - tail)
    return lo, hi


# --- counts, verdicts ---------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    """Errors and requests seen on a set of hosts over one window."""

    errors: int
    requests: int

    def __post_init__(self):
        if not 0 <= self.errors <= self.requests:
            raise ValueError(f"need 0 <= errors <= requests, got {self.errors}/{self.requests}")

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def __add__(self, other: "Counts") -> "Counts":
        # Hosts of a wave, and access-log plus probe counts, are pooled.
        return Counts(self.errors + other.errors, self.requests + other.requests)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "pass" | "fail" | "inconclusive"
    reason: str  # one sentence with the figures, for the operator
    figures: dict = field(default_factory=dict)  # JSON-serialisable, for --json and history


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"


def _conf(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _counted(c: Counts) -> str:
    return f"{_pct(c.rate)} ({c.errors:,} of {c.requests:,})"


def judge(canary: Counts, baseline: Optional[Counts], settings: Gate, *,
          final: bool) -> Verdict:
    """Steps 1-5 of the canary decision. Interim checks (final=False) never pass.

    `settings` is the service's `gate:` (config.Gate): every number comes from there.
    """
    s = settings
    e_c, n_c = canary.errors, canary.requests
    # A baseline without traffic tells us nothing: judge the canary on its own.
    compare = baseline is not None and baseline.requests > 0
    alpha = s.alpha_final if final else s.alpha_interim
    figures = {
        "e_c": e_c, "n_c": n_c,
        "e_b": baseline.errors if baseline else None,
        "n_b": baseline.requests if baseline else None,
        "rate_c": canary.rate, "rate_b": baseline.rate if compare else None,
        "final": final, "p_value": None, "ceiling_lower": None,
        "pass_upper": None, "pass_threshold": None,
        "thresholds": {"max_error_rate": s.max_error_rate, "ratio": s.ratio, "alpha": alpha,
                       "min_diff": s.min_diff, "min_requests": s.min_requests,
                       "ceiling_confidence": s.ceiling_confidence,
                       "pass_confidence": s.pass_confidence},
    }

    def verdict(outcome: str, reason: str) -> Verdict:
        return Verdict(outcome, reason, figures)

    # 1. No traffic: silence from the new hosts while the old ones serve is
    # itself a symptom (not routed, not listening); silence everywhere is not.
    if n_c == 0:
        if compare:
            return verdict("fail", f"the new hosts served no requests while the old hosts "
                                   f"served {baseline.requests:,}")
        return verdict("inconclusive", "no requests reached any host in the window; "
                                       "there is nothing to judge")

    # 2. Ceiling: bad beyond doubt, whatever the baseline does.
    ceiling_lower = clopper_pearson(e_c, n_c, s.ceiling_confidence)[0]
    figures["ceiling_lower"] = ceiling_lower
    if ceiling_lower > s.max_error_rate:
        return verdict("fail", f"the new hosts fail {_counted(canary)} of requests: even the "
                               f"{_conf(s.ceiling_confidence)} lower bound {_pct(ceiling_lower)} "
                               f"is above the {_pct(s.max_error_rate)} ceiling")

    # 3. Relative: conditional on the total errors, each one lands on the
    # canary with probability p0 if its rate is at most r times the baseline's.
    rate_b = baseline.rate if compare else None
    if compare:
        n_b, e_b = baseline.requests, baseline.errors
        p0 = s.ratio * n_c / (s.ratio * n_c + n_b)
        p_value = binom_sf(e_c, e_c + e_b, p0)
        figures["p_value"] = p_value
        # The small epsilon keeps a difference of exactly min_diff from losing to float rounding.
        if p_value < alpha and canary.rate - rate_b >= s.min_diff - 1e-12:
            return verdict("fail", f"the new hosts fail {_counted(canary)} of requests against "
                                   f"{_counted(baseline)} on the old: that many errors has a "
                                   f"chance of p = {p_value:.2g} (below {alpha:g}) if the new "
                                   f"hosts were no worse than {s.ratio:g}x the old")

    # 4. Pass only at the end of the bake, and only on evidence.
    threshold = s.max_error_rate
    if compare:
        threshold = min(threshold, max(s.ratio * rate_b, rate_b + s.min_diff))
    pass_upper = clopper_pearson(e_c, n_c, s.pass_confidence)[1]
    figures["pass_upper"], figures["pass_threshold"] = pass_upper, threshold
    against = f" and the old hosts {_counted(baseline)}" if compare else ""
    if not final:
        return verdict("inconclusive", f"no failure so far: the new hosts fail "
                                       f"{_counted(canary)} of requests{against}; still baking")
    if n_c < s.min_requests:
        return verdict("inconclusive", f"only {n_c:,} requests reached the new hosts, fewer than "
                                       f"the {s.min_requests:,} needed to pass")
    if pass_upper <= threshold:
        return verdict("pass", f"the new hosts fail {_counted(canary)} of requests{against}: "
                               f"the {_conf(s.pass_confidence)} upper bound {_pct(pass_upper)} "
                               f"is within the {_pct(threshold)} allowed")

    # 5. Not bad enough to fail, not proven good: the driver decides (next_step).
    return verdict("inconclusive", f"the new hosts fail {_counted(canary)} of requests{against}: "
                                   f"the {_conf(s.pass_confidence)} upper bound {_pct(pass_upper)} "
                                   f"is above the {_pct(threshold)} allowed, so it is not yet "
                                   f"shown to be healthy")


def next_step(verdict: Verdict, extensions_used: int, settings: Gate) -> str:
    """After a final verdict: "proceed", "rollback" or "extend" (bake another window).

    Step 5 of the decision: an inconclusive bake is extended up to
    `max_extensions` times, then `on_inconclusive` applies. The driver must
    report a "proceed" that came from on_inconclusive loudly: never pass silently.
    """
    if verdict.outcome == "pass":
        return "proceed"
    if verdict.outcome == "fail":
        return "rollback"
    if extensions_used < settings.max_extensions:
        return "extend"
    return settings.on_inconclusive


# --- access logs ------------------------------------------------------------

# gunicorn access_log_format = '%(t)s %(h)s "%(r)s" %(s)s %(B)s %(L)s'. The
# request line is matched greedily because a client can put quotes in it;
# the fields after it are anchored to the end of the line.
_ACCESS = re.compile(
    r'^\[(?P<t>[^\]]+)\] (?P<h>\S+) "(?P<r>.*)" (?P<s>\d{3}) (?P<b>\S+) (?P<l>\S+)\s*$')
_TIME = re.compile(r"^(\d{2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$")
# Month names by hand: strptime's %b follows the locale, gunicorn's are English.
_MONTHS = {m: i for i, m in enumerate(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), start=1)}


@dataclass(frozen=True)
class AccessRecord:
    time: datetime  # timezone-aware
    status: int
    request: str  # the request line, e.g. "GET /healthz HTTP/1.1"
    duration: Optional[float] = None  # seconds, when gunicorn logged it

    @property
    def path(self) -> str:
        """The request target without its query string ("" if the line is garbage)."""
        parts = self.request.split(" ")
        return parts[1].split("?", 1)[0] if len(parts) >= 2 else ""


def _parse_time(text: str) -> Optional[datetime]:
    m = _TIME.match(text)
    if not m or m.group(2).title() not in _MONTHS:
        return None
    day, _, year, hour, minute, second, sign, off_h, off_m = m.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(int(year), _MONTHS[m.group(2).title()], int(day), int(hour),
                        int(minute), int(second),
                        tzinfo=timezone(-offset if sign == "-" else offset))
    except ValueError:  # 31/Feb and friends
        return None


# A `command` service's own access lines (the harbor sample's), among its other
# output: `2024-05-01T12:00:00.123Z 10.0.0.5 "GET / HTTP/1.1" 200 42 [seconds]`.
_ACCESS_ISO = re.compile(
    r'^(?P<t>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) (?P<h>\S+) '
    r'"(?P<r>.*)" (?P<s>\d{3}) (?P<b>\S+)(?: (?P<l>\S+))?\s*$')


def _parse_iso(text: str) -> Optional[datetime]:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def parse_access_line(line: str) -> Optional[AccessRecord]:
    """One access-log line (gunicorn's, or ISO-time first as a `command` service may
    write it), or None when it is not one (a log is never trusted)."""
    m = _ACCESS.match(line.strip())
    iso = None if m else _ACCESS_ISO.match(line.strip())
    if iso:
        m = iso
    if not m:
        return None
    when = _parse_iso(m.group("t")) if iso else _parse_time(m.group("t"))
    if when is None:
        return None
    try:
        duration: Optional[float] = float(m.group("l"))
    except (TypeError, ValueError):
        duration = None
    return AccessRecord(time=when, status=int(m.group("s")), request=m.group("r"),
                        duration=duration)


def _excluded(path: str, exclude_paths: tuple) -> bool:
    # "/static" also excludes "/static/app.css", but not "/staticky".
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in exclude_paths)


def count_lines(lines: Iterable[str], exclude_paths: tuple = ()) -> Counts:
    """Requests in these access-log lines and how many of them were 5xx (the lines of a
    window cut by byte offsets); `exclude_paths` as in `count_window`."""
    errors = requests = 0
    for line in lines:
        record = parse_access_line(line)
        if record is None or _excluded(record.path, exclude_paths):
            continue
        requests += 1
        errors += record.status >= 500
    return Counts(errors, requests)


def count_window(lines: Iterable[str], start: datetime, end: datetime,
                 exclude_paths: tuple = ()) -> Counts:
    """Requests logged in [start, end) and how many of them were 5xx.

    `exclude_paths` drops requests the tool counts another way, such as its
    own health probes, so they are not counted twice. Unparseable lines are
    skipped.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("count_window needs timezone-aware start and end times")
    errors = requests = 0
    for line in lines:
        record = parse_access_line(line)
        if record is None or not start <= record.time < end:
            continue
        if _excluded(record.path, exclude_paths):
            continue
        requests += 1
        errors += record.status >= 500
    return Counts(errors, requests)
