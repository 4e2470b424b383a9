"""Issue 6 on the real fleet: a Java service (`kind: command`, built with javac
while staging) and a plain WSGI app (`kind: wsgi`) through the same pipeline
as airship: canary, half, rest; automatic rollback of a release that answers
5xx or does not start; a build that fails stops before any host switches;
smart deploys rebuild only when the build inputs changed.

The services are this module's own (`harbor` on port 8300, `dory` on 8301),
from origin repos built here, so their production branches are ours alone.
The tests run in file order and build on each other.
"""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.system

HERE = Path(__file__).resolve().parent
import build_repos
import sysenv as shared
from loadgen import LoadGen



HOSTS = ["web-0", "web-1", "web-2", "web-3"]
PORTS = {"harbor": 8300, "dory": 8301}
# Test-sized gates. Without traffic a wave is inconclusive (a few probes are no
# evidence) and proceeds with a warning: `quick` bakes 1 s for the deploys that
# test the pipeline's mechanics. Under the background load (~30 requests/s per
# host) a canary failing 20% of `/` is far above the 5% ceiling: `judged`
# bakes 3 s (~100 canary requests) for the deploys that must be rolled back.
GATE = {"warmup": 0, "bake": 3, "max_extensions": 0, "on_inconclusive": "proceed",
        "probe_interval": 0.2}
QUICK = dict(GATE, bake=1)
LOAD_RATE = 120.0


@pytest.fixture(scope="module")
def kinds(fleet, wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    repos = build_repos.build(tmp / "samples", ["harbor", "dory"])
    data = shared.fleet_yaml(fleet, wheelhouse)
    # No health timeout in defaults: harbor gets the kind command default (30 s).
    data["defaults"] = dict(data["defaults"], health={"interval": 0.2}, gate=dict(GATE))
    data["services"] = {
        "harbor": {
            "kind": "command", "repo": str(repos["harbor"].origin), "role": "web",
            "build": "sh build.sh", "build_inputs": ["src/", "build.sh"],
            "build_outputs": ["build/"],
            "command": "java -jar build/harbor.jar",
            "port": PORTS["harbor"], "graceful_timeout": 5, "health": {"path": "/healthz"},
        },
        "dory": {
            "kind": "wsgi", "repo": str(repos["dory"].origin), "role": "web",
            "app": "dory.wsgi:application", "port": PORTS["dory"], "workers": 2,
            "graceful_timeout": 5, "health": {"path": "/healthz", "timeout": 20},
        },
    }
    env = None
    # judged: the gate numbers above; quick: a 1 s bake; one_wave: quick, in a single
    # wave, for first releases (no baseline to compare a canary with) and for the
    # build-reuse deploys (they test staging; waves are tested by the others).
    for name, gate, rollout in (("judged", GATE, None), ("quick", QUICK, None),
                                ("one_wave", QUICK, ["100%"])):
        d = json.loads(json.dumps(data))
        d["defaults"]["gate"] = gate
        if rollout:
            d["defaults"]["rollout"] = rollout
        config = tmp / f"{name}.yaml"
        config.write_text(yaml.safe_dump(d, sort_keys=False))
        e = shared.Env(dir=tmp, config=config, samples=repos, fleet=fleet)
        env = env or e
        setattr(env, name, e)
    return env


# --- helpers -------------------------------------------------------------------


def sha(env, svc, label):
    return env.samples[svc].resolve(label)


def served(env, svc):
    return {h: env.served(h, PORTS[svc]) or {} for h in HOSTS}


def revisions(env, svc):
    return {h: body.get("revision") for h, body in served(env, svc).items()}


def currents(env, svc):
    return {h: env.current(h, svc) for h in HOSTS}


def last(env, svc, host="web-0"):
    return env.history(host, svc)[-1]


def run(env, *args, check=True, load_on=None):
    """`fab ARGS`, optionally under background traffic to `/` of every host of a service."""
    t0 = time.monotonic()
    if load_on is None:
        proc, stats = env.fab(*args, check=check), None
    else:
        urls = [env.url(h, "/", PORTS[load_on]) for h in HOSTS]
        with LoadGen(urls, threads=4, duration=120, rate=LOAD_RATE) as gen:
            time.sleep(0.5)  # the load is flowing before anything moves
            proc = env.fab(*args, check=check)
        stats = gen.stats.summary()
        stats.pop("per_url")
    print(f"\n--- fab {' '.join(args)} -> exit {proc.returncode} ({time.monotonic() - t0:.1f}s)\n"
          f"{proc.stdout}{proc.stderr}" + (f"--- load: {json.dumps(stats)}\n" if stats else ""))
    return proc


def assert_waves(out: str):
    for line in ("wave 1/3: web-0", "wave 2/3: web-1", "wave 3/3: web-2, web-3"):
        assert line in out, out
    assert out.index("wave 1/3") < out.index("wave 2/3") < out.index("wave 3/3")


def assert_rolled_back_at_canary(env, svc, proc, label_back):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wave 1 (web-0) failed" in proc.stderr, proc.stderr
    assert "wave 2/3" not in proc.stdout  # stopped at the canary
    assert revisions(env, svc) == {h: sha(env, svc, label_back) for h in HOSTS}
    rec = last(env, svc)
    assert (rec["outcome"], rec["failed_wave"], rec["rolled_back"]) == ("rolled_back", 1, ["web-0"])


# --- the tests -------------------------------------------------------------------


def test_first_releases_of_both_kinds_deploy_side_by_side(kinds):
    # Two services, two locks: their first deploys run at the same time on the same hosts.
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda svc: run(kinds.one_wave, f"deploy:{svc},ref=v1"),
                             ["harbor", "dory"]))
    assert [p.returncode for p in done] == [0, 0]
    for svc in ("harbor", "dory"):
        assert revisions(kinds, svc) == {h: sha(kinds, svc, "v1") for h in HOSTS}
    for h in HOSTS:
        # Java needs no virtualenv (harbor has no requirements file); dory gets one.
        assert not [p for p in (kinds.srv(h, "harbor") / "venvs").iterdir() if p.is_dir()]
        assert "venv_built" in last(kinds, "dory", h)["steps"]


