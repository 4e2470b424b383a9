"""Issue 14: no secret in any process's command line, on any host, during real deploys.
Issue 11: a secret kept out of services.yaml (`{from_env: NAME}`, `{from_file: PATH}`)
reaches the app and appears nowhere else.

A service whose `env` holds a marker secret written in services.yaml, one taken from
the deploy's environment and one from a file is deployed, redeployed with a rotated
secret, restarted, exec'd in and rolled back on two hosts, while a thread reads the
command line of every process on this machine (the test hosts' processes are this
machine's) every ~10 ms, decoding base64 too, since that is how a file travels inside
a script. It must see no marker, and the app must still have received them. No
marker is in the `--json` output of deploys, exec, restart, rollback and history, nor
in the deploy history; `plan` and `status` show the secrets as `<secret>` and the
one written in services.yaml as `<hidden>` (its name says secret); the two secrets kept out of services.yaml
are in no file on the hosts but the releases' env files (0600).
"""
from __future__ import annotations

import base64
import dataclasses
import json
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
    """Reads /proc/*/cmdline of every process every `interval` seconds, looking for
    any of `markers`."""

    def __init__(self, *markers: bytes, interval: float = 0.01):
        self.markers, self.interval = markers, interval
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
                if any(leaks(data, marker) for marker in self.markers):
                    self.sightings.append((pid, data))
            self.scans += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Scanner":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclasses.dataclass
class Vault:
    env: object  # sysenv.Env with the vault's own services.yaml
    marker: str  # written in services.yaml (issue 14)
    token_a: str  # VAULT_API_TOKEN, from the deploy's environment
    token_b: str  # ... rotated
    file_secret: str  # in token.txt, next to services.yaml

    @property
    def markers(self) -> list[str]:
        return [self.marker, self.token_a, self.token_b, self.file_secret]

    @property
    def hidden(self) -> list[str]:
        """The values that services.yaml does not hold."""
        return [self.token_a, self.token_b, self.file_secret]


@pytest.fixture(scope="module")
def vault(deployenv, tmp_path_factory):
    marker, token_a, token_b, file_secret = ("MARKER" + uuid.uuid4().hex for _ in range(4))
    tmp = tmp_path_factory.mktemp("secrets")
    # Its own origin: other tests move the shared sample's `production`.
    samples = build_repos.build(tmp / "samples", names=["skiff"])
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(samples["skiff"].origin), "hosts": HOSTS,
        "app": "skiff.app:app", "port": PORT, "graceful_timeout": 5,
        "env": {"SECRET_KEY": marker, "DATABASE_URL": f"postgres://app:{marker}@db/app",
                "API_TOKEN": {"from_env": "VAULT_API_TOKEN"},
                "FILE_TOKEN": {"from_file": "token.txt"}}}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp / "token.txt").write_text(file_secret + "\n")
    (tmp / "token.txt").chmod(0o600)
    return Vault(dataclasses.replace(deployenv, config=config, samples=samples),
                 marker, token_a, token_b, file_secret)


def test_the_scanner_sees_a_short_lived_secret_in_argv(vault):
    marker = vault.marker
    env_file = f"# env\nSECRET_KEY={marker}\n".encode()
    forms = [marker, base64.b64encode(env_file).decode()]
    with Scanner(marker.encode()) as scan:
        for arg in forms:
            subprocess.run(["sh", "-c", "sleep 0.1", "sh", arg], check=True)
        time.sleep(0.1)
    # Both forms seen (a process that sh forks before it execs shows the same line).
    seen = {form for form in forms for _, cmd in scan.sightings if form.encode() in cmd}
    assert seen == set(forms), scan.sightings


