"""Issue 15 §3: deploy through a bastion (ProxyJump), as ops teams have it, with
strict host keys on both hops; refused when the bastion's key is unknown.

The bastion is one more sshd of the test fleet, on the fleet's first address
and port 2223 (its own host key and client key); the targets are web-1 and
web-2 of the fleet. services.yaml gives only their addresses: the port, the
user, the keys and the ProxyJump all come from an OpenSSH client config
(ssh.config_file), as they would from ~/.ssh/config.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

import build_repos
import fleet as fleet_mod

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["web-1", "web-2"]
PORT = 8020  # the service's; no other test uses it


@pytest.fixture(scope="module")
def bastion(tmp_path_factory):
    b = fleet_mod.Fleet(tmp_path_factory.mktemp("bastion"), n=1, prefix="jump",
                        first_octet=fleet_mod.first_octet(), ssh_port=2223)
    try:
        b.start()
    except fleet_mod.FleetError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    try:
        yield b.hosts[0]
    finally:
        b.stop()


def ssh_config_text(fleet, jump) -> str:
    addresses = " ".join(fleet.host(h).address for h in HOSTS)
    return (f"Host bastion\n"
            f"    HostName {jump.address}\n"
            f"    Port {jump.ssh_port}\n"
            f"    User root\n"
            f"    IdentityFile {jump.hostdir.parent / 'id_ed25519'}\n"
            f"Host {addresses}\n"
            f"    ProxyJump bastion\n"
            f"    Port {fleet.host(HOSTS[0]).ssh_port}\n"
            f"Host *\n"
            f"    User root\n"
            f"    IdentityFile {fleet.identity_file}\n")


@pytest.fixture(scope="module")
def jumpenv(fleet, bastion, wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jumpenv")
    # Its own origin: other tests move the shared sample's `production`.
    samples = build_repos.build(tmp / "samples", names=["skiff"])
    (tmp / "ssh_config").write_text(ssh_config_text(fleet, bastion))
    jump_known = bastion.hostdir.parent / "known_hosts"
    (tmp / "known_hosts").write_text(fleet.known_hosts.read_text() + jump_known.read_text())
    data = {
        "ssh": {"known_hosts": "known_hosts", "config_file": "ssh_config"},
        "hosts": {h: {"address": fleet.host(h).address} for h in HOSTS},
        "defaults": {"pip_args": f"--no-index --find-links {wheelhouse}",
                     "health": {"timeout": 20, "interval": 0.2},
                     "gate": {"warmup": 0, "bake": 1, "on_inconclusive": "proceed"}},
        "services": {"jumpy": {"kind": "flask", "repo": str(samples["skiff"].origin),
                               "hosts": HOSTS, "app": "skiff.app:app", "port": PORT,
                               "graceful_timeout": 5}},
    }
    (tmp / "services.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # The same, with a known_hosts that has the targets' keys but not the bastion's.
    (tmp / "no-bastion").mkdir()
    (tmp / "no-bastion/known_hosts").write_text(fleet.known_hosts.read_text())
    (tmp / "no-bastion/ssh_config").write_text(ssh_config_text(fleet, bastion))
    (tmp / "no-bastion/services.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    yield tmp
    for h in HOSTS:  # stop what the test started on the fleet
        ctl = fleet.host(h).srv / "jumpy/bin/ctl"
        if ctl.exists():
            fleet.ssh(h, "/srv/jumpy/bin/ctl stop")


def deploytools(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(config),
               DEPLOYTOOLS_CACHE=str(config.parent / "cache"), DEPLOYTOOLS_USER="tester")
    env.pop("DEPLOYTOOLS_JSON", None)
    env.pop("SSH_AUTH_SOCK", None)  # no agent: the keys come from the ssh config
    return subprocess.run([sys.executable, "-m", "deploytools", *args], cwd=config.parent,
                          env=env, capture_output=True, text=True, timeout=600)


def logins(host) -> int:
    return host.sshd_log.read_text(errors="replace").count("Accepted publickey for root")


def test_deploy_through_a_bastion_with_strict_keys_on_both_hops(jumpenv, fleet, bastion):
    before = logins(bastion)
    for args in (["setup:jumpy"], ["deploy:jumpy,ref=v1"], ["status:jumpy"]):
        proc = deploytools(jumpenv / "services.yaml", *args)
        assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    for h in HOSTS:
        r = requests.get(f"http://{fleet.host(h).address}:{PORT}/", timeout=5)
        assert r.status_code == 200 and r.json()["version"] == "1", r.text
        assert r.json()["hostname"] == h
        assert (fleet.host(h).srv / "jumpy/current").is_symlink()
    # Every connection went through the bastion: it saw the logins (one per command
    # line at least; with the pool, one per command line and bastion).
    assert logins(bastion) - before >= 3


def test_unknown_bastion_key_is_refused(jumpenv, fleet, bastion):
    config = jumpenv / "no-bastion/services.yaml"
    proc = deploytools(config, "deploy:jumpy")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert err.startswith("Error: ") and "Traceback" not in err, err
    assert "bastion" in err and f"{bastion.address}:{bastion.ssh_port}" in err, err
    assert "not in" in err and str(jumpenv / "no-bastion/known_hosts") in err, err
    assert f"ssh-keyscan -p {bastion.ssh_port} {bastion.address}" in err, err
    # The unknown key was not written anywhere: still refused the second time.
    again = deploytools(config, "status:jumpy")
    assert again.returncode != 0 and "not in" in again.stderr, again.stderr
    assert f"[{bastion.address}]:{bastion.ssh_port}" not in (jumpenv / "no-bastion/known_hosts").read_text()
