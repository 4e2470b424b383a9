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
import time
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


# The only command line a host ever sees: the script itself comes on stdin.
REMOTE_SHELL = "bash -s"


def stdin_program(script: str) -> str:
    """What `bash -s` reads on stdin to run `script` (bash, -e -u -o pipefail).

    Scripts reach hosts on stdin, never in argv (as Ansible's pipelining does):
    a command line is readable by every local user in /proc/PID/cmdline, and a
    script carries file contents, the env file's secrets included. The script
    is one brace group, so bash parses all of it before it runs any of it (a
    transfer cut short runs nothing) and runs it with stdin from /dev/null (no
    command in it can read the rest of the script as its input).
    """
    return "{\nset -euo pipefail\n" + script.rstrip("\n") + "\n} </dev/null\n"


def stream_program(script: str) -> str:
    """Like `stdin_program`, for `stream`: the script runs in the background while
    the shell waits for its stdin to close, which happens when the controller stops
    following (or goes away); then it ends the whole process group, so a quiet
    `tail -F` never outlives us. No pty is needed for that, so nothing is echoed."""
    return ("{\n(\nset -euo pipefail\n" + script.rstrip("\n") + "\n) </dev/null &\n"
            "child=$!\n"
            "(cat >/dev/null 2>&1; kill -TERM 0) <&0 >/dev/null 2>&1 &\n"
            "rc=0\nwait \"$child\" || rc=$?\nexit \"$rc\"\n} 2>&1\n")


class Target:
    """A host we can run shell scripts on. Subclasses implement `_exec`, `put`, `get`."""

    def __init__(self, host):
        self.host = host  # config.Host
        self.name = host.name

    def run(self, script: str, *, check: bool = True, timeout: float | None = None,
            what: str = "") -> Result:
        """Run `script` with bash (-e -u -o pipefail), sent on its stdin, and return
        its Result.

        With check, a non-zero exit raises RemoteCommandError whose message
        carries the last lines of output, so the CLI can say what failed.
        """
        result = self._exec(stdin_program(script), timeout)
        result = Result(result.host, script, result.stdout, result.stderr, result.exited)
        if check and not result.ok:
            output = result.stderr.strip() or result.stdout.strip()
            raise RemoteCommandError(
                f"{what or 'remote command'} failed (exit {result.exited}):\n{_tail(output)}",
                host=self.name, command=script, stdout=result.stdout,
                stderr=result.stderr, exited=result.exited)
        return result

    def _exec(self, program: str, timeout: float | None) -> Result:
        """Run `bash -s` with `program` on its stdin (then EOF)."""
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

    def _exec(self, program: str, timeout: float | None) -> Result:
        try:
            proc = subprocess.run(shlex.split(REMOTE_SHELL), input=program, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else e.stdout
            return Result(self.name, program, out or "", f"timed out after {timeout}s", 124)
        return Result(self.name, program, proc.stdout, proc.stderr, proc.returncode)

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
        proc = subprocess.Popen(shlex.split(REMOTE_SHELL), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.stdin.write(stdin_program(script).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it exited already; its status says why
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

    def _session(self):
        """A new channel on the host's connection (reconnecting if it dropped)."""
        import paramiko
        try:
            return self._connection().create_session()
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise ConnectionFailed(f"lost the connection to {self.describe()}: {e}",
                                   host=self.name) from None

    def _exec(self, program: str, timeout: float | None) -> Result:
        import paramiko
        chan = self._session()
        out, err = bytearray(), bytearray()

        def send():
            try:
                chan.sendall(program.encode())
                chan.shutdown_write()  # EOF: bash -s has the whole program
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the channel is gone: the readers see that

        def drain(recv, into):
            try:
                while True:
                    data = recv(65536)
                    if not data:
                        return
                    into += data
            except (OSError, EOFError, paramiko.SSHException):
                return

        threads = [threading.Thread(target=send, daemon=True),
                   threading.Thread(target=drain, args=(chan.recv, out), daemon=True),
                   threading.Thread(target=drain, args=(chan.recv_stderr, err), daemon=True)]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            chan.exec_command(REMOTE_SHELL)
            for t in threads:
                t.start()
            for t in threads[1:]:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            done = not any(t.is_alive() for t in threads[1:]) and chan.status_event.wait(
                None if deadline is None else max(0.0, deadline - time.monotonic()))
        except (OSError, EOFError, paramiko.SSHException) as e:
            chan.close()
            raise ConnectionFailed(f"lost the connection to {self.describe()}: {e}",
                                   host=self.name) from None
        if not done:
            chan.close()
            return Result(self.name, program, bytes(out).decode("utf-8", "replace"),
                          f"timed out after {timeout}s", 124)
        status = chan.exit_status
        transport = chan.get_transport()
        chan.close()
        if status == -1 and not (transport and transport.is_active()):
            raise ConnectionFailed(f"lost the connection to {self.describe()} while it ran "
                                   "a command", host=self.name)
        return Result(self.name, program, out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"), status)

    def stream(self, script, on_line, *, stop=None):
        import paramiko
        chan = self._session()

        def read():
            try:
                return chan.recv(65536)
            except socket.timeout:
                return None
        try:
            chan.settimeout(0.2)
            chan.exec_command(REMOTE_SHELL)
            # Sent, but stdin stays open: its EOF (our close) is what stops the script.
            chan.settimeout(None)
            chan.sendall(stream_program(script).encode())
            chan.settimeout(0.2)
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
