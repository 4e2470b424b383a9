"""Issue 4 on the real fleet: canary -> half -> rest, error-rate gates judged on
real traffic, and automatic rollback of every host a failed deploy touched.

Every deploy here runs under background traffic to `/` on all four hosts
(tests/loadgen.py), so the gates count real requests in the hosts' gunicorn
access logs plus the tool's own probes. The service `canary` (port 8100) is
the airship sample built into this module's own origin repo, so its
`production` branch and tags are ours alone to check.

The tests run in file order and build on each other: v1 (one wave) ->
v2, a good code-only release whose gates all pass and whose rollout under
constant load loses no request (bars 1 and 5, one rollout) -> errors-20
(stopped at the canary) -> fails-on-others (stopped at wave 2) -> a baseline
with 1% errors and a canary with the same 1% (passes).
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.system

HERE = Path(__file__).resolve().parent
import build_repos
import sysenv as shared
from build_repos import Sub
from loadgen import LoadGen



HOSTS = ["web-0", "web-1", "web-2", "web-3"]
SVC = "canary"
PORT = 8100
WAVES = [["web-0"], ["web-1"], ["web-2", "web-3"]]

# Test-sized gate numbers. The default gate (bake 30 s, min_diff 0.001) needs
# ~3,700 error-free canary requests to pass against an error-free baseline:
# the allowed rate is max(1.5 x rate_b, rate_b + min_diff) and the 95% upper
# bound of 0 errors in n requests is ~3.7/n. In a test we send ~80 requests
# a second to each host for a ~5 s bake, so:
# - min_diff 0.02: an error-free canary passes once its upper bound is under
#   2%, i.e. after ~185 error-free requests (it gets ~400 plus ~25 probes);
#   a canary as bad as its 1% baseline passes under 3% (bar 4).
# - min_requests 150: no pass on less traffic than that, whatever the bounds.
# - on_inconclusive stays "rollback" and max_extensions is 1: a verdict that
#   the statistics cannot reach fails the test instead of passing silently.
# errors-20 (20% of `/`) and fails-on-others (100% of `/` on web-1) are far
# above the 5% ceiling: they fail at the first interim check that has ~100
# requests, long before the end of the bake.
GATE = {"warmup": 1, "bake": 5, "min_diff": 0.02, "min_requests": 150,
        "max_extensions": 1, "on_inconclusive": "rollback", "probe_interval": 0.2}
LOAD_RATE = 320.0  # requests/s over the four hosts: 2 cores serve ~800, so probes stay fast
LOAD_THREADS = 8


# --- the sample's extra commits ------------------------------------------------

VIEWS = "airship/views.py"
PID_LINE = '"pid": os.getpid(),\n'


def _every_100th_fails() -> dict:
    """A view that fails every 100th request to `/` per process: a 1% error rate."""
    return {VIEWS: Sub(
        ("import logging\n", "import itertools\nimport logging\n"),
        ("log = logging.getLogger",
         "_requests = itertools.count(1)  # per process\nlog = logging.getLogger"),
        ("def index(request):\n",
         "def index(request):\n"
         "    if next(_requests) % 100 == 0:  # errors-1: every 100th request fails\n"
         '        return HttpResponse("simulated failure", status=500, '
         'content_type="text/plain")\n'),
        (PID_LINE, PID_LINE + '        "build": "errors-1",\n'),
    )}


def add_commits(repo) -> None:
    """errors-1: v2 plus a 1% failure rate. errors-1-next: a code-only change on
    top of it, with the same rate. Each on its own branch, a descendant of v2, so
    deploying them moves `production` forward."""
    repo.commit("canary: fail every 100th request to /", _every_100th_fails(),
                branch="errors-1", base="v2", label="errors-1")
    repo.commit("canary: a code change that keeps the 1% failure rate",
                {VIEWS: Sub(('"build": "errors-1"', '"build": "errors-1-next"'))},
                branch="errors-1-next", base="errors-1", label="errors-1-next")


# --- fixture -------------------------------------------------------------------


def _service(repo) -> dict:
    return {
        "kind": "django", "repo": str(repo.origin), "role": "web",
        "app": "airship.wsgi:application", "port": PORT, "workers": 2, "graceful_timeout": 5,
        "env": {"DJANGO_SETTINGS_MODULE": "airship.settings"},
        # `/` needs neither the database nor static files: skip both to save time.
        "migrate": False, "collectstatic": False,
        "rollout": [1, "50%", "100%"],
        "gate": dict(GATE),
    }


@pytest.fixture(scope="module")
def canary(fleet, wheelhouse, tmp_path_factory):
    """The `canary` service on the fleet, and a second config (`one_wave`) that
    deploys it in a single wave: for a first release (no baseline exists) and
    for the 1% baseline of bar 4 (no 1% baseline exists before it)."""
    tmp = tmp_path_factory.mktemp("canary")
    repo = build_repos.build(tmp / "samples", ["airship"])["airship"]
    add_commits(repo)
    data = shared.fleet_yaml(fleet, wheelhouse)
    data["defaults"] = dict(data["defaults"], gate={})
    data["services"] = {SVC: _service(repo)}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    one = json.loads(json.dumps(data))
    one["services"][SVC]["rollout"] = ["100%"]
    one_config = tmp / "one-wave.yaml"
    one_config.write_text(yaml.safe_dump(one, sort_keys=False))
    env = shared.Env(dir=tmp, config=config, samples={"airship": repo}, fleet=fleet)
    env.one_wave = shared.Env(dir=tmp, config=one_config, samples={"airship": repo}, fleet=fleet)
    return env


# --- helpers -------------------------------------------------------------------


def sha(env, label):
    return env.samples["airship"].resolve(label)


def git(env, *args):
    return subprocess.run(["git", "-C", str(env.samples["airship"].origin), *args],
                          capture_output=True, text=True).stdout.strip()


def production(env):
    return git(env, "rev-parse", "--verify", "-q", "refs/heads/production") or None


def prod_tags(env):
    return sorted(git(env, "tag", "-l", "production-*").split())


def revisions(env):
    # /version, not /: the errors-1 releases fail every 100th request to / on purpose.
    out = {}
    for h in HOSTS:
        try:
            r = requests.get(env.url(h, "/version", PORT), timeout=5)
            out[h] = r.text.strip() if r.status_code == 200 else None
        except requests.RequestException:
            out[h] = None
    return out


def last(env, host):
    return env.history(host, SVC)[-1]


def traffic(env, duration=240.0):
    """Steady load on `/` of every host, bounded; stopped by the `with` block's end."""
    urls = [env.url(h, "/", PORT) for h in HOSTS]
    return LoadGen(urls, threads=LOAD_THREADS, duration=duration, rate=LOAD_RATE)


