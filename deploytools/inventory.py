"""The one execution seam: run a script, put a file, read a file on a host.

`SSHTarget` (fabric/paramiko) and `LocalTarget` (subprocess, for `local: true`
demo hosts) override only what differs. Nothing else in deploytools opens a
connection. A connection is opened lazily, along the route the ssh config gives
(`ssh_route`), and kept by its Fleet, or by the session's Pool for the whole
command line.
"""
from __future__ import annotations

import base64
import logging
import os
import posixpath
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from . import render, signals
from .errors import ConnectionFailed, DeployError, RemoteCommandError

# paramiko logs a failed handshake (with a traceback) through logging's last-resort
# handler, before our one-paragraph error says the same thing: keep it quiet.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

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

    # Seconds a step may take when the caller gives no timeout (ssh.command_timeout).
    default_timeout: float | None = None
    unresponsive: str | None = None  # why this host is not asked again (SSH only)

    def __init__(self, host):
        self.host = host  # config.Host
        self.name = host.name

    def run(self, script: str, *, check: bool = True, timeout: float | None = None,
            what: str = "", on_line: Callable[[str], None] | None = None) -> Result:
        """Run `script` with bash (-e -u -o pipefail), sent on its stdin, and return
        its Result. It may take `timeout` seconds (default: ssh.command_timeout);
        then it counts as failed with exit 124, "timed out". `on_line` is called with
        each line of its standard output as it arrives (on an SSH host; a local one
        calls it once the program ended), from another thread.

        With check, a non-zero exit raises RemoteCommandError whose message
        carries the last lines of output, so the CLI can say what failed.
        """
        result = self._exec(stdin_program(script),
                            timeout if timeout is not None else self.default_timeout,
                            on_line)
        if result.exited == 124 and timeout is None and self.default_timeout:
            # The step's own bound (not a caller's short one, such as a heartbeat's): the
            # host is treated as lost for the rest of this command.
            self.unresponsive = f"a step timed out after {self.default_timeout:g}s"
            if check:
                raise ConnectionFailed(
                    f"{what or 'remote command'} timed out after {self.default_timeout:g}s: "
                    f"{self.describe()} stopped answering (or the step needs longer than "
                    "ssh.command_timeout allows)", host=self.name)
        result = Result(result.host, script, result.stdout, result.stderr, result.exited)
        if check and not result.ok:
            output = result.stderr.strip() or result.stdout.strip()
            raise RemoteCommandError(
                f"{what or 'remote command'} failed (exit {result.exited}):\n{_tail(output)}",
                host=self.name, command=script, stdout=result.stdout,
                stderr=result.stderr, exited=result.exited)
        return result

    def _exec(self, program: str, timeout: float | None,
              on_line: Callable[[str], None] | None = None) -> Result:
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

    def read_growing(self, path: str, offset: int | None) -> tuple[int, int, bytes]:
        """A file that grows (a log), and may be rotated: (its size, START, its bytes from
        START up to that size). START is `offset`, or 0 when the file is shorter than
        `offset` (rotated); `offset` None: the size alone. (0, 0, b"") when it does not
        exist. Bytes, not text: a caller counting offsets counts bytes."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def connect(self) -> None:
        """Open the connection now (SSH: the handshake), so that the next step on this
        host does not wait for it. Raises ConnectionFailed."""

    def connect_early(self) -> None:
        """`connect`, while the controller does something else: never raises; a
        failure is kept and raised by the next use, which does not try again."""

    def describe(self) -> str:
        return self.name


class LocalTarget(Target):
    """A `local: true` host: commands run on this machine, in its own root."""

    def _exec(self, program: str, timeout: float | None,
              on_line: Callable[[str], None] | None = None) -> Result:
        if on_line is not None:
            return self._exec_lines(program, timeout, on_line)
        try:
            proc = subprocess.run(shlex.split(REMOTE_SHELL), input=program, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else e.stdout
            return Result(self.name, program, out or "", f"timed out after {timeout}s", 124)
        return Result(self.name, program, proc.stdout, proc.stderr, proc.returncode)

    def _exec_lines(self, program: str, timeout: float | None,
                    on_line: Callable[[str], None]) -> Result:
        """`_exec`, telling `on_line` each line of standard output as it comes."""
        proc = subprocess.Popen(shlex.split(REMOTE_SHELL), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        timed_out: list[bool] = []

        def kill() -> None:
            timed_out.append(True)
            proc.kill()
        killer = threading.Timer(timeout, kill) if timeout else None
        if killer:
            killer.start()
        try:
            try:
                proc.stdin.write(program)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it exited already; its status says why
            out = []
            for line in proc.stdout:
                out.append(line)
                on_line(line.rstrip("\n"))
            proc.wait()
            reader.join()
        finally:
            if killer:
                killer.cancel()
        if timed_out:
            return Result(self.name, program, "".join(out), f"timed out after {timeout}s", 124)
        return Result(self.name, program, "".join(out), "".join(err), proc.returncode)

    def put(self, data: bytes | str, path: str, mode: int = 0o644) -> None:
        raw = data.encode() if isinstance(data, str) else data
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(path, mode)

    def get(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def read_growing(self, path, offset):
        try:
            with open(path, "rb") as f:
                return _read_growing(f, os.fstat(f.fileno()).st_size, offset)
        except FileNotFoundError:
            return 0, 0, b""

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


@dataclass(frozen=True)
class Hop:
    """One SSH connection to make: where (after the ssh config), as whom, with which keys."""
    name: str  # what it is called: the host's address, or a ProxyJump entry
    hostname: str
    port: int
    user: str | None
    key_files: tuple[str, ...]  # empty: your agent and default keys

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        alias = f"{self.name} = " if self.name != self.hostname else ""
        return f"{alias}{user}{self.hostname}:{self.port}"


def load_ssh_config(path: str):
    """The parsed OpenSSH client config at `path` (an empty one if there is no file)."""
    import paramiko
    if not os.path.exists(path):
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(path)
    except (OSError, UnicodeDecodeError, paramiko.ConfigParseError) as e:
        raise ConnectionFailed(f"cannot read the ssh config {path}: {e}. Fix it, or point "
                               "ssh.config_file in services.yaml elsewhere.") from None


def _keys(found: dict) -> tuple[str, ...]:
    return tuple(os.path.expanduser(k) for k in found.get("identityfile", ())
                 if os.path.exists(os.path.expanduser(k)))


def ssh_route(host, ssh, ssh_config) -> list[Hop]:
    """The hops to `host`, bastions first, the host last, as OpenSSH would make them
    from `ssh_config` (a paramiko.SSHConfig): services.yaml's port, user and identity
    file win; then the ssh config's Port, User, IdentityFile, HostName; then 22."""
    found = ssh_config.lookup(host.address)
    explicit_keys = (host.identity_file,) if host.identity_file else ()
    target = Hop(name=host.address, hostname=found.get("hostname", host.address),
                 port=int(host.port or found.get("port", 22)),
                 user=host.user or found.get("user"),
                 key_files=explicit_keys or _keys(found))
    if "proxycommand" in found:
        raise ConnectionFailed(
            f"the ssh config {ssh.config_file} gives {host.address} a ProxyCommand, which "
            "deploytools does not run (its host key could not be checked): use ProxyJump.",
            host=host.name)
    jumps = found.get("proxyjump", "none")
    hops = []
    if jumps.lower() != "none":
        for spec in jumps.split(","):
            m = re.fullmatch(r"(?:ssh://)?(?:(?P<user>[^@]+)@)?(?P<host>\[[^]]+\]|[^:]+)"
                             r"(?::(?P<port>\d+))?", spec.strip())
            if not m:
                raise ConnectionFailed(f"cannot read ProxyJump {spec!r} for {host.address} "
                                       f"in {ssh.config_file}.", host=host.name)
            name = m.group("host").strip("[]")
            hop = ssh_config.lookup(name)
            hops.append(Hop(name=name, hostname=hop.get("hostname", name),
                            port=int(m.group("port") or hop.get("port", 22)),
                            user=m.group("user") or hop.get("user"),
                            key_files=_keys(hop) or ((ssh.identity_file,) if ssh.identity_file
                                                     else ())))
    if any((h.hostname, h.port) == (target.hostname, target.port) for h in hops):
        hops = []  # a `Host *` ProxyJump also matches the bastion itself: no jump to itself
    return hops + [target]


