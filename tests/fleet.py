"""The test fleet: real sshd hosts on one machine.

Each host is its own ``sshd`` on its own loopback address (127.0.0.N:2222),
running in a private mount namespace (its own ``/srv``, bind-mounted from
``HOSTDIR/srv`` on the controller) and a private UTS namespace (its own
hostname).  Everything outside ``/srv`` is the controller's filesystem, so
the hosts share the Python interpreters, ``/tmp`` and the wheel cache -- except
``~/.bashrc``, which bash reads for every SSH session: this machine's runs
``pyenv init``, which costs each session ~80 ms and takes a lock that makes
parallel sessions on all the hosts wait for one another (0.1 s apart), as no
server's does.  A host sees a plain one instead, with the same PATH (see
``plain_bashrc``).

Needs root (mount/UTS namespaces, sshd) and ``openssh-server``.  Run the test
suite through ``scripts/test`` (or ``.ci/run`` on a fresh machine).

Usage::

    with Fleet(tmp_dir, n=4) as fleet:          # web-0 .. web-3 on 127.0.0.11-14
        fleet.ssh("web-0", "hostname").stdout   # "web-0\\n"
        fleet.hosts[0].srv                      # web-0's /srv, seen from here
        cfg = {"ssh": fleet.ssh_config_yaml(), "hosts": fleet.hosts_yaml()}

Teardown kills every process living in a host's mount namespace (so daemons
that the tests started there -- supervisord, gunicorn -- die with the host),
then its sshd.  An ``atexit`` hook does the same for a run that is aborted,
and :func:`kill_stale_fleets` cleans up after a run that was SIGKILLed.

This module is plain Python (no pytest) so benchmark scripts can import it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

__all__ = [
    "FleetError",
    "FleetHost",
    "Fleet",
    "kill_stale_fleets",
    "kill_namespace",
    "pids_in_namespace",
    "build_wheelhouse",
    "default_wheelhouse",
    "TEST_REQUIREMENTS",
]

SSHD = "/usr/sbin/sshd"  # sshd insists on an absolute path (it re-execs itself)
SSH_PORT = 2222

# Every fleet's files live under a directory named
# "deploytools-fleet-<owner pid>-<owner start time>-<prefix>"; the marker shows
# in each sshd's command line and in the /srv bind mount of each namespace,
# which is how kill_stale_fleets() recognises leftovers of a dead run.
FLEET_MARKER = "deploytools-fleet"
_MARKER_RE = re.compile(re.escape(FLEET_MARKER) + r"-(\d+)-(\d+)-")

LOCK_DIR = Path("/run/lock")

# What the sample apps and the tests install on the hosts.  The sample apps
# pin versions inside these ranges; build_wheelhouse() fetches them once.
TEST_REQUIREMENTS = [
    "Django>=4.2,<6",
    "gunicorn>=21",
    "Flask>=2.3",
    "psycopg[binary]>=3.1",
    "six",
    "supervisor>=4.2",
    "uv>=0.4",  # installer: uv (tests/system/test_modern.py)
    "SQLAlchemy>=2.0",  # the tern sample (examples/tern): Alembic migrations
    "alembic>=1.12",
    "flit_core>=3.2,<4",  # flaskr's build backend (examples/flaskr, built from source on the hosts)
    "setuptools",
    "wheel",
]


def first_octet(default: int = 11) -> int:
    """Where the suite's fleet starts: 127.0.0.11, or DEPLOYTOOLS_TEST_OCTET, so that two
    checkouts on one machine can run their system tests side by side."""
    return int(os.environ.get("DEPLOYTOOLS_TEST_OCTET") or default)


class FleetError(RuntimeError):
    """The fleet could not be brought up (or torn down)."""


@dataclass
class FleetHost:
    name: str                 # "web-0"; also the host's hostname
    address: str              # "127.0.0.11"
    ssh_port: int             # 2222
    hostdir: Path             # this host's files on the controller
    srv: Path                 # hostdir/"srv": the host's private /srv, seen from the controller
    sshd_pid: Optional[int] = None
    mnt_ns: Optional[str] = None   # e.g. "mnt:[4026532301]", set once the host is up

    @property
    def sshd_config(self) -> Path:
        return self.hostdir / "sshd_config"

    @property
    def sshd_log(self) -> Path:
        return self.hostdir / "sshd.log"


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------

def _own_mnt_ns() -> str:
    return os.readlink("/proc/self/ns/mnt")


def _mnt_ns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:  # gone, or a zombie (its namespaces are already released)
        return None


def _stat_fields(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def _alive(pid: int) -> bool:
    """True if PID exists and is not a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def _start_time(pid: int) -> Optional[str]:
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22: starttime


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def pids_in_namespace(mnt_ns: str) -> list[int]:
    """Live (non-zombie) processes whose mount namespace is ``mnt_ns``."""
    me = os.getpid()
    return [p for p in _all_pids()
            if p != me and _mnt_ns(p) == mnt_ns and _alive(p)]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_namespace(mnt_ns: str, grace: float = 3.0, exclude: Iterable[int] = ()) -> int:
    """Kill every process in mount namespace ``mnt_ns``: SIGTERM, then SIGKILL
    after ``grace`` seconds for whatever is left (repeatedly, so processes a
    dying supervisor respawns die too).  Returns how many were signalled.

    Refuses the controller's own namespace: that would be everything.
    """
    if not mnt_ns or mnt_ns == _own_mnt_ns():
        raise FleetError(f"refusing to kill the controller's own mount namespace {mnt_ns!r}")
    exclude = set(exclude)

    def victims() -> list[int]:
        return [p for p in pids_in_namespace(mnt_ns) if p not in exclude]

    seen: set[int] = set()
    pids = victims()
    for p in pids:
        _signal(p, signal.SIGTERM)
    seen.update(pids)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = victims()
    deadline = time.monotonic() + 10.0
    while pids:
        for p in pids:
            _signal(p, signal.SIGKILL)
        seen.update(pids)
        if time.monotonic() > deadline:
            raise FleetError(f"processes survive SIGKILL in {mnt_ns}: {pids}")
        time.sleep(0.05)
        pids = victims()
    return len(seen)