def deploy(env, label, *, check=True):
    """`fab deploy:canary,ref=LABEL` under background traffic; returns (proc, load stats)."""
    with traffic(env) as gen:
        time.sleep(1)  # the load is flowing before anything moves
        proc = env.fab(f"deploy:{SVC},ref={label}", check=check)
    stats = gen.stats
    print(f"\n--- fab deploy:{SVC},ref={label} -> exit {proc.returncode}\n{proc.stdout}"
          f"{proc.stderr}--- load: {json.dumps(stats.summary())}")
    return proc, stats


def gate_lines(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if re.match(r"\s*gate \d+:", line)]


def access_log_size(env, host):
    path = env.srv(host, SVC) / "log" / "access.log"
    return path.stat().st_size if path.exists() else 0


def statuses_since(env, host, offset):
    """Status codes in `host`'s access log after byte `offset`, probes included."""
    path = env.srv(host, SVC) / "log" / "access.log"
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [int(m.group(1)) for m in re.finditer(r'" (\d{3}) \S+ \S+$', text, re.M)]


def release_dirs(env, host):
    return sorted(p.name for p in (env.srv(host, SVC) / "releases").iterdir())


# --- the tests -----------------------------------------------------------------


def test_first_release_in_one_wave(canary):
    """v1 everywhere. One wave: with nothing deployed there is no baseline to compare with."""
    canary.fab(f"setup:{SVC}")
    proc, _ = deploy(canary.one_wave, "v1")
    assert revisions(canary) == {h: sha(canary, "v1") for h in HOSTS}
    assert production(canary) == sha(canary, "v1")


ROLLOUT: dict = {}  # the v2 rollout's load figures, for bar 5


