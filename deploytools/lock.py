"""Per-service deploy lock across the fleet, and the append-only deploy history.

The lock is a `.lock` file on every host of the deploy, created with O_EXCL
(bash noclobber) so two deploys can never both hold a host. It is taken on
all hosts in a fixed order (the service's) and released in reverse; failing
on any host releases what was taken and names the holder. Two deploys that
share a host therefore never both run, while a host that is down does not
block deploys to the others.

The file holds the owner (user or CI job, controller host, pid, start time).
While the deploy runs, a heartbeat thread touches the file on every host
every few seconds: its mtime is the heartbeat, so its age is measured with
the host's own clock (no skew between controllers) and a heartbeat can never
recreate a lock that `unlock` removed (`touch -c`). A lock whose heartbeat is
older than STALE_AFTER beats, or whose process is gone when it was taken
from this machine, is reported as stale; `fab unlock:<service>` breaks it.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from .errors import LockedError
from .inventory import each
from . import render
from .script import facts

# Seconds between heartbeats; DEPLOYTOOLS_LOCK_HEARTBEAT overrides it (tests).
HEARTBEAT = 5.0
STALE_AFTER = 3  # heartbeats missed before a lock counts as stale


def heartbeat_interval() -> float:
    try:
        return max(0.2, float(os.environ.get("DEPLOYTOOLS_LOCK_HEARTBEAT") or HEARTBEAT))
    except ValueError:
        return HEARTBEAT


def _proc_start(pid: int) -> str | None:
    """The start time of a process (/proc/PID/stat field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, started: str | None) -> bool:
    """Is the process that took a lock on this machine still running?"""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True  # someone else's process, or not a pid we can judge: assume alive
    now = _proc_start(int(pid))
    return not (started and now and now != started)


def owner_record(action: str) -> dict:
    who = os.environ.get("DEPLOYTOOLS_USER") or os.environ.get("GITLAB_USER_LOGIN") \
        or os.environ.get("GITHUB_ACTOR") or getpass.getuser()
    job = os.environ.get("CI_JOB_URL") or os.environ.get("GITHUB_RUN_ID") or os.environ.get("BUILD_URL")
    return {"id": uuid.uuid4().hex[:12], "user": who, "job": job, "controller": socket.gethostname(),
            "pid": os.getpid(), "proc_start": _proc_start(os.getpid()), "action": action,
            "heartbeat": heartbeat_interval(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def staleness(holder: dict, *, hostname: str | None = None, alive=pid_alive) -> str | None:
    """Why the lock `holder` (its record plus `age`, the seconds since its last
    heartbeat on the host) is stale, or None while its deploy may be running."""
    pid = holder.get("pid")
    if pid and holder.get("controller") == (hostname or socket.gethostname()):
        # Taken from this machine: its process tells more than any heartbeat.
        if alive(pid, holder.get("proc_start")):
            return None
        return f"its process {pid} on {holder.get('controller')} is gone"
    interval = float(holder.get("heartbeat") or HEARTBEAT)
    age = holder.get("age")
    if age is not None and age > STALE_AFTER * interval:
        return f"no heartbeat for {age:.0f}s (it beats every {interval:g}s)"
    return None


def acquire_script(path: str, record: str) -> str:
    """Take the lock at `path`, or print who holds it and their heartbeat's age.

    Prints `@@lock acquired`, or `@@lock held`, `@@age SECONDS`, `@@holder RECORD`."""
    return render.render_script("lock_acquire.sh.j2", path=path, record=record,
                                lock_dir=os.path.dirname(path))


def heartbeat_script(path: str, token: str) -> str:
    """Touch the lock at `path` while it holds `token` (never recreate a removed one)."""
    return render.render_script("lock_heartbeat.sh.j2", path=path, token=token)


def release_script(path: str, token: str) -> str:
    """Remove the lock at `path` if it still holds `token`."""
    return render.render_script("lock_release.sh.j2", path=path, token=token)


def parse_holder(stdout: str) -> dict | None:
    """The holder `acquire_script` printed (None if we got the lock).

    An empty record (the lock vanished, or its writer is mid-write) comes back
    as {"retry": True}."""
    f = facts(stdout)
    if f.get("lock") == "acquired":
        return None
    try:
        age = float(f["age"]) if "age" in f else None
    except ValueError:
        age = None
    text = f.get("holder", "")
    if not text:
        return {"retry": True, "raw": "", "age": age}
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"raw": text}
    holder["age"] = age
    return holder


class FleetLock:
    def __init__(self, fleet, service, action: str, *, wait: float = 0):
        self.fleet = fleet
        self.service = service
        self.owner = owner_record(action)
        self.wait = wait
        self.held: list[str] = []
        self.interval = self.owner["heartbeat"]
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _path(self, target) -> str:
        return self.service.dir_on(target.host) + "/.lock"

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        empty = 0
        try:
            while True:
                holder = self._try()
                if holder is None:
                    break
                if holder.get("retry") and empty < 20:
                    empty += 1  # the lock changed hands under us: look again
                    time.sleep(0.1)
                    continue
                why = staleness(holder)
                # A stale lock is refused at once: waiting for a dead deploy never ends.
                if why or time.monotonic() >= deadline:
                    self._refuse(holder, why)
                time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        except BaseException:
            self.release()  # Ctrl-C half way through: drop what was taken
            raise
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat", daemon=True)
        self._beat.start()

    def _refuse(self, holder: dict, stale: str | None) -> None:
        name = self.service.name
        if stale:
            raise LockedError(
                f"{name} is locked by a deploy that looks dead ({stale}): "
                f"{describe_holder(holder)}. The lock is stale. If no deploy of {name} is "
                f"running, break it with: fab unlock:{name}")
        raise LockedError(
            f"{name} is locked by another deploy: {describe_holder(holder)}. "
            "Wait for it to finish (or use --lock-wait SECONDS); if that deploy is dead, "
            f"break the lock with: fab unlock:{name}")

    def _try(self) -> dict | None:
        record = json.dumps(self.owner)
        for target in self.fleet:
            r = target.run(acquire_script(self._path(target), record), what="taking the deploy lock")
            holder = parse_holder(r.stdout)
            if holder is None:
                self.held.append(target.name)
                continue
            self.release()
            holder["host"] = target.name
            return holder
        return None

    def _heartbeat(self) -> None:
        def beat(t):
            t.run(heartbeat_script(self._path(t), self.owner["id"]), check=False, timeout=max(5.0, self.interval), what="lock heartbeat")
        while not self._stop.wait(self.interval):
            # A missed beat (a host briefly unreachable) is not worth failing a deploy for.
            each([self.fleet[n] for n in self.held], beat, parallel=8)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=10)
            self._beat = None
        def drop(target):
            if target.name in self.held:
                target.run(release_script(self._path(target), self.owner["id"]), check=False, what="releasing the deploy lock")
        each([self.fleet[n] for n in reversed(self.held)], drop, parallel=8)
        self.held.clear()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def describe_holder(holder: dict) -> str:
    if "raw" in holder:
        return f"lock file on {holder.get('host')} says {holder['raw']!r}"
    job = f", job {holder['job']}" if holder.get("job") else ""
    age = holder.get("age")
    beat = f", last heartbeat {age:.0f}s ago on {holder.get('host')}" if age is not None else ""
    return (f"{holder.get('user')} ({holder.get('action')} from {holder.get('controller')} "
            f"pid {holder.get('pid')}{job}) since {holder.get('started')}{beat}")