# --- harbor: the Java service ------------------------------------------------------


def test_harbor_v2_through_canary_half_rest(kinds):
    pids = {h: body["pid"] for h, body in served(kinds, "harbor").items()}

    proc = run(kinds.quick, "deploy:harbor,ref=v2")
    assert_waves(proc.stdout)
    bodies = served(kinds, "harbor")
    for h in HOSTS:
        # Each host's JVM listens on its own address (HOST/PORT from the rendered env),
        # runs the v2 build, and says which host it is.
        assert bodies[h]["revision"] == sha(kinds, "harbor", "v2"), bodies[h]
        assert bodies[h]["hostname"] == h
        assert bodies[h]["version"] == "2" and bodies[h]["java"].startswith("17")
        assert bodies[h]["pid"] != pids[h]  # restarted: a JVM is not reloaded by a signal
        rel = kinds.srv(h, "harbor") / "releases" / kinds.current(h, "harbor")
        assert (rel / "build" / "harbor.jar").is_file()  # built while staging, in the release
        env = (rel / ".deploy" / "env").read_text()
        assert f"HOST={kinds.host(h).address}" in env and "PORT=8300" in env, env
        steps = last(kinds, "harbor", h)["steps"]
        assert "build" in steps and "activate_restart" in steps, steps
    # the gate counted the JVM's own access lines (its stdout, log/harbor.log)
    log = (kinds.srv("web-0", "harbor") / "log" / "harbor.log").read_text()
    assert re.search(r'^\S+Z 127\.0\.0\.\d+ "GET /healthz HTTP/1\.1" 200 2$', log, re.M)


def test_harbor_errors_20_is_rolled_back_at_the_canary(kinds):
    proc = run(kinds, "deploy:harbor,ref=errors-20", check=False, load_on="harbor")
    assert_rolled_back_at_canary(kinds, "harbor", proc, "v2")
    gate = next(g for g in last(kinds, "harbor")["gates"] if g["wave"] == 1)
    # judged on real traffic read from the JVM's log, not only on the probes of /healthz
    assert gate["outcome"] == "fail" and gate["figures"]["e_c"] >= 5, gate