def test_good_release_passes_canary_half_and_rest(canary):
    """Bar 1: v1 -> v2 under traffic passes three gates, each printed and recorded."""
    tags_before = prod_tags(canary)
    proc, load = deploy(canary, "v2")
    ROLLOUT["load"] = load
    assert revisions(canary) == {h: sha(canary, "v2") for h in HOSTS}
    assert production(canary) == sha(canary, "v2")
    assert len(prod_tags(canary)) == len(tags_before) + 1

    lines = gate_lines(proc.stdout)
    assert [line.split(":")[0:2] for line in lines] == [
        [f"gate {i}", " PASS"] for i in (1, 2, 3)], proc.stdout
    rec = last(canary, "web-0")
    assert rec["outcome"] == "success" and rec["commit"] == sha(canary, "v2")
    assert rec["waves"] == WAVES
    gates = rec["gates"]
    assert [g["wave"] for g in gates] == [1, 2, 3]
    assert all(g["outcome"] == "pass" for g in gates)
    for g, line in zip(gates, lines):
        f = g["figures"]
        # The printed line carries the recorded counts.
        assert f"new {f['e_c']}/{f['n_c']} errors" in line
        assert f["e_c"] == 0 and f["n_c"] >= GATE["min_requests"] and f["final"]
        print(f"gate {g['wave']}: e_c/n_c {f['e_c']}/{f['n_c']}, e_b/n_b {f['e_b']}/{f['n_b']}, "
              f"upper {f['pass_upper']:.4f} <= {f['pass_threshold']:.4f}")
    # Baseline = the hosts not yet switched; the last wave has none.
    assert sorted(gates[0]["figures"]["hosts"]) == HOSTS
    assert sorted(gates[1]["figures"]["hosts"]) == HOSTS
    assert sorted(gates[2]["figures"]["hosts"]) == HOSTS
    assert gates[0]["figures"]["n_b"] > 0 and gates[1]["figures"]["n_b"] > 0
    assert gates[2]["figures"]["n_b"] is None and "no baseline" in lines[2]
    # Real traffic was counted from each host's access log, not only the probes.
    for h, (log, probes) in ((h, (c["log"], c["probes"]))
                             for h, c in gates[0]["figures"]["hosts"].items()):
        assert log[1] >= 100 and probes[1] >= 10, (h, log, probes)
    for h in HOSTS:
        assert last(canary, h)["gates"] == gates  # the record is the same on every host


def test_code_only_release_under_load_loses_no_request(canary):
    """Bar 5: every request during that three-wave rollout of v2 (a code-only release:
    same requirements, graceful reload) was answered, and none with a 5xx."""
    load = ROLLOUT.get("load")
    assert load is not None, "the v2 rollout did not run (see the test before this one)"
    for h in HOSTS:
        rec = last(canary, h)
        assert rec["commit"] == sha(canary, "v2") and rec["outcome"] == "success"
        assert "venv_reused" in rec["steps"] and "activate_reload" in rec["steps"]
    s = load.summary()
    print(f"zero downtime: {load.failures} failed of {load.requests} requests during the "
          f"rollout ({load.connection_errors} connection errors; statuses {s['statuses']}; "
          f"{s['rps']} req/s; p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms)")
    assert load.requests >= 2000
    assert load.failures == 0, s["first_errors"]
    for url, c in load.per_url.items():
        assert c["requests"] >= 400 and c["failures"] == 0, url  # every host was under load


