"""Issue 14: no secret in any process's command line, on any host, during real deploys.

A service whose `env` holds a marker secret is deployed, redeployed, restarted
and rolled back on two hosts, while a thread reads the command line of every
process on this machine (the test hosts' processes are this machine's) every
~10 ms, decoding base64 too, since that is how a file travels inside a script.
It must see the marker 0 times, and the app must still have received it. The
marker is not in `--json` output nor in the deploy history either.
"""
from __future__ import annotations

import base64
import dataclasses
import os
import re
import stat
import subprocess
import threading
import time
import uuid

import pytest
import yaml

import build_repos

pytestmark = pytest.mark.system

SVC = "vault"
PORT = 8020
HOSTS = ["web-0", "web-1"]
B64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def leaks(cmdline: bytes, marker: bytes) -> bool:
    """Is `marker` in this command line, as it is or base64-encoded at any offset?"""
    if marker in cmdline:
        return True
    for m in B64.finditer(cmdline):
        run = m.group()
        for shift in range(4):  # a run may begin mid-quantum
            part = run[shift:]
            part = part[:len(part) // 4 * 4]
            try:
                if marker in base64.b64decode(part):
                    return True
            except ValueError:
                pass
    return False


class Scanner:
    """Reads /proc/*/cmdline of every process every `interval` seconds."""

    def __init__(self, marker: bytes, interval: float = 0.01):
        self.marker, self.interval = marker, interval
        self.sightings: list[tuple[str, bytes]] = []
        self.scans = 0
        self._seen: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if self._seen.get(pid) == data:
                    continue
                self._seen[pid] = data
                if leaks(data, self.marker):
                    self.sightings.append((pid, data))
            self.scans += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Scanner":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def vault(deployenv, tmp_path_factory):
    marker = "MARKER" + uuid.uuid4().hex
    tmp = tmp_path_factory.mktemp("secrets")
    # Its own origin: other tests move the shared sample's `production`.
    samples = build_repos.build(tmp / "samples", names=["skiff"])
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(samples["skiff"].origin), "hosts": HOSTS,
        "app": "skiff.app:app", "port": PORT, "graceful_timeout": 5,
        "env": {"SECRET_KEY": marker, "DATABASE_URL": f"postgres://app:{marker}@db/app"}}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return dataclasses.replace(deployenv, config=config, samples=samples), marker


def test_the_scanner_sees_a_short_lived_secret_in_argv(vault):
    _, marker = vault
    env_file = f"# env\nSECRET_KEY={marker}\n".encode()
    forms = [marker, base64.b64encode(env_file).decode()]
    with Scanner(marker.encode()) as scan:
        for arg in forms:
            subprocess.run(["sh", "-c", "sleep 0.1", "sh", arg], check=True)
        time.sleep(0.1)
    # Both forms seen (a process that sh forks before it execs shows the same line).
    seen = {form for form in forms for _, cmd in scan.sightings if form.encode() in cmd}
    assert seen == set(forms), scan.sightings


def test_no_secret_in_any_command_line_during_deploys(vault):
    env, marker = vault
    outputs = []
    with Scanner(marker.encode()) as scan:
        for args in (["deploy:vault,ref=v1"], ["deploy:vault,ref=v2"], ["restart:vault"],
                     ["rollback:vault"], ["status:vault"], ["history:vault"]):
            proc = env.fab(*args, "--json")
            outputs.append(proc.stdout + proc.stderr)
    assert scan.scans > 100  # it really was looking, all along
    shown = [(pid, cmd.replace(marker.encode(), b"<MARKER>")[:300]) for pid, cmd in scan.sightings]
    assert scan.sightings == [], f"the secret was in {len(shown)} command line(s): {shown}"

    # Not in the --json output, nor in the history.
    assert not [o for o in outputs if marker in o]
    for h in HOSTS:
        history = (env.srv(h, SVC) / "history.jsonl").read_text()
        assert len(history.splitlines()) >= 2 and marker not in history

    # ...and the app did get it: in its env file, 0600, and in its processes' environment.
    for h in HOSTS:
        rel = env.srv(h, SVC) / "current"
        env_file = rel / ".deploy" / "env"
        assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
        assert f"SECRET_KEY={marker}" in env_file.read_text()
        assert (env.served(h, PORT) or {}).get("revision") == \
            env.samples["skiff"].resolve("v1")  # rolled back to v1
    served = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"DEPLOYTOOLS_SERVICE={SVC}".encode() in environ:
            assert f"SECRET_KEY={marker}".encode() in environ
            served += 1
    assert served >= 2 * len(HOSTS)  # a master and a worker on each host
