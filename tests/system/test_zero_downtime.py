"""Issue 10 on the real fleet: no request fails during any kind of activation.

Constant load on every host (tests/loadgen.py, at least 2,000 requests per
deploy) while the deploys that restart the program go out: a new requirement
(a new virtualenv), a changed `env`, `restart:svc,hard=true` and a rollback
across virtualenvs. Each must fail 0 requests: supervisord holds the listening
socket and the program restarts one slot at a time (docs/design.md).

Then the same through a real HAProxy in front of the fleet, with `lb:` set:
every host is drained before its restart and put back once it serves, and
HAProxy's own counters for the backend show no 5xx and no connection errors.

One service (`zd`, the Flask sample, port 8500) and one deploy environment are
shared by the cases: the tests run in file order and build on each other.
"""
from __future__ import annotations

import json
import time

import pytest
import yaml

import build_repos
import fleet as fleet_mod
from haproxy_fixture import HAProxy
import sysenv as shared
from loadgen import LoadGen

pytestmark = pytest.mark.system

HOSTS = ["web-0", "web-1", "web-2", "web-3"]
SVC, PORT = "zd", 8500
MIN_REQUESTS = 2000
RATE = 200.0  # requests/s over all hosts: well below what the fleet serves on 2 cores
LB_PORT = 8590


@pytest.fixture(scope="module")
def zd(fleet, wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zd")
    repos = build_repos.build(tmp / "samples", ["skiff"])
    data = shared.fleet_yaml(fleet, wheelhouse)
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(repos["skiff"].origin), "role": "web",
        "app": "skiff.app:app", "port": PORT, "workers": 2, "graceful_timeout": 5,
        "env": {"ZD_COLOUR": "blue"},
        # Canary, then the rest: still two waves with a gate, in less wall time.
        "rollout": [1, "100%"],
        # Every case deploys v3 again: keep the v2 release a rollback goes back to.
        "keep_releases": 10}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = shared.Env(dir=tmp, config=config, samples=repos, fleet=fleet)
    env.data = data
    return env


def write(env) -> None:
    env.config.write_text(yaml.safe_dump(env.data, sort_keys=False))


def revisions(env):
    return {h: (env.served(h, PORT) or {}).get("revision") for h in HOSTS}


def sha(env, label):
    return env.samples["skiff"].resolve(label)


def under_load(env, *args, urls=None):
    """`fab ARGS` under constant load on `urls` (every host by default), and the load
    goes on until at least MIN_REQUESTS were sent. Returns (fab's output, the stats)."""
    urls = urls or [env.url(h, "/", PORT) for h in HOSTS]
    with LoadGen(urls, threads=8, duration=300, rate=RATE) as gen:
        time.sleep(1)  # the load is flowing before anything moves
        proc = env.fab(*args)
        while gen.stats.requests < MIN_REQUESTS:
            time.sleep(0.2)
    stats = gen.stats.summary()
    stats.pop("per_url")
    return proc, stats


def modes(env, host="web-0"):
    return sorted({s for s in env.history(host, SVC)[-1]["steps"] if s.startswith("activate_")})


def assert_no_failures(stats):
    assert stats["requests"] >= MIN_REQUESTS
    assert stats["failures"] == 0, json.dumps(stats, indent=1)


def test_first_deploy(zd):
    zd.fab(f"setup:{SVC}")
    zd.fab(f"deploy:{SVC},ref=v2")
    assert revisions(zd) == {h: sha(zd, "v2") for h in HOSTS}
    status = zd.fab(f"status:{SVC}").stdout
    assert status.count("RUNNING") >= len(HOSTS)


def test_new_requirement_restarts_without_a_failed_request(zd):
    before = {h: zd.served(h, PORT)["pid"] for h in HOSTS}
    _, stats = under_load(zd, f"deploy:{SVC},ref=v3")
    assert revisions(zd) == {h: sha(zd, "v3") for h in HOSTS}
    assert "venv_built" in zd.history("web-0", SVC)[-1]["steps"]
    assert modes(zd) == ["activate_restart"]
    # A restart, not a reload: the masters are new processes.
    after = {h: zd.served(h, PORT)["pid"] for h in HOSTS}
    assert all(after[h] != before[h] for h in HOSTS)
    assert_no_failures(stats)


def test_changed_env_restarts_without_a_failed_request(zd):
    zd.data["services"][SVC]["env"]["ZD_COLOUR"] = "green"
    write(zd)
    _, stats = under_load(zd, f"deploy:{SVC},ref=v3,force=true")
    assert modes(zd) == ["activate_restart"]
    for h in HOSTS:
        env_file = zd.srv(h, SVC) / "current" / ".deploy" / "env"
        assert "ZD_COLOUR=green" in env_file.read_text().replace("'", "")
    assert_no_failures(stats)


def test_hard_restart_without_a_failed_request(zd):
    pids = {h: zd.served(h, PORT)["pid"] for h in HOSTS}
    _, stats = under_load(zd, f"restart:{SVC},hard=true")
    assert all(zd.served(h, PORT)["pid"] != pids[h] for h in HOSTS)
    assert_no_failures(stats)