def test_errors_20_is_stopped_at_the_canary(canary):
    """Bar 2: 20% of `/` failing is caught on web-0 and rolled back; nobody else runs it."""
    prod, tags = production(canary), prod_tags(canary)
    before = {h: canary.current(h, SVC) for h in HOSTS}
    offsets = {h: access_log_size(canary, h) for h in HOSTS}
    proc, _ = deploy(canary, "errors-20", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = gate_lines(proc.stdout)
    assert len(lines) == 1 and lines[0].startswith("gate 1: FAIL"), proc.stdout
    assert "wave 2/" not in proc.stdout

    # Every host serves the old release again; only web-0 was ever switched.
    assert {h: canary.current(h, SVC) for h in HOSTS} == before
    assert revisions(canary) == {h: sha(canary, "v2") for h in HOSTS}
    rec = last(canary, "web-0")
    release = rec["release"]
    assert rec["commit"] == sha(canary, "errors-20")
    assert rec["outcome"] == "rolled_back" and rec["failed_wave"] == 1
    assert rec["rolled_back"] == ["web-0"]
    assert any(s.startswith("activate_") for s in rec["steps"])
    f = rec["gates"][0]["figures"]
    assert rec["gates"][0]["outcome"] == "fail" and f["e_c"] > 0 and f["n_b"] > 0
    print(f"errors-20 gate 1: e_c/n_c {f['e_c']}/{f['n_c']}, e_b/n_b {f['e_b']}/{f['n_b']}: "
          f"{rec['gates'][0]['reason']}")
    for h in HOSTS[1:]:
        r = last(canary, h)
        assert r["release"] == release and r["outcome"] == "rolled_back"
        assert not any(s.startswith("activate_") for s in r["steps"]), (h, r["steps"])
    # Staged everywhere (staging precedes the canary) and marked rejected everywhere.
    for h in HOSTS:
        assert release in release_dirs(canary, h)
        assert (canary.srv(h, SVC) / "releases" / release / ".deploy" / "rejected").exists()
    dirs = {h: release_dirs(canary, h) for h in HOSTS}
    # The proof from the traffic itself: only web-0 ever answered a 500.
    seen = {h: statuses_since(canary, h, offsets[h]) for h in HOSTS}
    assert any(s >= 500 for s in seen["web-0"])
    for h in HOSTS[1:]:
        assert len(seen[h]) > 200 and not any(s >= 500 for s in seen[h]), h
    # production and the tags did not move.
    assert production(canary) == prod == sha(canary, "v2")
    assert prod_tags(canary) == tags
    # A rejected release needs an explicit force.
    again = canary.fab(f"deploy:{SVC},ref=errors-20", check=False)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "rejected" in again.stderr and "force" in again.stderr
    assert {h: canary.current(h, SVC) for h in HOSTS} == before
    assert {h: release_dirs(canary, h) for h in HOSTS} == dirs  # refused before staging


def test_release_failing_on_other_hosts_rolls_back_both_waves(canary):
    """Bar 3: fails-on-others passes on web-0, fails on web-1: both waves go back."""
    prod, tags = production(canary), prod_tags(canary)
    before = {h: canary.current(h, SVC) for h in HOSTS}
    offsets = {h: access_log_size(canary, h) for h in HOSTS}
    proc, _ = deploy(canary, "fails-on-others", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = gate_lines(proc.stdout)
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith("gate 1: PASS") and lines[1].startswith("gate 2: FAIL")
    assert "wave 3/" not in proc.stdout

    rec = last(canary, "web-0")
    assert rec["commit"] == sha(canary, "fails-on-others")
    assert rec["outcome"] == "rolled_back" and rec["failed_wave"] == 2
    assert rec["rolled_back"] == ["web-1", "web-0"]  # reverse wave order
    for h in ("web-2", "web-3"):
        assert not any(s.startswith("activate_") for s in last(canary, h)["steps"])
    assert {h: canary.current(h, SVC) for h in HOSTS} == before
    assert revisions(canary) == {h: sha(canary, "v2") for h in HOSTS}
    seen = {h: statuses_since(canary, h, offsets[h]) for h in HOSTS}
    assert any(s >= 500 for s in seen["web-1"])
    for h in ("web-0", "web-2", "web-3"):
        assert seen[h] and not any(s >= 500 for s in seen[h]), h
    assert production(canary) == prod and prod_tags(canary) == tags
    for g in rec["gates"]:
        f = g["figures"]
        print(f"fails-on-others gate {g['wave']} {g['outcome']}: e_c/n_c {f['e_c']}/{f['n_c']}, "
              f"e_b/n_b {f['e_b']}/{f['n_b']}")


def test_baseline_with_1pct_errors_and_canary_with_the_same_passes(canary):
    """Bar 4: no false alarm when the canary is exactly as bad as its baseline."""
    deploy(canary.one_wave, "errors-1")  # the baseline, everywhere: it has nothing to compare with
    assert revisions(canary) == {h: sha(canary, "errors-1") for h in HOSTS}
    proc, load = deploy(canary, "errors-1-next")
    assert revisions(canary) == {h: sha(canary, "errors-1-next") for h in HOSTS}
    assert production(canary) == sha(canary, "errors-1-next")
    assert [line.split(":")[1].strip() for line in gate_lines(proc.stdout)] == ["PASS"] * 3
    gates = last(canary, "web-0")["gates"]
    for g in gates:
        f = g["figures"]
        print(f"1% gate {g['wave']}: e_c/n_c {f['e_c']}/{f['n_c']}, e_b/n_b {f['e_b']}/{f['n_b']}, "
              f"p {f['p_value']}, upper {f['pass_upper']:.4f} <= {f['pass_threshold']:.4f}")
    # The baseline really had errors, and so did the new release.
    assert gates[0]["figures"]["e_b"] > 0 and gates[1]["figures"]["e_b"] > 0
    assert sum(g["figures"]["e_c"] for g in gates) > 0
    assert load.failures > 0  # the load saw the 1% too