def unlock_script(dir: str) -> str:
    """Break the lock: prints the record it held, then `@@unlocked`."""
    return render.render_script("unlock.sh.j2", dir=dir)


def history_append_script(dir: str, record: dict) -> str:
    """Append `record` as one JSON line to the host's history.jsonl (any size: the
    script travels on stdin and printf is a builtin, so no argument limit applies)."""
    line = json.dumps(record, sort_keys=True, default=str)
    return render.render_script("history_append.sh.j2", dir=dir, line=line)


HISTORY_COLUMNS = ("when", "who", "action", "from", "to", "tag", "outcome", "secs", "hosts",
                   "steps", "gates")


def history_row(record: dict) -> dict:
    """One line of `fab history`: a deploy or rollback, merged over its hosts
    (`hosts_seen`); the record itself is what `--json` prints."""
    return {"when": record.get("started"), "who": record.get("user"),
            "action": record.get("action"), "from": (record.get("from_commit") or "")[:7],
            "to": (record.get("commit") or "")[:7], "tag": record.get("tag"),
            "outcome": record.get("outcome"), "secs": record.get("duration"),
            "hosts": ",".join(record.get("hosts_seen") or [record.get("host") or "?"]),
            "steps": ",".join(record.get("steps") or []),
            "gates": "; ".join(gate_text(g) for g in record.get("gates") or [])}


def gate_text(gate: dict) -> str:
    """`1:pass 0/120 vs 0/360`: wave, outcome, errors/requests on the new hosts
    and on the baseline."""
    f = gate.get("figures") or {}
    base = f" vs {f.get('e_b')}/{f.get('n_b')}" if f.get("n_b") is not None else ""
    return f"{gate.get('wave')}:{gate.get('outcome')} {f.get('e_c')}/{f.get('n_c')}{base}"


def history_read_script(dir: str, limit: int) -> str:
    """The last `limit` lines of the host's history.jsonl."""
    return render.render_script("history_read.sh.j2", dir=dir, limit=int(limit))