class SSHTarget(Target):
    """A host reached over SSH, through its ProxyJump bastions if the ssh config gives
    some, with strict host key checking on every hop."""

    def __init__(self, host, ssh, pool: "Pool | None" = None):
        super().__init__(host)
        self.ssh = ssh  # config.Ssh
        self.default_timeout = ssh.command_timeout
        self.pool = pool
        # Set once a step timed out: a host that stopped answering is not asked again in
        # this command (each ask would cost another timeout), it fails at once.
        self.unresponsive: str | None = None
        self._conn = None
        self._own_gateways: list = []  # the bastion connections of an unpooled target
        self._lock = threading.Lock()
        self._failed: ConnectionFailed | None = None  # connect_early's failure
        self._sftp_lock = threading.Lock()
        self._sftp_client = None  # opened by the first put, get or read_growing, then kept
        self._no_sftp = ""  # why the host's SFTP does not work, once known

    def describe(self) -> str:
        user = f"{self.host.user}@" if self.host.user else ""
        port = f":{self.host.port}" if self.host.port else ""
        return f"{self.name} ({user}{self.host.address}{port})"

    def connect(self) -> None:
        self._connection()

    def connect_early(self) -> None:
        try:
            self._connection(early=True)
        except Exception:  # noqa: BLE001 - kept in _failed, raised by the next use
            pass

    def _connection(self, *, early: bool = False):
        with self._lock:
            if self._failed is not None:
                raise self._failed
            if self._conn is None:
                try:
                    self._conn = self._open()
                except ConnectionFailed as e:
                    if early:  # the same host a moment later: no second wait for it
                        self._failed = e
                    raise
            return self._conn

    def _open(self):
        hops = ssh_route(self.host, self.ssh, load_ssh_config(self.ssh.config_file))
        gateway = None
        for i, hop in enumerate(hops[:-1]):
            def open_hop(hop=hop, via=gateway):
                return self._connect(hop, via, what=f"the bastion {hop.describe()} of {self.name}")
            if self.pool is not None:
                gateway = self.pool.gateway((self.ssh, tuple(hops[:i + 1])), open_hop)
            else:
                gateway = open_hop()
                self._own_gateways.append(gateway)
        return self._connect(hops[-1], gateway, what=self.describe()
                             if len(hops) == 1 else f"{self.name} ({hops[-1].describe()})")

    def _connect(self, hop: Hop, gateway, *, what: str):
        """One open fabric Connection to `hop` (through `gateway`), its host key checked
        against our known_hosts, agent forwarding only if services.yaml asks for it."""
        import paramiko
        from fabric import Config as FabricConfig, Connection

        connect_kwargs = {"look_for_keys": not hop.key_files, "allow_agent": not hop.key_files}
        if hop.key_files:
            connect_kwargs["key_filename"] = list(hop.key_files)
        # An empty ssh config for fabric: we resolved the hop from the user's ourselves,
        # and fabric's own ProxyJump handling would accept the bastion's key blindly.
        conn = Connection(hop.hostname, user=hop.user, port=hop.port,
                          config=FabricConfig(ssh_config=paramiko.SSHConfig()),
                          gateway=gateway or False, forward_agent=self.ssh.forward_agent,
                          connect_timeout=self.ssh.connect_timeout, connect_kwargs=connect_kwargs)
        # Fabric accepts unknown host keys by default; we never do.
        known_hosts = os.path.expanduser(self.ssh.known_hosts)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if os.path.exists(known_hosts):
            conn.client.load_host_keys(known_hosts)
        keyscan_host = f"-p {hop.port} {hop.hostname}" if hop.port != 22 else hop.hostname
        try:
            conn.open()
            if self.ssh.keepalive:  # a dead link is noticed, and NAT state kept alive
                conn.transport.set_keepalive(self.ssh.keepalive)
        except paramiko.BadHostKeyException:
            raise ConnectionFailed(
                f"the host key of {what} does not match the one in {known_hosts}. "
                "This may be an attack or a reinstalled server: check the key with its "
                "administrator, then fix that known_hosts entry.", host=self.name) from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                raise ConnectionFailed(
                    f"{what} is not in {known_hosts} (strict host key checking is on, for "
                    f"every hop). After verifying its key, add it with: ssh-keyscan "
                    f"{keyscan_host} >> {known_hosts}", host=self.name) from None
            raise ConnectionFailed(f"could not log in to {what}: {e}. Check the user and "
                                   "identity_file in services.yaml (or User and IdentityFile "
                                   f"in {self.ssh.config_file}).", host=self.name) from None
        except (OSError, socket.timeout, EOFError) as e:
            raise ConnectionFailed(
                f"could not connect to {what}: {e}. Check that the host is up and its address "
                f"and port in services.yaml (or {self.ssh.config_file}).",
                host=self.name) from None
        return conn

    def _still_answering(self) -> None:
        """Raise (nothing sent) for a host that stopped answering earlier in this command."""
        if self.unresponsive:
            raise ConnectionFailed(f"{self.describe()} stopped answering earlier in this command "
                                   f"({self.unresponsive}); not asking it again",
                                   host=self.name, delivered=False)

    def _session(self, *, agent: bool = True):
        """A new channel on the host's connection (the agent forwarded on it if
        ssh.forward_agent and `agent`). Nothing was sent when this fails
        (`delivered=False`): the host is as it was."""
        import paramiko
        from paramiko.agent import AgentRequestHandler
        self._still_answering()
        try:
            conn = self._connection()
            # fabric's create_session, with a bound: a frozen host never grants a channel.
            try:
                chan = conn.transport.open_session(timeout=self.ssh.connect_timeout)
            except paramiko.ChannelException:
                # Refused: sshd's MaxSessions (10 by default, 2 on some hardened hosts)
                # may be reached with our own idle SFTP session. Close it and ask again
                # once sshd has let it go (its session process exits first: ~10 ms).
                if not self._drop_idle_sftp():
                    raise
                chan = _when_freed(lambda: conn.transport.open_session(
                    timeout=self.ssh.connect_timeout))
            if self.ssh.forward_agent and agent:
                conn._agent_handler = AgentRequestHandler(chan)
            return chan
        except ConnectionFailed as e:
            e.delivered = False
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            if isinstance(e, paramiko.SSHException) and "Timeout" in str(e):
                self.unresponsive = f"no channel within {self.ssh.connect_timeout}s"
                raise ConnectionFailed(
                    f"{self.describe()} stopped answering: timed out opening a channel after "
                    f"{self.ssh.connect_timeout}s (ssh.connect_timeout)", host=self.name,
                    delivered=False) from None
            raise ConnectionFailed(f"lost the connection to {self.describe()}: "
                                   f"{e or type(e).__name__}", host=self.name,
                                   delivered=False) from None

    def _exec(self, program: str, timeout: float | None,
              on_line: Callable[[str], None] | None = None) -> Result:
        import paramiko
        chan = self._session()
        out, err = bytearray(), bytearray()

        def send():
            try:
                chan.sendall(program.encode())
                chan.shutdown_write()  # EOF: bash -s has the whole program
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the channel is gone: the readers see that

        def drain(recv, into, lines=None):
            told = 0  # how much of `into` went to `lines`
            try:
                while True:
                    data = recv(65536)
                    if not data:
                        return
                    into += data
                    end = into.rfind(b"\n") + 1
                    if lines and end > told:
                        for line in into[told:end].decode("utf-8", "replace").splitlines():
                            lines(line)
                        told = end
            except (OSError, EOFError, paramiko.SSHException):
                return

        threads = [threading.Thread(target=send, daemon=True),
                   threading.Thread(target=drain, args=(chan.recv, out, on_line), daemon=True),
                   threading.Thread(target=drain, args=(chan.recv_stderr, err), daemon=True)]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            try:
                chan.exec_command(REMOTE_SHELL)
            except (OSError, EOFError, paramiko.SSHException) as e:
                chan.close()
                raise ConnectionFailed(f"lost the connection to {self.describe()}: {e}",
                                       host=self.name, delivered=False) from None
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
                          f"timed out after {timeout:g}s (ssh.command_timeout): "
                          f"{self.describe()} stopped answering", 124)
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
        with self._sftp_lock:
            sftp = self._sftp_or_fail(f"copy {path} there")
            _sftp_makedirs(sftp, posixpath.dirname(path))
            with sftp.open(path, "wb") as f:
                f.chmod(mode)
                f.set_pipelined(True)  # no wait for each 32 KiB write's answer
                f.write(raw)

    def get(self, path: str) -> bytes:
        with self._sftp_lock:
            with self._sftp_or_fail(f"read {path}").open(path, "rb") as f:
                f.prefetch()  # every read requested at once, not one after another
                return f.read()

    def read_growing(self, path, offset):
        import paramiko
        with self._sftp_lock:
            sftp = self._sftp()
            if sftp is not None:
                try:
                    if offset is None:  # the size alone: one request
                        return sftp.stat(path).st_size, 0, b""
                    with sftp.open(path, "rb") as f:
                        return _read_growing(f, f.stat().st_size, offset)
                except FileNotFoundError:
                    return 0, 0, b""
                except PermissionError as e:
                    raise DeployError(f"cannot read {path} on {self.describe()}: {e}",
                                      host=self.name) from None
                except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as e:
                    raise self._sftp_lost(e) from None
        # No SFTP here: a program prints the size and the bytes (base64).
        return parse_read_growing(self.run(read_growing_script(path, offset),
                                           what=f"reading {path}").stdout)

    def _sftp(self):
        """The host's SFTP session, opened by the first use and kept for the command
        (no process started on the host for each use), with the step's bound
        (ssh.command_timeout) on every answer; None when the host offers no SFTP (sshd
        without `Subsystem sftp`). Called with _sftp_lock held."""
        import paramiko
        self._still_answering()  # the session may be open already
        if self._sftp_client is None and not self._no_sftp:
            chan = self._session(agent=False)
            try:
                chan.settimeout(self.default_timeout)
                chan.invoke_subsystem("sftp")
                self._sftp_client = paramiko.SFTPClient(chan)
            except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as e:
                chan.close()
                if isinstance(e, socket.timeout) or not self._conn.transport.is_active():
                    raise self._sftp_lost(e) from None
                # Refused, ended at once, or garbled (a shell startup file that prints,
                # read by the shell sshd starts sftp-server with): the connection is fine.
                self._no_sftp = f"{e or type(e).__name__}"
        return self._sftp_client

    def _close_sftp(self) -> bool:
        """Close the SFTP session, if one is open (the next use opens another); whether
        one was."""
        client, self._sftp_client = self._sftp_client, None
        if client is not None:
            client.close()
        return client is not None

    def _drop_idle_sftp(self) -> bool:
        """_close_sftp, if the session is not in use; whether one was closed."""
        if self._sftp_client is None or not self._sftp_lock.acquire(blocking=False):
            return False
        try:
            return self._close_sftp()
        finally:
            self._sftp_lock.release()

    def _sftp_or_fail(self, doing: str):
        sftp = self._sftp()
        if sftp is None:
            raise DeployError(f"{self.describe()} offers no SFTP that works ({self._no_sftp}; "
                              "sshd_config's Subsystem sftp, and a shell startup file such as "
                              f"~/.bashrc must print nothing), so deploytools cannot {doing}",
                              host=self.name)
        return sftp

    def _sftp_lost(self, e: BaseException) -> ConnectionFailed:
        """The SFTP session failed: it is dropped (the next use opens another), and a
        host that stopped answering is not asked again in this command."""
        self._close_sftp()
        if isinstance(e, socket.timeout):
            self.unresponsive = f"an SFTP request timed out after {self.default_timeout:g}s"
            return ConnectionFailed(f"{self.unresponsive}: {self.describe()} stopped answering",
                                    host=self.name)
        return ConnectionFailed(f"lost the connection to {self.describe()}: "
                                f"{e or type(e).__name__}", host=self.name)

    def close(self) -> None:
        self._close_sftp()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for gateway in reversed(self._own_gateways):
            gateway.close()
        self._own_gateways = []