def test_graceful_restart_brings_a_stopped_slot_back_without_a_failed_request(zd):
    # One slot of web-1 stopped by hand. A reload signals only when every slot runs:
    # web-1 restarts one slot at a time, the stopped one first, so the other serves.
    ctl = f"/srv/{SVC}/tools/bin/supervisorctl -c /srv/{SVC}/etc/supervisord.conf"

    def masters(h):  # each slot's state and master pid, as supervisord says them
        out = zd.fleet.ssh(h, f"{ctl} status || true", timeout=60).stdout
        return [(line.split()[1], line.split()[3].rstrip(",") if "pid" in line else None)
                for line in out.splitlines()]
    zd.fleet.ssh("web-1", f"{ctl} stop {SVC}:{SVC}_1", timeout=60)
    before = {h: masters(h) for h in HOSTS}
    assert [s for s, _ in before["web-1"]] == ["RUNNING", "STOPPED"]
    _, stats = under_load(zd, f"restart:{SVC}")
    after = {h: masters(h) for h in HOSTS}
    assert all([s for s, _ in after[h]] == ["RUNNING", "RUNNING"] for h in HOSTS), after
    # The other hosts were reloaded (the same masters), web-1's slots restarted.
    assert all(after[h] == before[h] for h in HOSTS if h != "web-1")
    assert after["web-1"][0][1] != before["web-1"][0][1]
    assert_no_failures(stats)


def test_rollback_across_virtualenvs_without_a_failed_request(zd):
    venv = (zd.srv("web-0", SVC) / "current" / ".deploy" / "venv").resolve()
    _, stats = under_load(zd, f"rollback:{SVC}")
    assert revisions(zd) == {h: sha(zd, "v2") for h in HOSTS}
    assert (zd.srv("web-0", SVC) / "current" / ".deploy" / "venv").resolve() != venv
    assert_no_failures(stats)


# --- the same through HAProxy, with `lb:` ------------------------------------------


@pytest.fixture(scope="module")
def haproxy(zd, tmp_path_factory):
    """HAProxy on its own loopback address (past the fleet's), the four hosts behind it;
    `lb:` points at its admin socket through web-0, reached over SSH like any host."""
    address = f"127.0.0.{fleet_mod.first_octet() + 8}"
    servers = {h: f"{zd.host(h).address}:{PORT}" for h in HOSTS}
    with HAProxy(tmp_path_factory.mktemp("haproxy"), address, {"zd": (LB_PORT, servers)}) as lb:
        zd.data["services"][SVC]["lb"] = {"host": "web-0", "socket": lb.socket,
                                          "backend": "zd", "drain_timeout": 10}
        # The gate counts what HAProxy saw (the load goes through it, not to the hosts).
        zd.data["services"][SVC]["gate"] = {"source": "haproxy"}
        write(zd)
        lb.wait_up()
        yield lb
        zd.data["services"][SVC].pop("lb")
        zd.data["services"][SVC].pop("gate")
        write(zd)


def test_status_shows_each_hosts_lb_state(zd, haproxy):
    out = zd.fab(f"status:{SVC}").stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert out.splitlines()[0].split()[-1].lower() == "lb"
    for h in HOSTS:
        assert lines[h].split()[-1] == "UP"


@pytest.mark.parametrize("case", ["new requirement", "changed env", "hard restart",
                                  "rollback across virtualenvs"])
def test_through_haproxy_without_a_failed_request(zd, haproxy, case):
    args = {"new requirement": f"deploy:{SVC},ref=v3",
            "changed env": f"deploy:{SVC},ref=v3,force=true",
            "hard restart": f"restart:{SVC},hard=true",
            "rollback across virtualenvs": f"rollback:{SVC}"}[case]
    if case == "changed env":
        zd.data["services"][SVC]["env"]["ZD_COLOUR"] = "red"
        write(zd)
    before = haproxy.stats()
    proc, stats = under_load(zd, args, urls=[haproxy.url("zd")])
    # Every host was taken out of the pool for its restart and put back.
    for h in HOSTS:
        assert f"{h}: drained on web-0" in proc.stdout, proc.stdout
        assert f"{h}: back in the pool" in proc.stdout, proc.stdout
    assert haproxy.stats()[("zd", "web-0")]["status"] == "UP"
    assert_no_failures(stats)
    rows = haproxy.stats()
    for name in ["BACKEND", *HOSTS]:
        for counter in ("hrsp_5xx", "econ", "eresp"):
            assert rows[("zd", name)][counter] == before[("zd", name)][counter] == "0", \
                (case, name, counter, rows[("zd", name)])
    served = int(rows[("zd", "BACKEND")]["stot"]) - int(before[("zd", "BACKEND")]["stot"])
    assert served >= MIN_REQUESTS
    if case != "hard restart" and case != "rollback across virtualenvs":
        # A deploy: its canary gate judged HAProxy's counts of the canary (web-0).
        gates = zd.history("web-0", SVC)[-1]["gates"]
        assert gates[0]["outcome"] == "pass" or gates[0]["figures"]["e_c"] == 0
        assert gates[0]["figures"]["hosts"]["web-0"]["log"][1] > 0