def environ_of_service() -> list[list[bytes]]:
    """The environment of every process of the vault service on this machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"DEPLOYTOOLS_SERVICE={SVC}".encode() in environ:
            found.append(environ)
    return found


def files_holding(root, values: list[str]) -> list[str]:
    """Every file under `root` (symlinks not followed) that holds one of `values`."""
    needles = [v.encode() for v in values]
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            if any(n in data for n in needles):
                hits.append(path)
    return hits


def test_a_missing_secret_stops_the_deploy_before_any_host_is_touched(vault):
    env = vault.env
    before = {h: (env.srv(h, SVC) / "history.jsonl").read_text()
              if (env.srv(h, SVC) / "history.jsonl").exists() else None for h in HOSTS}
    assert "VAULT_API_TOKEN" not in os.environ  # fab's environment is this one's
    proc = env.fab("deploy:vault,ref=v1", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    line = next(n for n, text in enumerate(env.config.read_text().splitlines(), 1)
                if "API_TOKEN" in text)
    assert err.startswith(f"Error: {env.config}:{line}: services.vault.env.API_TOKEN: the "
                          "environment variable VAULT_API_TOKEN is not set here"), err
    assert "export VAULT_API_TOKEN=" in err and "nothing was touched" in err
    assert err.count("\n") == 0 and "Traceback" not in err
    for h in HOSTS:  # no lock taken, no history written
        path = env.srv(h, SVC) / "history.jsonl"
        assert (path.read_text() if path.exists() else None) == before[h]
        assert not (env.srv(h, SVC) / ".lock").exists()


def test_no_secret_in_any_command_line_during_deploys(vault):
    env = vault.env
    with_a, with_b = {"VAULT_API_TOKEN": vault.token_a}, {"VAULT_API_TOKEN": vault.token_b}
    outputs = []  # of what deploys and operates: no value of env at all
    shown = []  # of plan and status: the env, every secret as <secret>
    with Scanner(*(m.encode() for m in vault.markers)) as scan:
        for args in (["deploy:vault,ref=v1"], ["deploy:vault,ref=v2"]):
            proc = env.fab(*args, "--json", env=with_a)
            outputs.append(proc.stdout + proc.stderr)
        for args in (["plan:vault,ref=v2", "--json"], ["plan:vault"]):
            shown.append(env.fab(*args, env=with_b).stdout)
        # The rotated token: a new env file, so the processes restart onto it.
        proc = env.fab("deploy:vault,ref=v2", "--json", env=with_b)
        outputs.append(proc.stdout + proc.stderr)
        rotated = environ_of_service()
        for h in HOSTS:
            assert "activate_restart" in env.history(h, SVC)[-1]["steps"]
        proc = env.fab("exec:vault,echo len=${#API_TOKEN} ${#FILE_TOKEN}", "--json")
        outputs.append(proc.stdout + proc.stderr)
        for args in (["restart:vault"], ["rollback:vault"], ["history:vault"]):
            proc = env.fab(*args, "--json")
            outputs.append(proc.stdout + proc.stderr)
        shown += [env.fab("status:vault", "--json").stdout, env.fab("status:vault").stdout]
    assert scan.scans > 100  # it really was looking, all along
    cleaned = []
    for pid, cmd in scan.sightings:
        for m in vault.markers:
            cmd = cmd.replace(m.encode(), b"<MARKER>")
        cleaned.append((pid, cmd[:300]))
    assert scan.sightings == [], f"a secret was in {len(cleaned)} command line(s): {cleaned}"

    # Not in the --json output of deploys, exec (it printed only the lengths), restart,
    # rollback and history. plan and status show the env: plain values as written, each
    # secret as <secret>, and a secret written in plain text (a secret's name, a URL's
    # password) as <hidden>.
    assert not [o for o in outputs for m in vault.markers if m in o]
    assert f"len={len(vault.token_b)} {len(vault.file_secret)}" in outputs[3]
    assert not [o for o in shown for m in vault.markers if m in o]
    for text in shown[1::2]:  # the human lines
        assert "SECRET_KEY=<hidden> " in text, text
        assert "API_TOKEN=<secret> (from_env VAULT_API_TOKEN)" in text, text
        assert f"FILE_TOKEN=<secret> (from_file {env.config.parent}/token.txt)" in text, text
    for text in shown[0::2]:  # JSON: one event holds the env
        events = [json.loads(line) for line in text.splitlines()]
        env_events = [e["env"] for e in events if "env" in e]
        assert env_events == [{"SECRET_KEY": "<hidden>",
                               "DATABASE_URL": "postgres://app:<hidden>@db/app",
                               "API_TOKEN": "<secret>", "FILE_TOKEN": "<secret>"}], events
    for h in HOSTS:
        history = (env.srv(h, SVC) / "history.jsonl").read_text()
        assert len(history.splitlines()) >= 2 and not [m for m in vault.markers if m in history]

    # ...and the app did get them: in its env file, 0600, and in its processes'
    # environment; the rotated token while v2 ran with it, the first one after the
    # rollback to v1 (a rollback returns to the release as it was staged, env and all).
    assert sum(f"API_TOKEN={vault.token_b}".encode() in e for e in rotated) >= 2 * len(HOSTS)
    for h in HOSTS:
        rel = env.srv(h, SVC) / "current"
        env_file = rel / ".deploy" / "env"
        assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
        text = env_file.read_text()
        assert f"SECRET_KEY={vault.marker}\n" in text  # one shell word: unquoted
        assert f"API_TOKEN={vault.token_a}\n" in text and f"FILE_TOKEN={vault.file_secret}\n" in text
        assert (env.served(h, PORT) or {}).get("revision") == \
            env.samples["skiff"].resolve("v1")  # rolled back to v1
    running = environ_of_service()
    assert len(running) >= 2 * len(HOSTS)  # a master and a worker on each host
    for environ in running:
        assert f"SECRET_KEY={vault.marker}".encode() in environ
        assert f"API_TOKEN={vault.token_a}".encode() in environ
        assert f"FILE_TOKEN={vault.file_secret}".encode() in environ

    # Nowhere else on the hosts: logs, manifests, history, the mirror, the venvs.
    for h in HOSTS:
        srv = env.srv(h, SVC)
        holders = files_holding(srv, vault.hidden)
        assert holders and all(p.startswith(str(srv / "releases")) and
                               p.endswith("/.deploy/env") for p in holders), holders