def _when_freed(open_channel: Callable[[], T]) -> T:
    """`open_channel()`, asked again while sshd still counts a session we closed (it is
    refused until sshd has let it go), for up to 2 s."""
    import paramiko
    for wait in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        time.sleep(wait)
        try:
            return open_channel()
        except paramiko.ChannelException:
            pass
    time.sleep(1.0)
    return open_channel()


def read_growing_script(path: str, offset: int | None) -> str:
    """Target.read_growing as a program, for a host that offers no SFTP."""
    return render.render_script("read_growing.sh.j2", path=path, offset=offset)


def parse_read_growing(out: str) -> tuple[int, int, bytes]:
    """read_growing_script's output: (size, start, the bytes). What a shell startup file
    printed before it is skipped."""
    _, marker, rest = out.partition("@@read_growing ")
    if not marker:
        raise DeployError(f"reading a file printed no @@read_growing line: {out[-300:]!r}")
    head, _, data = rest.partition("\n")
    size, start = (int(x) for x in head.split())
    return size, start, base64.b64decode(data)


def _read_growing(f, size: int, offset: int | None) -> tuple[int, int, bytes]:
    """Target.read_growing on an open file `f` (local or SFTP) of `size` bytes."""
    if offset is None:
        return size, 0, b""
    start = offset if offset <= size else 0
    f.seek(start)
    if size - start > 65536 and hasattr(f, "prefetch"):
        f.prefetch(size)  # SFTP: every 32 KiB read requested at once
    return size, start, f.read(size - start)


