"""The one execution seam: run a script, put a file, read a file on a host.

`SSHTarget` (fabric/paramiko) and `LocalTarget` (subprocess, for `local: true`
demo hosts) override only what differs. Nothing else in deploytools opens a
connection. One connection per host is opened lazily and reused for the whole
command.
"""
from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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

    def stream(self, script: str, on_line: Callable[[str], None], *,
               stop: threading.Event | None = None) -> int | None:
        """Run `script` and call `on_line` with each line of its output (stdout and
        stderr together) as it arrives, until it exits or `stop` is set, which
        ends it. Returns its exit status, or None when stopped."""
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

    def stream(self, script, on_line, *, stop=None):
        # Its own session, so stopping kills the whole script, not just bash.
        proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        fd = proc.stdout.fileno()

        def read():
            ready, _, _ = select.select([fd], [], [], 0.2)
            return os.read(fd, 65536) if ready else None
        try:
            finished = _pump(read, on_line, stop)
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            proc.wait()
            proc.stdout.close()
        return proc.returncode if finished else None


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

    def stream(self, script, on_line, *, stop=None):
        import paramiko
        conn = self._connection()
        try:
            chan = conn.create_session()
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectionFailed(f"lost the connection to {self.describe()}: {e}",
                                   host=self.name) from None

        def read():
            try:
                return chan.recv(65536)
            except socket.timeout:
                return None
        try:
            # A pty, so closing the channel hangs up the remote command (sshd
            # sends it SIGHUP); without one a quiet `tail -F` would outlive us.
            chan.get_pty(term="dumb", width=4096)
            chan.settimeout(0.2)
            chan.exec_command("bash -c " + shlex.quote("set -euo pipefail\n" + script))
            finished = _pump(read, on_line, stop)
            return chan.recv_exit_status() if finished else None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectionFailed(f"lost the connection to {self.describe()}: {e}",
                                   host=self.name) from None
        finally:
            chan.close()

    def put(self, data: bytes | str, path: str, mode: int = 0o644) -> None:
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


def _pump(read: Callable[[], bytes | None], on_line: Callable[[str], None],
          stop: threading.Event | None) -> bool:
    """Feed lines from `read` (bytes, None when nothing came, b"" at the end) to
    `on_line` until the end (True) or until `stop` is set (False)."""
    buf = b""
    while not (stop and stop.is_set()):
        data = read()
        if data is None:
            continue
        if not data:
            if buf:
                on_line(buf.rstrip(b"\r").decode("utf-8", "replace"))
            return True
        *lines, buf = (buf + data).split(b"\n")
        for line in lines:
            on_line(line.rstrip(b"\r").decode("utf-8", "replace"))
    return False


def target_for(host, ssh) -> Target:
    return LocalTarget(host) if host.local else SSHTarget(host, ssh)


_POOL: dict | None = None


@contextmanager
def connection_pool():
    """Within this block every Fleet reuses one connection per host, so a command
    line of several tasks (`host:web-0 deploy:x restart:x`) connects once."""
    global _POOL
    outer, _POOL = _POOL, {}
    try:
        yield
    finally:
        pool, _POOL = _POOL, outer
        for target in pool.values():
            target.close()


class Fleet:
    """The targets of one task: one connection per host, reused, closed at the end
    (or, inside `connection_pool()`, at the end of the command line)."""

    def __init__(self, config, names: Iterable[str]):
        self.config = config
        self.pooled = _POOL is not None
        if self.pooled:
            self.targets = {n: _POOL.setdefault((n, config.hosts[n]),
                                                target_for(config.hosts[n], config.ssh))
                            for n in names}
        else:
            self.targets = {n: target_for(config.hosts[n], config.ssh) for n in names}

    def __getitem__(self, name: str) -> Target:
        return self.targets[name]

    def __iter__(self):
        return iter(self.targets.values())

    @property
    def names(self) -> list[str]:
        return list(self.targets)

    def close(self) -> None:
        if not self.pooled:
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