def _owner_alive(owner_pid: int, owner_start: str) -> bool:
    return _alive(owner_pid) and _start_time(owner_pid) == owner_start


def kill_stale_fleets(grace: float = 2.0) -> int:
    """Kill what a previous, crashed run left behind.

    A fleet is stale when the process that started it (pid and start time are
    encoded in its directory name) no longer exists, so a fleet of another
    run that is still going (another engineer's pytest) is left alone.  Finds
    stale namespaces both through sshd command lines and through the /srv
    bind mount of each foreign mount namespace, so daemons whose sshd already
    died are found too.  Returns the number of processes signalled.
    """
    own_ns = _own_mnt_ns()
    stale_ns: set[str] = set()
    stale_pids: set[int] = set()
    checked_ns: set[str] = set()

    def is_stale(text: str) -> bool:
        m = _MARKER_RE.search(text)
        return bool(m) and not _owner_alive(int(m.group(1)), m.group(2))

    for pid in _all_pids():
        if pid == os.getpid():
            continue
        ns = _mnt_ns(pid)
        if is_stale(_cmdline(pid)):
            if ns and ns != own_ns:
                stale_ns.add(ns)
            else:  # e.g. an sshd that failed to unshare: kill just it
                stale_pids.add(pid)
            continue
        if ns and ns != own_ns and ns not in checked_ns:
            checked_ns.add(ns)
            try:
                mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
            except OSError:
                continue
            for line in mountinfo.splitlines():
                parts = line.split()
                if len(parts) > 4 and parts[4] == "/srv" and is_stale(parts[3]):
                    stale_ns.add(ns)
                    break

    killed = 0
    for ns in stale_ns:
        killed += kill_namespace(ns, grace=grace)
    for pid in stale_pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
            killed += 1
    return killed


# --------------------------------------------------------------------------
# atexit / signal fallback
# --------------------------------------------------------------------------