def test_harbor_fails_to_start_is_rolled_back(kinds):
    t0 = time.monotonic()
    proc = run(kinds.quick, "deploy:harbor,ref=fails-to-start", check=False)
    assert_rolled_back_at_canary(kinds, "harbor", proc, "v2")
    assert time.monotonic() - t0 < 60  # a process that dies is not waited for like a slow one
    # the error says why: supervisord's verdict and the JVM's own last words
    assert "spawn error" in proc.stderr or "does not start" in proc.stderr, proc.stderr
    assert "fails-to-start: startup check failed" in proc.stderr
    log = (kinds.srv("web-0", "harbor") / "log" / "harbor.log").read_text()
    assert "fails-to-start: startup check failed" in log


def test_harbor_broken_build_stops_before_any_host_switches(kinds):
    before = currents(kinds, "harbor")
    proc = run(kinds.quick, "deploy:harbor,ref=broken-build", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no host was switched" in proc.stderr
    assert "error: package does.not does not exist" in proc.stderr  # javac's own message
    assert "the build failed: sh build.sh" in proc.stderr
    assert "wave 1/3" not in proc.stdout
    assert currents(kinds, "harbor") == before
    assert revisions(kinds, "harbor") == {h: sha(kinds, "harbor", "v2") for h in HOSTS}
    for h in HOSTS:
        rec = last(kinds, "harbor", h)
        assert (rec["outcome"], rec["failed_step"]) == ("failed", "stage")
        # the half-built release is gone
        names = os.listdir(kinds.srv(h, "harbor") / "releases")
        assert not [n for n in names if n.endswith(sha(kinds, "harbor", "broken-build")[:7])]


def test_harbor_smart_deploy_rebuilds_when_build_inputs_change(kinds):
    plan = run(kinds.quick, "plan:harbor,ref=v3").stdout
    assert re.search(r"RUN\s+build\s+build inputs changed since \w+: build\.sh", plan), plan
    run(kinds.one_wave, "smart_deploy:harbor,ref=v3")
    assert revisions(kinds, "harbor") == {h: sha(kinds, "harbor", "v3") for h in HOSTS}
    steps = last(kinds, "harbor")["all_steps"]
    assert "build" in steps and "build_reused" not in steps, steps


def test_harbor_smart_deploy_reuses_the_build_for_a_code_free_change(kinds):
    repo = kinds.samples["harbor"]
    readme = repo.commit("harbor: a README", {"README.md": "harbor: a JDK-only HTTP server\n"},
                         label="readme")
    jars = {h: os.stat(kinds.srv(h, "harbor") / "current" / "build" / "harbor.jar")
            for h in HOSTS}
    plan = run(kinds.quick, f"plan:harbor,ref={readme}").stdout
    assert re.search(r"skip\s+build\s+build inputs \(src/, build\.sh\) unchanged", plan), plan
    run(kinds.one_wave, f"smart_deploy:harbor,ref={readme}")
    assert revisions(kinds, "harbor") == {h: readme for h in HOSTS}
    for h in HOSTS:
        steps = last(kinds, "harbor", h)["steps"]
        assert "build_reused" in steps and "build" not in steps, steps
        new = os.stat(kinds.srv(h, "harbor") / "current" / "build" / "harbor.jar")
        assert new.st_ino == jars[h].st_ino  # the live build, hard-linked, not rebuilt


# --- dory: the plain WSGI app ---------------------------------------------------------


def test_dory_v2_then_errors_20_rolled_back_and_rollback(kinds):
    proc = run(kinds.quick, "deploy:dory,ref=v2")
    assert_waves(proc.stdout)
    bodies = served(kinds, "dory")
    for h in HOSTS:
        assert bodies[h]["revision"] == sha(kinds, "dory", "v2") and bodies[h]["hostname"] == h
        assert "activate_reload" in last(kinds, "dory", h)["steps"]  # gunicorn: graceful HUP

    proc = run(kinds, "deploy:dory,ref=errors-20", check=False, load_on="dory")
    assert_rolled_back_at_canary(kinds, "dory", proc, "v2")

    run(kinds.quick, "rollback:dory")
    assert revisions(kinds, "dory") == {h: sha(kinds, "dory", "v1") for h in HOSTS}
    assert last(kinds, "dory")["action"] == "rollback"
