"""The one execution seam: run a script, put a file, read a file on a host.

`SSHTarget` (fabric/paramiko) and `LocalTarget` (subprocess, for `local: true`
demo hosts) override only what differs. Nothing else in deploytools opens a
connection. One connection per host is opened lazily and reused for the whole
command.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from .errors import ConnectionFailed, DeployError, RemoteCommandError

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    host: str
    command: str
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


def _tail(text: str, lines: int = 15) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept)


class Target:
    """A host we can run shell scripts on. Subclasses implement `_exec`, `put`, `get`."""

    def __init__(self, host):
        self.host = host  # config.Host
        self.name = host.name

    def run(self, script: str, *, check: bool = True, timeout: float | None = None,
            what: str = "") -> Result:
        """Run `script` with bash (-e -u -o pipefail) and return its Result.

        With check, a non-zero exit raises RemoteCommandError whose message
        carries the last lines of output, so the CLI can say what failed.
        """
        body = "set -euo pipefail\n" + script
        result = self._exec(body, timeout)
        if check and not result.ok:
            output = result.stderr.strip() or result.stdout.strip()
            raise RemoteCommandError(
                f"{what or 'remote command'} failed (exit {result.exited}):\n{_tail(output)}",
                host=self.name, command=script, stdout=result.stdout,
                stderr=result.stderr, exited=result.exited)
        return result

    def _exec(self, script: str, timeout: float | None) -> Result:
        raise NotImplementedError

    def put(self, data: bytes | str, path: str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def get(self, path: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


class LocalTarget(Target):
    """A `local: true` host: commands run on this machine, in its own root."""

    def _exec(self, script: str, timeout: float | None) -> Result:
        try:
            proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            return Result(self.name, script, e.stdout or "", f"timed out after {timeout}s", 124)
        return Result(self.name, script, proc.stdout, proc.stderr, proc.returncode)

    def put(self, data: bytes | str, path: str, mode: int = 0o644) -> None:
        raw = data.encode() if isinstance(data, str) else data
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(path, mode)

    def get(self, path: str) -> bytes:
        return Path(path).read_bytes()


class SSHTarget(Target):
    """A host reached over SSH with strict host key checking."""

    def __init__(self, host, ssh):
        super().__init__(host)
        self.ssh = ssh  # config.Ssh
        self._conn = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        user = f"{self.host.user}@" if self.host.user else ""
        return f"{self.name} ({user}{self.host.address}:{self.host.port})"

    def _connection(self):
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def _open(self):
        import paramiko
        from fabric import Connection

        key = self.host.identity_file or self.ssh.identity_file
        connect_kwargs = {"look_for_keys": key is None, "allow_agent": key is None}
        if key:
            connect_kwargs["key_filename"] = [os.path.expanduser(key)]
        conn = Connection(self.host.address, user=self.host.user, port=self.host.port,
                          connect_timeout=self.ssh.connect_timeout,
                          connect_kwargs=connect_kwargs)
        # Fabric accepts unknown host keys by default; we never do.
        known_hosts = os.path.expanduser(self.ssh.known_hosts)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if os.path.exists(known_hosts):
            conn.client.load_host_keys(known_hosts)
        try:
            conn.open()
        except paramiko.BadHostKeyException:
            raise ConnectionFailed(
                f"the host key of {self.describe()} does not match the one in {known_hosts}. "
                "This may be an attack or a reinstalled server: check the key with its "
                "administrator, then fix that known_hosts entry.", host=self.name) from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise ConnectionFailed(
                    f"{self.describe()} is not in {known_hosts} (strict host key checking is on). "
                    f"After verifying its key, add it with: ssh-keyscan -p {self.host.port} "
                    f"{self.host.address} >> {known_hosts}", host=self.name) from None
            raise ConnectionFailed(f"could not log in to {self.describe()}: {e}. Check the "
                                   "user and identity_file in services.yaml.",
                                   host=self.name) from None
        except (OSError, socket.timeout, EOFError) as e:
            raise ConnectionFailed(
                f"could not connect to {self.describe()}: {e}. Check that the host is up "
                "and its address and port in services.yaml.", host=self.name) from None
        return conn

    def _exec(self, script: str, timeout: float | None) -> Result:
        conn = self._connection()
        command = "bash -c " + shlex.quote(script)
        try:
            r = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
        except Exception as e:  # invoke's CommandTimedOut, paramiko channel errors
            from invoke.exceptions import CommandTimedOut
            if isinstance(e, CommandTimedOut):
                return Result(self.name, script, e.result.stdout, f"timed out after {timeout}s", 124)
            raise ConnectionFailed(f"lost the connection to {self.describe()}: {e}",
                                   host=self.name) from None
        return Result(self.name, script, r.stdout, r.stderr, r.exited)

    def put(self, data: bytes | str, path: str, mode: int = 0o644) -> None:
        import io
        raw = data.encode() if isinstance(data, str) else data
        sftp = self._connection().sftp()
        with sftp.open(path, "wb") as f:
            f.chmod(mode)
            f.write(raw)

    def get(self, path: str) -> bytes:
        sftp = self._connection().sftp()
        with sftp.open(path, "rb") as f:
            return f.read()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def target_for(host, ssh) -> Target:
    return LocalTarget(host) if host.local else SSHTarget(host, ssh)


class Fleet:
    """The targets of one command: one connection per host, reused, closed at the end."""

    def __init__(self, config, names: Iterable[str]):
        self.config = config
        self.targets = {n: target_for(config.hosts[n], config.ssh) for n in names}

    def __getitem__(self, name: str) -> Target:
        return self.targets[name]

    def __iter__(self):
        return iter(self.targets.values())

    @property
    def names(self) -> list[str]:
        return list(self.targets)

    def close(self) -> None:
        for t in self.targets.values():
            t.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def each(targets: Iterable[Target], fn: Callable[[Target], T], *, parallel: int = 8
         ) -> tuple[dict[str, T], dict[str, BaseException]]:
    """Run fn on every target, at most `parallel` at once.

    Returns (results, errors) keyed by host name, in the targets' order;
    the caller decides whether one failure fails them all.
    """
    targets = list(targets)
    results: dict[str, T] = {}
    errors: dict[str, BaseException] = {}
    if not targets:
        return results, errors
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        futures = {t.name: pool.submit(fn, t) for t in targets}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except (DeployError, Exception) as e:  # noqa: B014 - keep DeployError explicit
                errors[name] = e
    return results, errors