_LIVE: set["Fleet"] = set()
_LIVE_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _stop_all_live() -> None:
    with _LIVE_LOCK:
        fleets = list(_LIVE)
    for fleet in fleets:
        if fleet._owner_pid == os.getpid():  # never from a forked child
            try:
                fleet.stop()
            except Exception as exc:  # pragma: no cover - best effort at exit
                print(f"fleet: cleanup at exit failed: {exc}", file=sys.stderr)


def _install_exit_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(_stop_all_live)
    # atexit does not run when the process dies of a signal.  Turn SIGTERM and
    # SIGHUP into SystemExit (only where nobody installed a handler), so a CI
    # runner that terminates the run still tears the fleet down.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum, frame):  # pragma: no cover - exercised by hand
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------
# the fleet
# --------------------------------------------------------------------------

def plain_bashrc() -> str | None:
    """What a test host's ~/.bashrc says, when this machine's runs `pyenv init` (None:
    it does not, and the hosts read it as it is). `python3` stays the interpreter
    pyenv's PATH gives (the one running this), found without a shim; what goes is
    the init, which costs every SSH session ~80 ms and a lock shared by all hosts."""
    rc = Path(os.path.expanduser("~root")) / ".bashrc"
    try:
        text = rc.read_text()
    except OSError:
        return None
    if "pyenv init" not in text:
        return None
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~root/.pyenv")
    # This interpreter's own bin first (pyenv's global version, which is what runs the
    # tests): `python3` without a shim, which costs ~0.1 s per start, as on a server.
    base = Path(sys.base_prefix) / "bin"
    first = f"{_q(base)}:" if str(base).startswith(root.rstrip("/") + "/") else ""
    return ("# A test host's ~/.bashrc (tests/fleet.py): the PATH of the machine's own,\n"
            "# without its per-session `pyenv init`.\n"
            f"export PYENV_ROOT={_q(root)}\n"
            f'export PATH={first}"$PYENV_ROOT/bin:$PYENV_ROOT/shims:$PATH"\n')


