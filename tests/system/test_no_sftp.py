"""Hosts whose SFTP does not work, or is tight: bare-0's sshd offers none (no `Subsystem
sftp`, as on some hardened servers); bare-1's answers with text before the protocol, as
an `sftp-server` started by a shell whose ~/.bashrc prints a greeting does (here the
subsystem is `echo`, which prints it alone); bare-2's works, with `MaxSessions 2`
(channels per connection; OpenSSH's default is 10).

What goes over SFTP where it works goes another way on the first two: the gate reads the
access logs with a program (the bytes in base64, after whatever the shell printed), and
the fleet's one download of a new virtualenv's requirements is skipped with a warning
(each host installs from the index) without any host waiting for a copy that cannot
come. On the third, the SFTP session kept open between reads gives its channel back when
a program needs it. A fleet of its own (three hosts, port 2224), one Flask service under
load.
"""
from __future__ import annotations

import threading
import time

import paramiko
import pytest
import yaml

import build_repos
import fleet as fleet_mod
import sysenv as shared
from deploytools import config, inventory
from loadgen import LoadGen

pytestmark = pytest.mark.system

SVC, PORT = "bare", 8061  # no other test uses it


@pytest.fixture(scope="module")
def bare(wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nosftp")
    f = fleet_mod.Fleet(tmp / "fleet", n=3, prefix="bare", first_octet=fleet_mod.first_octet(),
                        ssh_port=2224, sftp=[None, "/bin/echo Welcome to bare-1", "internal-sftp"],
                        max_sessions=[50, 50, 2])
    try:
        f.start()
    except fleet_mod.FleetError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    try:
        repos = build_repos.build(tmp / "samples", ["skiff"])
        data = shared.fleet_yaml(f, wheelhouse)
        data["services"] = {SVC: {
            "kind": "flask", "repo": str(repos["skiff"].origin), "role": "web",
            "app": "skiff.app:app", "port": PORT, "workers": 1, "graceful_timeout": 3,
            "gate": {"warmup": 0, "bake": 1, "max_extensions": 0,
                     "on_inconclusive": "proceed"}}}
        config = tmp / "services.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        env = shared.Env(dir=tmp, config=config, samples=repos, fleet=f)
        env.hosts = [h.name for h in f.hosts]
        yield env
    finally:
        f.stop()


@pytest.mark.parametrize("host, error", [
    (0, paramiko.SSHException),  # refused
    (1, paramiko.SFTPError),     # "Garbage packet received"
])
def test_the_hosts_sftp_really_does_not_work(bare, host, error):
    h = bare.fleet.hosts[host]
    client = paramiko.SSHClient()
    client.load_host_keys(str(bare.fleet.known_hosts))
    client.connect(h.address, port=h.ssh_port, username="root",
                   key_filename=str(bare.fleet.identity_file), look_for_keys=False,
                   allow_agent=False)
    try:
        with pytest.raises(error):
            client.open_sftp()
        _, out, _ = client.exec_command("echo still here")
        assert out.read() == b"still here\n"  # the connection itself is fine
    finally:
        client.close()


def test_a_first_deploy_installs_from_the_index_on_each_host_without_waiting(bare):
    bare.fab(f"setup:{SVC}")
    t0 = time.monotonic()
    r = bare.fab(f"deploy:{SVC},ref=v1", timeout=400)
    # The second host was told at once that no copy would come (by a program, since
    # SFTP is refused): it did not sit out its 600 s wait.
    assert time.monotonic() - t0 < 200, r.stdout
    assert "offers no SFTP that works" in r.stdout + r.stderr, r.stdout
    assert "installs from the index" in r.stdout + r.stderr
    sha = bare.samples["skiff"].resolve("v1")
    assert {h: (bare.served(h, PORT) or {}).get("revision") for h in bare.hosts} == \
        {h: sha for h in bare.hosts}
    steps = {h: bare.history(h, SVC)[-1]["steps"] for h in bare.hosts}
    assert all("venv_from_fleet_download" not in s for s in steps.values()), steps


def test_the_gate_counts_the_access_logs_read_by_a_program(bare):
    urls = [bare.url(h, "/", PORT) for h in bare.hosts]
    with LoadGen(urls, threads=4, duration=120, rate=100.0):
        time.sleep(1)
        bare.fab(f"deploy:{SVC},ref=v2")
    rec = bare.history(bare.hosts[0], SVC)[-1]
    assert rec["outcome"] == "success", rec
    gates = rec["gates"]
    # (A 1-s bake at this rate may be too short to judge: inconclusive, and proceed.)
    assert gates and all(g["outcome"] in ("pass", "inconclusive") for g in gates), gates
    # The canary's wave: every host's log read (the canary's and the baseline's), real
    # traffic counted, not only the probes.
    hosts = gates[0]["figures"]["hosts"]
    assert sorted(hosts) == sorted(bare.hosts)
    assert all(c["log"][1] >= 20 for c in hosts.values()), hosts


def test_an_idle_sftp_session_gives_its_channel_to_a_program(bare):
    # bare-2 grants two channels per connection. The SFTP session the gate keeps open
    # between reads, a long program, and then another program (the lock's heartbeat
    # during an activation, say): the idle session is closed for it, and reopened by
    # the next read.
    with inventory.Fleet(config.load(bare.config), ["bare-2"]) as fleet:
        t = fleet["bare-2"]
        assert t.read_growing("/etc/passwd", 0)[2].startswith(b"root:")  # SFTP open
        slow: list[str] = []
        thread = threading.Thread(target=lambda: slow.append(t.run("sleep 2; echo slow").stdout))
        thread.start()
        time.sleep(0.5)
        assert t.run("echo quick").stdout == "quick\n"
        thread.join()
        assert slow == ["slow\n"]
        assert t.read_growing("/etc/passwd", 0)[2].startswith(b"root:")  # SFTP again