def _sftp_makedirs(sftp, path: str) -> None:
    """`mkdir -p` over SFTP (what LocalTarget.put does with pathlib)."""
    if not path or path == "/":
        return
    try:
        sftp.stat(path)
        return
    except FileNotFoundError:
        pass
    _sftp_makedirs(sftp, posixpath.dirname(path))
    try:
        sftp.mkdir(path)
    except OSError:
        sftp.stat(path)  # made meanwhile: fine; anything else raises


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


def target_for(host, ssh, pool: "Pool | None" = None) -> Target:
    if not host.local:
        return SSHTarget(host, ssh, pool=pool)
    target = LocalTarget(host)
    target.default_timeout = ssh.command_timeout
    return target


class Pool:
    """One target (so one connection) per host, and one per bastion, shared by every
    Fleet of a command line; `close()` ends them all (Session.close does)."""

    def __init__(self):
        self._targets: dict = {}
        self._gateways: dict = {}
        self._lock = threading.Lock()

    def target(self, host, ssh) -> Target:
        with self._lock:
            key = (host.name, host, ssh)
            if key not in self._targets:
                self._targets[key] = target_for(host, ssh, pool=self)
            return self._targets[key]

    def gateway(self, key, open_fn):
        """The open connection to the bastion `key`, opened once with `open_fn()`."""
        with self._lock:
            entry = self._gateways.setdefault(key, [threading.Lock(), None])
        with entry[0]:  # one opener per bastion; the others wait and reuse it
            conn = entry[1]
            if conn is None or not conn.is_connected:
                entry[1] = conn = open_fn()
            return conn

    def close(self) -> None:
        with self._lock:
            targets, self._targets = list(self._targets.values()), {}
            gateways, self._gateways = [e[1] for e in self._gateways.values()], {}
        for target in targets:
            target.close()
        for conn in gateways:
            if conn is not None:
                conn.close()