_SSHD_CONFIG = """\
# test fleet host {name} (generated by tests/fleet.py)
ListenAddress {address}:{port}
HostKey {hostdir}/ssh_host_ed25519_key
PidFile {hostdir}/sshd.pid
AuthorizedKeysFile {hostdir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# the fleet lives in temporary directories; don't judge their modes
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
# paramiko / fabric's put() and get() use SFTP (Fleet's `sftp`: this command, or none)
{sftp}
# deploys open many channels and connections at once (Fleet's `max_sessions`)
MaxSessions {max_sessions}
MaxStartups 50
# the hosts share the controller's /etc: `setup` links init.d scripts and
# systemd units under this host's own /srv instead (templates/ctl.j2)
SetEnv DEPLOYTOOLS_SYSTEM_ROOT=/srv/.system
LoginGraceTime 30
LogLevel INFO
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        raise FleetError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): "
                         f"{(proc.stderr or '').strip()}")
    return proc


def _keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        if p.exists():
            p.unlink()
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)


def _parallel(fn, items: list) -> list:
    """fn(item) for every item, each in its own thread; results in order.
    Raises the first exception.  Plain threads rather than an executor:
    concurrent.futures refuses work once the interpreter is shutting down,
    which is exactly when the atexit fallback runs."""
    results: list = [None] * len(items)
    errors: list = [None] * len(items)

    def run(i, item):
        try:
            results[i] = fn(item)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i, item), daemon=True)
               for i, item in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def _port_open(address: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class Fleet:
    """n sshd hosts named ``{prefix}-0 ..`` on 127.0.0.{first_octet}.. port 2222."""

    def __init__(self, base_dir: Union[str, Path], n: int = 4, prefix: str = "web",
                 first_octet: int = 11, ssh_port: int = SSH_PORT,
                 start_timeout: float = 30.0, lock_timeout: Optional[float] = None,
                 stop_grace: float = 3.0,
                 sftp: Union[str, None, Sequence[Optional[str]]] = "internal-sftp",
                 max_sessions: Union[int, Sequence[int]] = 50):
        if not 1 <= n or first_octet + n - 1 > 254 or first_octet < 2:
            raise ValueError(f"cannot place {n} hosts from 127.0.0.{first_octet}")
        self._owner_pid = os.getpid()
        owner_start = _start_time(self._owner_pid)
        self.root = (Path(base_dir).resolve()
                     / f"{FLEET_MARKER}-{self._owner_pid}-{owner_start}-{prefix}")
        self.start_timeout = start_timeout
        # Another run on this machine (a colleague's pytest) may hold the same
        # addresses; wait this long for it (env DEPLOYTOOLS_FLEET_LOCK_TIMEOUT).
        if lock_timeout is None:
            lock_timeout = float(os.environ.get("DEPLOYTOOLS_FLEET_LOCK_TIMEOUT", "900"))
        self.lock_timeout = lock_timeout
        self.stop_grace = stop_grace
        # The hosts' sshd `Subsystem sftp` command (None: no SFTP offered), or each host's.
        self.sftp = list(sftp) if isinstance(sftp, (list, tuple)) else [sftp] * n
        # The hosts' sshd MaxSessions (channels per connection), or each host's.
        self.max_sessions = (list(max_sessions) if isinstance(max_sessions, (list, tuple))
                             else [max_sessions] * n)
        self._hosts = [
            FleetHost(name=f"{prefix}-{i}", address=f"127.0.0.{first_octet + i}",
                      ssh_port=ssh_port, hostdir=self.root / f"{prefix}-{i}",
                      srv=self.root / f"{prefix}-{i}" / "srv")
            for i in range(n)
        ]
        self._procs: dict[str, subprocess.Popen] = {}
        self._locks: list[int] = []
        self._started = False

    # -- public properties ---------------------------------------------------

    @property
    def hosts(self) -> list[FleetHost]:
        return list(self._hosts)

    def host(self, name: Union[str, FleetHost]) -> FleetHost:
        if isinstance(name, FleetHost):
            return name
        for h in self._hosts:
            if h.name == name or h.address == name:
                return h
        raise KeyError(name)

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def identity_file(self) -> Path:
        return self.root / "id_ed25519"

    def ssh_config_yaml(self) -> dict:
        """The ``ssh:`` section of a services.yaml for this fleet."""
        return {"known_hosts": str(self.known_hosts), "identity_file": str(self.identity_file)}

    def hosts_yaml(self) -> dict:
        """The ``hosts:`` section of a services.yaml for this fleet."""
        return {h.name: {"address": h.address, "port": h.ssh_port, "user": "root"}
                for h in self._hosts}

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> "Fleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Fleet":
        if self._started:
            return self
        self._preflight()
        kill_stale_fleets()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep dir
        Path("/srv").mkdir(exist_ok=True)                   # the bind mount target
        self._started = True
        with _LIVE_LOCK:
            _LIVE.add(self)
        _install_exit_hooks()
        try:
            self._prepare_files()
            self._acquire_locks()
            for h in self._hosts:
                if _port_open(h.address, h.ssh_port):
                    raise FleetError(
                        f"{h.address}:{h.ssh_port} is already taken by a process that is "
                        f"not a test fleet of a live run (see `ss -ltnp`)")
            for h in self._hosts:
                self._spawn(h)
            _parallel(self._wait_ready, self._hosts)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every process of every host (its namespace), then its sshd.
        Idempotent."""
        if not self._started:
            return
        errors: list[str] = []

        def stop_host(h: FleetHost) -> None:
            try:
                self._stop_host(h)
            except Exception as exc:
                errors.append(f"{h.name}: {exc}")

        _parallel(stop_host, self._hosts)
        self._release_locks()
        self._started = False
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if errors:
            raise FleetError("fleet teardown incomplete: " + "; ".join(errors))

    # -- operator-style access ---------------------------------------------------

    def ssh_argv(self, host: Union[str, FleetHost], command: Optional[str] = None, *,
                 known_hosts: Optional[Path] = None,
                 identity_file: Optional[Path] = None) -> list[str]:
        h = self.host(host)
        argv = [
            "ssh", "-F", "/dev/null",
            "-i", str(identity_file or self.identity_file),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            "-p", str(h.ssh_port),
            f"root@{h.address}",
        ]
        if command is not None:
            argv += ["--", command]
        return argv

    def ssh(self, host: Union[str, FleetHost], command: str, *, check: bool = False,
            timeout: float = 300, input: Optional[str] = None,
            known_hosts: Optional[Path] = None,
            identity_file: Optional[Path] = None) -> subprocess.CompletedProcess:
        """Run ``command`` on ``host`` with the system ssh client, strict host
        key checking on, the way an operator would.  Output is text."""
        argv = self.ssh_argv(host, command, known_hosts=known_hosts,
                             identity_file=identity_file)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=check, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def paramiko_client(self, host: Union[str, FleetHost], timeout: float = 10):
        """A connected paramiko SSHClient (RejectPolicy: host keys must match)."""
        import paramiko

        h = self.host(host)
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(h.address, port=h.ssh_port, username="root",
                       key_filename=str(self.identity_file), look_for_keys=False,
                       allow_agent=False, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout)
        return client

    # -- faults ---------------------------------------------------------------------

    def sshd_pids(self, host: Union[str, FleetHost], *, sessions_only: bool = False
                  ) -> list[int]:
        """The host's sshd processes: its listener and one per open session (with
        sessions_only, the sessions: what a deploy's connection goes through)."""
        h = self.host(host)
        pids = [p for p in pids_in_namespace(h.mnt_ns or "")
                if _comm(p) == "sshd"] if h.mnt_ns else []
        if sessions_only:
            pids = [p for p in pids if p != h.sshd_pid]
        return pids

    def kill_sshd(self, host: Union[str, FleetHost]) -> None:
        """The host stops answering SSH: its listener and every session die at once
        (what it runs, supervisord and the service, goes on)."""
        h = self.host(host)
        for pid in self.sshd_pids(h):
            _signal(pid, signal.SIGKILL)
        proc = self._procs.get(h.name)
        if proc is not None:
            proc.wait(10)

    def restart_sshd(self, host: Union[str, FleetHost]) -> None:
        """Start the host's sshd again, in the host's own namespaces (the processes
        still running there keep them alive), and wait until it takes logins."""
        h = self.host(host)
        anchor = next(iter(pids_in_namespace(h.mnt_ns or "")), None) if h.mnt_ns else None
        if anchor is None:
            self._spawn(h)
        else:
            out = open(h.hostdir / "spawn.log", "ab")
            try:
                proc = subprocess.Popen(
                    ["nsenter", "-t", str(anchor), "-m", "-u", SSHD, "-D",
                     "-f", str(h.sshd_config), "-E", str(h.sshd_log)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, cwd="/")
            finally:
                out.close()
            self._procs[h.name] = proc
            h.sshd_pid = proc.pid
        self._wait_ready(h)

    def freeze_sessions(self, host: Union[str, FleetHost]) -> list[int]:
        """SIGSTOP the host's open SSH sessions: a host that stops answering without
        closing its connections (a hung kernel, a saturated link). Returns the pids."""
        pids = self.sshd_pids(host, sessions_only=True)
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: Iterable[int]) -> None:
        for pid in pids:
            _signal(pid, signal.SIGCONT)

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _preflight() -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("not running as root (each test host is an sshd in its own "
                            "mount and UTS namespace)")
        if not os.access(SSHD, os.X_OK):
            problems.append(f"{SSHD} is missing (apt-get install openssh-server)")
        for tool in ("unshare", "ssh", "ssh-keygen", "mount", "hostname"):
            if shutil.which(tool) is None:
                problems.append(f"`{tool}` not found on PATH")
        if problems:
            raise FleetError("cannot start the test fleet: " + "; ".join(problems)
                             + ". Run the tests through scripts/test (as root; "
                             "`sudo scripts/test`), or .ci/run on a fresh machine.")

    def _prepare_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        _keygen(self.identity_file, f"{FLEET_MARKER}-client")
        pubkey = self.identity_file.with_name("id_ed25519.pub").read_text()

        def prepare(h: FleetHost) -> str:
            h.hostdir.mkdir(parents=True, exist_ok=True)
            h.srv.mkdir(exist_ok=True)
            key = h.hostdir / "ssh_host_ed25519_key"
            _keygen(key, f"root@{h.name}")
            (h.hostdir / "authorized_keys").write_text(pubkey)
            (h.hostdir / "authorized_keys").chmod(0o600)
            i = self._hosts.index(h)
            h.sshd_config.write_text(_SSHD_CONFIG.format(
                name=h.name, address=h.address, port=h.ssh_port, hostdir=h.hostdir,
                sftp=(f"Subsystem sftp {self.sftp[i]}" if self.sftp[i] else "# no Subsystem sftp"),
                max_sessions=self.max_sessions[i]))
            for stale in (h.sshd_log, h.hostdir / "sshd.pid"):
                if stale.exists():
                    stale.unlink()
            _run([SSHD, "-t", "-f", str(h.sshd_config)])
            keytype, keydata = key.with_name(key.name + ".pub").read_text().split()[:2]
            return f"[{h.address}]:{h.ssh_port} {keytype} {keydata}\n"

        lines = _parallel(prepare, self._hosts)
        self.known_hosts.write_text("".join(lines))

    def _acquire_locks(self) -> None:
        """One lock per address:port, so two runs on one machine queue up
        instead of fighting over the addresses (a dead owner's lock is free)."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        told = False
        for h in self._hosts:
            path = LOCK_DIR / f"{FLEET_MARKER}-{h.address}-{h.ssh_port}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        raise
                    if time.monotonic() > deadline:
                        holder = path.read_text().strip()
                        os.close(fd)
                        raise FleetError(
                            f"{h.address}:{h.ssh_port} is held by another live test fleet "
                            f"(pid {holder or '?'}) for over {self.lock_timeout:.0f}s")
                    if not told:
                        print(f"fleet: {h.address}:{h.ssh_port} is in use by another test "
                              f"run (pid {path.read_text().strip() or '?'}); waiting...",
                              file=sys.stderr, flush=True)
                        told = True
                    time.sleep(0.5)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._locks.append(fd)

    def _release_locks(self) -> None:
        for fd in self._locks:
            try:
                os.close(fd)  # closing releases the flock
            except OSError:
                pass
        self._locks = []

    def _spawn(self, h: FleetHost) -> None:
        bashrc = ""
        home_rc = Path(os.path.expanduser("~root")) / ".bashrc"
        plain = plain_bashrc()
        if plain is not None and home_rc.is_file():
            (h.hostdir / "bashrc").write_text(plain)
            bashrc = f"mount --bind {_q(h.hostdir / 'bashrc')} {_q(home_rc)} && "
        script = (
            "mount --make-rprivate / && "
            f"mount --bind {_q(h.srv)} /srv && " + bashrc +
            f"hostname {_q(h.name)} && "
            f"exec {SSHD} -D -f {_q(h.sshd_config)} -E {_q(h.sshd_log)}"
        )
        out = open(h.hostdir / "spawn.log", "wb")
        try:
            # unshare (without --fork) and sh both exec, so the pid is sshd's.
            proc = subprocess.Popen(
                ["unshare", "-m", "-u", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd="/",
                env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "LANG": "C.UTF-8"},
            )
        finally:
            out.close()
        self._procs[h.name] = proc
        h.sshd_pid = proc.pid

    def _diagnostics(self, h: FleetHost) -> str:
        parts = []
        for f in (h.hostdir / "spawn.log", h.sshd_log):
            try:
                text = f.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"--- {f.name}:\n{text[-2000:]}")
        return "\n".join(parts)

    def _wait_ready(self, h: FleetHost) -> None:
        proc = self._procs[h.name]
        deadline = time.monotonic() + self.start_timeout
        while not _port_open(h.address, h.ssh_port):
            if proc.poll() is not None:
                raise FleetError(f"{h.name}: sshd exited with {proc.returncode} before "
                                 f"listening\n{self._diagnostics(h)}")
            if time.monotonic() > deadline:
                raise FleetError(f"{h.name}: {h.address}:{h.ssh_port} not listening after "
                                 f"{self.start_timeout}s\n{self._diagnostics(h)}")
            time.sleep(0.05)
        ns = _mnt_ns(proc.pid)
        if ns is None or ns == _own_mnt_ns():
            raise FleetError(f"{h.name}: sshd is not in a private mount namespace "
                             f"(unshare -m failed?)\n{self._diagnostics(h)}")
        h.mnt_ns = ns
        # A real login, host key checked, must land on the right host.
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            try:
                client = self.paramiko_client(h)
                try:
                    _, out, _ = client.exec_command("hostname", timeout=10)
                    name = out.read().decode().strip()
                finally:
                    client.close()
                if name != h.name:
                    raise FleetError(f"{h.name}: `hostname` over SSH said {name!r}")
                return
            except FleetError:
                raise
            except Exception as exc:  # sshd still settling
                last = exc
                time.sleep(0.1)
        raise FleetError(f"{h.name}: SSH login failed: {last!r}\n{self._diagnostics(h)}")

    def _stop_host(self, h: FleetHost) -> None:
        proc = self._procs.pop(h.name, None)
        ns = h.mnt_ns
        if ns is None and proc is not None and proc.poll() is None:
            candidate = _mnt_ns(proc.pid)
            if candidate and candidate != _own_mnt_ns():
                ns = candidate
        # 1. everything the tests started on the host (supervisord, gunicorn, ...)
        if ns:
            kill_namespace(ns, grace=self.stop_grace, exclude=[proc.pid] if proc else [])
        # 2. its sshd
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=self.stop_grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        # 3. anything that slipped in (a session opened during teardown)
        if ns:
            kill_namespace(ns, grace=0.5)
        h.sshd_pid = None
        h.mnt_ns = None
        deadline = time.monotonic() + 5
        while _port_open(h.address, h.ssh_port):
            if time.monotonic() > deadline:
                raise FleetError(f"{h.address}:{h.ssh_port} still open after teardown")
            time.sleep(0.05)


def _q(value: Union[str, Path]) -> str:
    import shlex
    return shlex.quote(str(value))


# --------------------------------------------------------------------------
# wheel cache
# --------------------------------------------------------------------------

def default_wheelhouse() -> Path:
    return Path(os.environ.get("DEPLOYTOOLS_WHEELHOUSE", "/var/cache/deploytools-test/wheels"))


def _requirements_key(requirements: list[str], python: str) -> str:
    """Hash of the requirement list, the contents of any ``-r FILE`` in it, and
    the interpreter's tag (wheels like psycopg-binary are per Python)."""
    h = hashlib.sha256()
    tag = subprocess.run(
        [python, "-c", "import sys,platform;print(sys.implementation.name,"
         "sys.version_info[:2],platform.machine())"],
        capture_output=True, text=True, check=True).stdout.strip()
    h.update(tag.encode())
    items = list(requirements)
    for i, item in enumerate(items):
        h.update(b"\0" + item.encode())
        path = None
        if item in ("-r", "--requirement", "-c", "--constraint") and i + 1 < len(items):
            path = items[i + 1]
        elif item.startswith(("-r", "-c")) and len(item) > 2 and not item.startswith("--"):
            path = item[2:].strip()
        if path and Path(path).is_file():
            h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def build_wheelhouse(dest: Union[str, Path, None], requirements: list[str],
                     python: Optional[str] = None) -> Path:
    """Fill ``dest`` with wheels for ``requirements`` and all their dependencies
    (``pip wheel -w dest``), once: a stamp file for the same requirement list
    skips the work.  Different lists accumulate in the same folder.

    Test hosts then install with ``pip install --no-index --find-links DEST``
    (services.yaml ``pip_args``); every host sees ``dest`` because only /srv
    is private to a host.  Items may include pip options such as
    ``-r requirements.txt`` (the file's contents count for the stamp).
    """
    dest = Path(dest or default_wheelhouse()).resolve()
    python = python or sys.executable
    dest.mkdir(parents=True, exist_ok=True)
    stamp = dest / f".stamp-{_requirements_key(requirements, python)}"
    if stamp.exists():
        return dest
    with open(dest / ".lock", "w") as lock:  # two runs building at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return dest
        proc = subprocess.run(
            [python, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
             "-w", str(dest), *requirements],
            stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FleetError(f"pip wheel into {dest} failed:\n{proc.stdout}\n{proc.stderr}")
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps({"requirements": requirements, "python": python,
                                   "built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime())}, indent=1))
        tmp.rename(stamp)
    return dest
