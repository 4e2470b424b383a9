"""A deploy environment on the real fleet: sample repos, a services.yaml, and `fab`.

Plain Python, imported by the system tests' conftest and by tests that build their own
environment (tests/, tests/system/ and examples/ are on pytest's `pythonpath`)."""
from __future__ import annotations

import json
import queue
import os
import shlex
import subprocess
import threading
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    dir: Path
    config: Path
    samples: dict
    fleet: object
    smart_repo: object = None

    def fab(self, *args: str, check: bool | None = True, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run our `fab` the way an operator does, from the project directory."""
        full_env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(self.config),
                        DEPLOYTOOLS_CACHE=str(self.dir / "cache"), DEPLOYTOOLS_USER="tester",
                        **(env or {}))
        full_env.pop("DEPLOYTOOLS_JSON", None)
        proc = subprocess.run([sys.executable, "-m", "deploytools", *args], cwd=ROOT,
                              env=full_env, capture_output=True, text=True, timeout=timeout)
        if check is True and proc.returncode != 0:
            raise AssertionError(f"fab {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def host(self, name: str):
        return self.fleet.host(name)

    def url(self, name: str, path: str = "/", port: int = 8000) -> str:
        return f"http://{self.host(name).address}:{port}{path}"

    def served(self, name: str, port: int = 8000) -> dict | None:
        try:
            return requests.get(self.url(name, "/", port), timeout=5).json()
        except (requests.RequestException, ValueError):
            return None

    def srv(self, name: str, service: str = "airship") -> Path:
        return self.host(name).srv / service

    def current(self, name: str, service: str = "airship") -> str | None:
        link = self.srv(name, service) / "current"
        return os.readlink(link).split("/")[-1] if link.is_symlink() else None

    def history(self, name: str, service: str = "airship") -> list[dict]:
        path = self.srv(name, service) / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fleet_yaml(fleet, wheelhouse) -> dict:
    """A services.yaml without its services: `fleet`'s ssh, hosts and `web` role, and the
    suite's defaults (installs from the test wheelhouse, a 1 s bake)."""
    return {
        "ssh": fleet.ssh_config_yaml(),
        "hosts": fleet.hosts_yaml(),
        "roles": {"web": [h.name for h in fleet.hosts]},
        "defaults": {"pip_args": f"--no-index --find-links {wheelhouse}", "keep_releases": 3,
                     "health": {"timeout": 20, "interval": 0.2},
                     "gate": {"warmup": 0, "bake": 1, "on_inconclusive": "proceed"}},
    }


def services_yaml(fleet, samples, wheelhouse, tmp: Path) -> dict:
    return {
        **fleet_yaml(fleet, wheelhouse),
        "services": {
            "airship": {
                "kind": "django", "repo": str(samples["airship"].origin), "role": "web",
                "app": "airship.wsgi:application", "port": 8000, "workers": 2,
                "graceful_timeout": 5,
                "env": {"DJANGO_SETTINGS_MODULE": "airship.settings"},
            },
            "smart": {  # the same Django sample, for the smart-deploy tests
                "kind": "django", "repo": str(samples["airship"].origin), "role": "web",
                "app": "airship.wsgi:application", "port": 8002, "workers": 2,
                "graceful_timeout": 5,
                "env": {"DJANGO_SETTINGS_MODULE": "airship.settings"},
            },
            "skiff": {
                "kind": "flask", "repo": str(samples["skiff"].origin), "role": "web",
                "app": "skiff.app:app", "port": 8001, "graceful_timeout": 5,
            },
        },
    }


def _pg(sql: str, db: str = "postgres") -> str:
    proc = subprocess.run(["su", "postgres", "-c", f"psql -v ON_ERROR_STOP=1 -qAt -d {db}"],
                          input=sql, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed: {proc.stderr}")
    return proc.stdout.strip()


@dataclass
class Postgres:
    host: str = "127.0.0.1"
    port: int = 5432

    def database(self, name: str) -> str:
        """A fresh database and role `name` (suffixed with DEPLOYTOOLS_TEST_OCTET when that
        is set, so two checkouts can share the cluster); returns its DATABASE_URL."""
        name = self.db_name(name)
        _pg(f"DROP DATABASE IF EXISTS {name}; DROP ROLE IF EXISTS {name};"
            f"CREATE ROLE {name} LOGIN PASSWORD '{name}'; CREATE DATABASE {name} OWNER {name};")
        return f"postgres://{name}:{name}@{self.host}:{self.port}/{name}"

    @staticmethod
    def db_name(name: str) -> str:
        slot = os.environ.get("DEPLOYTOOLS_TEST_OCTET")
        return f"{name}_{int(slot)}" if slot else name

    def query(self, db: str, sql: str) -> str:
        return _pg(sql, self.db_name(db))


class Running:
    """A fab subprocess whose stdout lines are collected (with arrival times) as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid
        self.lines: "queue.Queue[tuple[float, str]]" = queue.Queue()
        self.seen: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, predicate, timeout: float) -> tuple[float, str]:
        """The first line (from now on, or already seen) matching predicate."""
        for item in self.seen:
            if predicate(item[1]):
                return item
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                code = self.proc.poll()
                err = self.proc.stderr.read() if code is not None else ""
                raise AssertionError(f"no matching line after {timeout}s; got:\n"
                                     + "\n".join(x[1] for x in self.seen)
                                     + f"\n--- exit {code}\n{err}") from None
            self.seen.append(item)
            if predicate(item[1]):
                return item

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, "\n".join(x[1] for x in self.seen), stderr

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ServiceEnv:
    """One service of a test module on the shared fleet: its own services.yaml (the
    deployenv's hosts and ssh, `services` replaced), `fab` as an operator runs it, and
    what is on each host. Subclasses set SERVICE, PORT and HOSTS."""

    SERVICE = ""
    PORT = 0
    HOSTS = ["web-0", "web-1", "web-2", "web-3"]

    def __init__(self, env, sample, dir: Path, service: dict, **environ):
        self.env, self.sample, self.dir = env, sample, dir
        self.data = yaml.safe_load(env.config.read_text())
        self.data["services"] = {self.SERVICE: service}
        self.config = dir / "services.yaml"
        self.extra_environ = environ
        self.write()

    def write(self, data: dict | None = None) -> Path:
        """(Re)write services.yaml: `data`, or the module's own."""
        self.config.write_text(yaml.safe_dump(data or self.data, sort_keys=False))
        return self.config

    def environ(self, user: str = "tester", cache: str = "cache", **extra) -> dict:
        env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(self.config),
                   DEPLOYTOOLS_CACHE=str(self.dir / cache), DEPLOYTOOLS_USER=user,
                   **{**self.extra_environ, **extra})
        env.pop("DEPLOYTOOLS_JSON", None)
        return env

    def fab(self, *args, check=True, timeout=300, **env) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "deploytools", *args], cwd=ROOT,
                              env=self.environ(**env), capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"fab {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def spawn(self, *args, **env) -> "Running":
        return Running(subprocess.Popen(
            [sys.executable, "-m", "deploytools", *args], cwd=ROOT, env=self.environ(**env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))

    def srv(self, host: str) -> Path:
        return self.env.fleet.host(host).srv / self.SERVICE

    def stop_everywhere(self) -> None:
        """Stop the service's supervisord on each of its hosts: a module's teardown
        leaves nothing running for the next modules."""
        ctl = shlex.quote(f"/srv/{self.SERVICE}/bin/ctl")
        for h in self.HOSTS:
            self.env.fleet.ssh(h, f"[ -x {ctl} ] && {ctl} stop || true", timeout=60)

    def current(self, host: str) -> str | None:
        link = self.srv(host) / "current"
        return os.readlink(link).split("/")[-1] if link.is_symlink() else None

    def history(self, host: str) -> list[dict]:
        path = self.srv(host) / "history.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
            if path.exists() else []

    def served(self, host: str) -> dict | None:
        try:
            addr = self.env.fleet.host(host).address
            return requests.get(f"http://{addr}:{self.PORT}/", timeout=5).json()
        except (requests.RequestException, ValueError):
            return None

    def revisions(self) -> dict:
        return {h: (self.served(h) or {}).get("revision") for h in self.HOSTS}

    def sha(self, label: str) -> str:
        return self.sample.resolve(label)