class Fleet:
    """The targets of one task. Unpooled (`Fleet(config, names)`): its own connections,
    closed when the Fleet is. With a session's pool (`session.fleet(names)`): the
    connections of the whole command line, closed with the session."""

    def __init__(self, config, names: Iterable[str], *, pool: Pool | None = None):
        self.config = config
        self.pooled = pool is not None
        if pool is not None:
            self.targets = {n: pool.target(config.hosts[n], config.ssh) for n in names}
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


def connect_early(targets: Iterable[Target], *, parallel: int = 8) -> None:
    """Open the targets' connections in the background (at most `parallel` at once),
    while the controller does its own work (a deploy's git fetch): the first step on
    each host then finds it open. Daemon threads: an exit never waits for them."""
    slots = threading.BoundedSemaphore(max(1, parallel))

    def one(target: Target) -> None:
        with slots:
            target.connect_early()
    with signals.held():
        for target in targets:
            threading.Thread(target=one, args=(target,), name=f"connect-{target.name}",
                             daemon=True).start()


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
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets))))
    try:
        # Ctrl-C or SIGTERM (signals.terminating) is held while the threads start: one
        # raised inside Thread.start() leaves a running thread the pool never joins, still
        # activating its host while the rollback restores that host.
        with signals.held():
            futures = {t.name: pool.submit(fn, t) for t in targets}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except (DeployError, Exception) as e:  # noqa: B014 - keep DeployError explicit
                errors[name] = e
    finally:
        # Interrupted or not, return only when every started call has ended (the caller's
        # view of what was done must be final); calls not started yet never start.
        pool.shutdown(wait=True, cancel_futures=True)
    return results, errors
