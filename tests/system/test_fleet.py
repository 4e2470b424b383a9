"""The test fleet itself: real sshd hosts, private /srv and hostname, strict
host keys, key-only auth, and a teardown that leaves nothing behind."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import fleet as fleet_mod

pytestmark = pytest.mark.system

TESTS_DIR = Path(fleet_mod.__file__).resolve().parent


def _port_open(address, port):
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_each_host_answers_its_own_hostname(fleet):
    assert [h.name for h in fleet.hosts] == ["web-0", "web-1", "web-2", "web-3"]
    first = fleet_mod.first_octet()
    assert [h.address for h in fleet.hosts] == [f"127.0.0.{i}" for i in range(first, first + 4)]
    for h in fleet.hosts:
        r = fleet.ssh(h, "hostname")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == h.name


def test_yaml_helpers_describe_the_fleet(fleet):
    assert fleet.hosts_yaml()["web-2"] == {"address": f"127.0.0.{fleet_mod.first_octet() + 2}",
                                           "port": 2222, "user": "root"}
    ssh = fleet.ssh_config_yaml()
    assert Path(ssh["known_hosts"]) == fleet.known_hosts
    assert Path(ssh["identity_file"]) == fleet.identity_file
    lines = fleet.known_hosts.read_text().splitlines()
    first = fleet_mod.first_octet()
    assert [line.split()[0] for line in lines] == [f"[127.0.0.{i}]:2222"
                                                   for i in range(first, first + 4)]
    assert all(line.split()[1] == "ssh-ed25519" for line in lines)


def test_srv_is_private_to_each_host(fleet):
    name = f"fleet-probe-{uuid.uuid4().hex}"
    web0, web1 = fleet.hosts[0], fleet.hosts[1]
    r = fleet.ssh(web0, f"echo hello-from-$(hostname) > /srv/{name}")
    assert r.returncode == 0, r.stderr
    try:
        # the controller sees it under the host's srv folder...
        assert (web0.srv / name).read_text() == "hello-from-web-0\n"
        # ...but not in its own /srv, and neither does web-1
        assert not Path("/srv", name).exists()
        assert fleet.ssh(web1, f"test -e /srv/{name}").returncode == 1
        assert fleet.ssh(web0, f"cat /srv/{name}").stdout == "hello-from-web-0\n"
    finally:
        (web0.srv / name).unlink()


def test_sftp_works(fleet):
    # fabric's put()/get() use SFTP: the hosts run internal-sftp.
    host = fleet.hosts[2]
    client = fleet.paramiko_client(host)
    try:
        sftp = client.open_sftp()
        with sftp.file("/srv/sftp-probe", "w") as f:
            f.write("via sftp\n")
        sftp.close()
    finally:
        client.close()
    try:
        assert (host.srv / "sftp-probe").read_text() == "via sftp\n"
    finally:
        (host.srv / "sftp-probe").unlink()


def test_wrong_or_unknown_host_key_is_rejected(fleet, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    keytype, keydata = (tmp_path / "other_key.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[{fleet.host('web-0').address}]:2222 {keytype} {keydata}\n")
    r = fleet.ssh("web-0", "hostname", known_hosts=wrong)
    assert r.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr or \
        "Host key verification failed" in r.stderr, r.stderr

    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    r = fleet.ssh("web-0", "hostname", known_hosts=empty)
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr, r.stderr


def test_only_the_fleet_key_logs_in(fleet, tmp_path):
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    r = fleet.ssh("web-1", "hostname", identity_file=stranger)
    assert r.returncode == 255
    assert "Permission denied" in r.stderr, r.stderr


def test_wheelhouse_installs_offline_on_a_host(fleet, wheelhouse):
    # What a deploy does on a host: a fresh venv filled from the shared
    # wheelhouse, no index.  Proves the hosts see it and it is complete.
    reqs = " ".join(shlex.quote(r) for r in fleet_mod.TEST_REQUIREMENTS)
    r = fleet.ssh("web-3",
                  "set -e; rm -rf /srv/wheel-check; python3 -m venv /srv/wheel-check; "
                  f"/srv/wheel-check/bin/pip install -q --disable-pip-version-check "
                  f"--no-index --find-links {shlex.quote(str(wheelhouse))} {reqs}; "
                  "/srv/wheel-check/bin/python -c 'import django, flask, gunicorn, psycopg, "
                  "supervisor; print(\"ok\")'; rm -rf /srv/wheel-check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("ok")


def _daemonize(f, host):
    """Leave two daemons on the host, the way supervisord/gunicorn do: one
    that exits on SIGTERM and one that ignores it."""
    r = f.ssh(host,
              "setsid sleep 1000 </dev/null >/dev/null 2>&1 & "
              "setsid sh -c 'trap \"\" TERM; exec sleep 1001' </dev/null >/dev/null 2>&1 & "
              "echo started")
    assert r.returncode == 0, r.stderr


def test_stop_leaves_nothing_behind(tmp_path):
    f = fleet_mod.Fleet(tmp_path, n=1, prefix="solo", first_octet=31, stop_grace=1.0)
    with f:
        host = f.hosts[0]
        ns, sshd_pid = host.mnt_ns, host.sshd_pid
        assert ns and ns != os.readlink("/proc/self/ns/mnt")
        assert f.ssh(host, "hostname").stdout.strip() == "solo-0"
        _daemonize(f, host)
        time.sleep(0.3)
        pids = fleet_mod.pids_in_namespace(ns)
        assert sshd_pid in pids
        assert len(pids) >= 3  # sshd + the two daemons
    assert fleet_mod.pids_in_namespace(ns) == []
    assert not os.path.exists(f"/proc/{sshd_pid}") or not fleet_mod._alive(sshd_pid)
    assert not _port_open("127.0.0.31", 2222)
    f.stop()  # idempotent


def test_kill_stale_fleets_cleans_up_after_a_killed_run(tmp_path):
    # A controller that dies of SIGKILL runs no cleanup at all.
    script = (
        "import os, signal, sys, time\n"
        "import fleet\n"
        f"f = fleet.Fleet({str(tmp_path)!r}, n=1, prefix='stale', first_octet=41)\n"
        "f.start()\n"
        "f.ssh(f.hosts[0], \"setsid sleep 1000 </dev/null >/dev/null 2>&1 &\")\n"
        "print(f.hosts[0].mnt_ns, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ns = proc.stdout.strip()
    try:
        assert fleet_mod.pids_in_namespace(ns), "the killed run left nothing to clean?"
        assert _port_open("127.0.0.41", 2222)
        assert fleet_mod.kill_stale_fleets() >= 2
        assert fleet_mod.pids_in_namespace(ns) == []
        assert not _port_open("127.0.0.41", 2222)
    finally:
        if ns.startswith("mnt:") and ns != os.readlink("/proc/self/ns/mnt"):
            fleet_mod.kill_namespace(ns, grace=0)


def test_kill_stale_fleets_spares_live_fleets(fleet):
    fleet_mod.kill_stale_fleets()
    for h in fleet.hosts:
        assert fleet.ssh(h, "hostname").stdout.strip() == h.name
