"""Faults a real shop meets in its first month, on the four real SSH hosts.

Every case ends by checking the end state a deploy promises whatever happens:
every host serves a working release, the production branch and the tags did
not move unless the deploy succeeded, no host is left locked, every reachable
host has a history record of what happened, and the exit code says it (0 done,
1 failed and rolled back cleanly, 3 a human must look, 4 locked).

A service of its own (`faults`: the skiff Flask sample from its own origin, on
port 8600) keeps these out of the other modules' way. The cases run in file
order: each starts from the fleet serving `v2` everywhere.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import build_repos
from sysenv import ServiceEnv

pytestmark = pytest.mark.system

SVC = "faults"
PORT = 8600
HOSTS = ["web-0", "web-1", "web-2", "web-3"]
BRANCH = "faults-production"
STEP_TIMEOUT = 45  # ssh.command_timeout while a host is frozen (staging must fit in it)


class Faults(ServiceEnv):
    SERVICE, PORT = SVC, PORT

    def __init__(self, env, sample, dir: Path):
        super().__init__(env, sample, dir, {
            "kind": "flask", "repo": str(sample.origin), "role": "web",
            "app": "skiff.app:app", "port": PORT, "workers": 2, "graceful_timeout": 3,
            "production_branch": BRANCH, "tag_prefix": "faults-",
            "rollout": [1, "50%", "100%"], "keep_releases": 10,
            "gate": {"warmup": 0, "bake": 1, "max_extensions": 0,
                     "on_inconclusive": "proceed"}}, DEPLOYTOOLS_LOCK_HEARTBEAT="1")

    # -- the end state ---------------------------------------------------------------
    def revision(self, host: str) -> str | None:
        return (self.served(host) or {}).get("revision")

    def locked(self) -> list[str]:
        return [h for h in HOSTS if (self.srv(h) / ".lock").exists()]

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.sample.origin), *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    def production(self) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}")
        except subprocess.CalledProcessError:
            return None

    def tags(self) -> list[str]:
        return sorted(self.git("tag", "--list", "faults-*").split())

    def snapshot(self) -> dict:
        return {"current": {h: self.current(h) for h in HOSTS}, "serving": self.revisions(),
                "production": self.production(), "tags": self.tags(),
                "records": {h: len(self.history(h)) for h in HOSTS}}

    def assert_unchanged(self, before: dict, *, outcome: str, hosts=HOSTS) -> list[dict]:
        """Nothing moved: same releases live and serving, branch and tags where they
        were, no lock left, and each host in `hosts` recorded the attempt."""
        assert {h: self.current(h) for h in HOSTS} == before["current"]
        assert self.revisions() == before["serving"]
        assert self.production() == before["production"]
        assert self.tags() == before["tags"]
        assert self.locked() == []
        records = []
        for h in hosts:
            new = self.history(h)[before["records"][h]:]
            assert [r["outcome"] for r in new] == [outcome], (h, new)
            records.append(new[0])
        return records


@pytest.fixture(scope="module")
def faults(deployenv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    sample = build_repos.build(tmp / "samples", names=["skiff"])["skiff"]
    f = Faults(deployenv, sample, tmp)
    f.fab(f"setup:{SVC}")
    f.fab(f"deploy:{SVC},ref=v1")
    f.fab(f"deploy:{SVC},ref=v2")
    assert f.revisions() == {h: f.sha("v2") for h in HOSTS}
    yield f
    f.stop_everywhere()


def test_a_host_down_before_the_deploy(faults):
    """A fifth host that refuses connections: nothing is switched anywhere."""
    before = faults.snapshot()
    data = json.loads(json.dumps(faults.data))
    data["hosts"]["web-9"] = {"address": "127.0.0.254", "port": 2222}
    data["roles"]["web"] = HOSTS + ["web-9"]
    faults.write(data)
    try:
        r = faults.fab(f"deploy:{SVC},ref=v3", check=False)
    finally:
        faults.write()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "web-9" in r.stderr and "could not connect" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("Error:") == 1, r.stderr
    rec = faults.assert_unchanged(before, outcome="failed")[0]
    assert rec["failed_step"] == "lock"


def test_pip_failing(faults):
    before = faults.snapshot()
    bad = faults.sample.commit("skiff: require a package that does not exist",
                               {"requirements.txt": "Flask>=2.3\ngunicorn>=21\n"
                                                    "no-such-package-deploytools==9.9\n"},
                               branch="bad-requirement", base="v2")
    r = faults.fab(f"deploy:{SVC},ref={bad}", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no host was switched" in r.stderr, r.stderr
    assert "no-such-package-deploytools" in r.stderr and "Traceback" not in r.stderr
    faults.assert_unchanged(before, outcome="failed")


def test_an_import_error(faults):
    before = faults.snapshot()
    r = faults.fab(f"deploy:{SVC},ref=broken-import", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no host was switched" in r.stderr and "Traceback" not in r.stderr.split(
        "Error:")[0], r.stderr
    faults.assert_unchanged(before, outcome="failed")


def test_supervisord_stopped_on_one_host_comes_back_with_the_deploy(faults):
    """Someone stopped web-2's supervisord (and so the service): the next deploy starts
    it again and goes live everywhere."""
    supervisord = int((faults.srv("web-2") / "run" / "supervisord.pid").read_text())
    os.kill(supervisord, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while faults.revision("web-2") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert faults.revision("web-2") is None
    faults.fab(f"deploy:{SVC},ref=v3")
    assert faults.revisions() == {h: faults.sha("v3") for h in HOSTS}
    assert faults.production() == faults.sha("v3") and faults.locked() == []
    faults.fab(f"rollback:{SVC}")  # back to v2 for the next cases
    assert faults.revisions() == {h: faults.sha("v2") for h in HOSTS}


def test_the_port_taken_on_one_host_fails_before_any_switch(faults):
    """web-3's service is down and another program holds its port: a deploy must not
    find out by switching hosts. It refuses while staging, names the host and the port."""
    before = faults.snapshot()
    faults.env.fleet.ssh("web-3", f"/srv/{SVC}/bin/ctl stop", timeout=60)
    addr = faults.env.fleet.host("web-3").address
    squatter = subprocess.Popen([sys.executable, "-c", (
        "import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({addr!r}, {PORT})); s.listen(8); time.sleep(120)\n")])
    try:
        time.sleep(0.5)
        r = faults.fab(f"deploy:{SVC},ref=v3", check=False)
    finally:
        squatter.kill()
        squatter.wait()
        faults.env.fleet.ssh("web-3", f"/srv/{SVC}/bin/ctl start", timeout=60)
        deadline = time.monotonic() + 30
        while faults.revision("web-3") is None and time.monotonic() < deadline:
            time.sleep(0.2)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "web-3" in r.stderr and f"{PORT}" in r.stderr and "taken" in r.stderr, r.stderr
    assert "no host was switched" in r.stderr
    faults.assert_unchanged(before, outcome="failed")


def test_the_disk_filling_while_staging(faults):
    """web-2's venvs/ is a 256 KiB tmpfs: building the new release's virtualenv runs out of
    space. Staging fails there, nothing switches anywhere, the half-made venv is gone."""
    before = faults.snapshot()
    venvs = f"/srv/{SVC}/venvs"
    faults.env.fleet.ssh("web-2", f"mount -t tmpfs -o size=256k tmpfs {venvs}", check=True)
    try:
        r = faults.fab(f"deploy:{SVC},ref=v3", check=False)
        left = faults.env.fleet.ssh("web-2", f"ls -A {venvs}").stdout.split()
    finally:
        faults.env.fleet.ssh("web-2", f"umount {venvs}", check=True)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "web-2" in r.stderr and "No space left on device" in r.stderr, r.stderr
    assert "no host was switched" in r.stderr and "Traceback" not in r.stderr.split("Error:")[0]
    assert [x for x in left if not x.endswith(".log")] == []  # the half-built venv was removed
    faults.assert_unchanged(before, outcome="failed")


def test_sshd_killed_mid_wave(faults):
    """web-3 (wave 3) loses its sshd while wave 2 runs: the deploy cannot finish, so the
    hosts it switched go back; web-3 was never switched and still serves v2."""
    before = faults.snapshot()
    run = faults.spawn(f"deploy:{SVC},ref=v3")
    try:
        run.wait_for(lambda x: x.startswith("wave 2/"), timeout=240)
        faults.env.fleet.kill_sshd("web-3")
        code, out, err = run.finish(timeout=240)
    finally:
        run.kill()
        faults.env.fleet.restart_sshd("web-3")
    assert code == 1, (out, err)
    assert "web-3" in err and "rolled back" in err and "Traceback" not in err, err
    assert {h: faults.current(h) for h in HOSTS} == before["current"]
    assert faults.revisions() == before["serving"]
    assert faults.production() == before["production"] and faults.tags() == before["tags"]
    for h in HOSTS[:3]:
        assert faults.history(h)[-1]["outcome"] == "rolled_back"
    # web-3's lock could not be released while it was unreachable; its heartbeat has
    # stopped, so the next deploy takes it over, loudly, and converges.
    time.sleep(4)
    r = faults.fab(f"deploy:{SVC},ref=v3")
    assert "taking over the lock of a dead deploy" in r.stdout or faults.locked() == []
    assert faults.revisions() == {h: faults.sha("v3") for h in HOSTS}
    assert faults.locked() == []
    faults.fab(f"rollback:{SVC}")
    assert faults.revisions() == {h: faults.sha("v2") for h in HOSTS}


def test_a_host_frozen_mid_wave_fails_within_the_step_timeout(faults):
    """web-3's SSH session stops answering (SIGSTOP) without closing: the deploy may not
    hang. The wave that needs web-3 fails within the step timeout and every host that
    can be restored is; web-3 cannot be, so the exit code says a human must look."""
    before = faults.snapshot()
    data = json.loads(json.dumps(faults.data))
    data["ssh"] = dict(data["ssh"], command_timeout=STEP_TIMEOUT)
    faults.write(data)
    run = faults.spawn(f"deploy:{SVC},ref=v3")
    frozen: list[int] = []
    try:
        run.wait_for(lambda x: x.startswith("wave 2/"), timeout=240)
        frozen = faults.env.fleet.freeze_sessions("web-3")
        assert frozen
        t0 = time.monotonic()
        code, out, err = run.finish(timeout=STEP_TIMEOUT * 6 + 120)
        took = time.monotonic() - t0
    finally:
        faults.env.fleet.thaw(frozen)
        run.kill()
        faults.write()
    assert code in (1, 3), (out, err)
    assert "web-3" in err and "timed out" in err and "Traceback" not in err, err
    assert took < STEP_TIMEOUT * 6 + 60, took
    for h in HOSTS[:3]:
        assert faults.current(h) == before["current"][h]
    assert faults.production() == before["production"] and faults.tags() == before["tags"]
    # Thawed, one rollback puts the whole fleet on one release again.
    time.sleep(4)
    faults.fab(f"rollback:{SVC},to={before['current']['web-0']}")
    assert faults.revisions() == before["serving"]
    assert faults.locked() == []


def test_sigkill_mid_wave_then_rollback_converges(faults):
    """A CI runner SIGKILLs the job in wave 3: web-0 and web-1 are on v3, the others on
    v2. `fab rollback` then returns every host to the one release that was live
    everywhere before (v2), not each host one step back."""
    faults.fab(f"deploy:{SVC},ref=v3")
    before = faults.snapshot()
    assert set(before["serving"].values()) == {faults.sha("v3")}
    run = faults.spawn(f"deploy:{SVC},ref=v2,force=true")
    try:
        run.wait_for(lambda x: x.startswith("wave 3/"), timeout=240)
        # Killed once wave 3 began: its first host's activation noted it in that lock.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and json.loads(
                (faults.srv("web-2") / ".lock").read_text() or "{}").get("wave") != 3:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.finish(timeout=10)
    finally:
        run.kill()
    mixed = faults.revisions()
    assert mixed["web-0"] == faults.sha("v2") and mixed["web-1"] == faults.sha("v2")
    time.sleep(4)  # three missed heartbeats: the lock is stale
    r = faults.fab(f"rollback:{SVC}")
    assert "taking over the lock of a dead deploy" in r.stdout, r.stdout
    assert "mixed" in r.stdout and before["current"]["web-3"] in r.stdout, r.stdout
    assert faults.revisions() == {h: faults.sha("v3") for h in HOSTS}
    assert faults.locked() == []
    rec = faults.history("web-0")[-1]
    assert rec["action"] == "rollback" and rec["outcome"] == "success"
    assert rec["took_over_lock"][0]["wave"] == 3
    faults.fab(f"rollback:{SVC},to={faults.sha('v2')}")


def test_the_tag_push_failing_after_a_good_rollout(faults):
    """Every wave passed, then origin refuses the tag: the release is live, and the tool
    says exactly that (exit 3), with the command that records it."""
    before = faults.snapshot()
    hook = Path(faults.sample.origin) / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'tags are frozen today' >&2\nexit 1\n")
    hook.chmod(0o755)
    try:
        r = faults.fab(f"deploy:{SVC},ref=v3", check=False)
    finally:
        hook.unlink()
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "is live on every host" in r.stderr and "tags are frozen today" in r.stderr
    assert f"deploytools deploy:{SVC},ref={faults.sha('v3')}" in r.stderr
    assert faults.revisions() == {h: faults.sha("v3") for h in HOSTS}
    assert faults.production() == before["production"] and faults.tags() == before["tags"]
    assert faults.locked() == []
    for h in HOSTS:
        assert faults.history(h)[-1]["outcome"] == "live_unpublished"
    faults.fab(f"deploy:{SVC},ref=v3")  # the command it gave records it
    assert faults.production() == faults.sha("v3")
    faults.fab(f"rollback:{SVC},to={faults.sha('v2')}")
