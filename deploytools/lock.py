"""Per-service deploy lock across the fleet, and the append-only deploy history.

The lock is a `.lock` file on every host of the deploy, created with O_EXCL
(bash noclobber) so two deploys can never both hold a host. It is taken on
all hosts in a fixed order (the service's) and released in reverse; failing
on any host releases what was taken and names the holder. Two deploys that
share a host therefore never both run, while a host that is down does not
block deploys to the others.

The file holds the owner (user or CI job, controller, pid, a per-run id) and
its progress (the wave it reached). While the deploy runs, a heartbeat thread
touches the file on every host every few seconds: its mtime is the
heartbeat, so its age is measured with the host's own clock (no skew between
controllers) and a heartbeat can never recreate a lock that was removed
(`touch -c`, and only while the file holds our run id).

A lock is stale when its heartbeat is older than STALE_AFTER beats, or, when
it was taken from this very machine (same boot and pid namespace, not merely
the same hostname: CI runners are all called `runner`), when its process is
gone. A deploy that meets a stale lock takes it over, loudly: it names the
dead deploy (who, when, what, the wave it reached) and records the takeover
in the history, because the fleet that deploy left may be mixed. A live lock
is never broken: `deploytools unlock` refuses a fresh one unless force=true.
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

from .errors import DeployError, LockedError, errors_text
from .report import redact_json
from . import signals
from .inventory import each
from . import render
from .script import facts, guarded

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


def machine_id() -> str:
    """This machine as a lock sees it: the boot id plus our pid namespace. Two CI
    runners with one hostname differ here, and so do two containers of one host,
    so a pid is only judged where it means the same process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{pidns}"


def owner_record(action: str) -> dict:
    who = os.environ.get("DEPLOYTOOLS_USER") or os.environ.get("GITLAB_USER_LOGIN") \
        or os.environ.get("GITHUB_ACTOR") or getpass.getuser()
    job = os.environ.get("CI_JOB_URL") or os.environ.get("GITHUB_RUN_ID") or os.environ.get("BUILD_URL")
    return {"id": uuid.uuid4().hex[:12], "user": who, "job": job, "controller": socket.gethostname(),
            "machine": machine_id(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "action": action, "heartbeat": heartbeat_interval(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def staleness(holder: dict, *, machine: str | None = None, alive=pid_alive) -> str | None:
    """Why the lock `holder` (its record plus `age`, the seconds since its last
    heartbeat on the host) is stale, or None while its deploy may be running."""
    pid = holder.get("pid")
    here = machine if machine is not None else machine_id()
    if pid and here and holder.get("machine") == here:
        # Taken from this machine: its process tells more than any heartbeat.
        if alive(pid, holder.get("proc_start")):
            return None
        return f"its process {pid} on {holder.get('controller')} is gone"
    interval = float(holder.get("heartbeat") or HEARTBEAT)
    age = holder.get("age")
    if age is not None and age > STALE_AFTER * interval:
        return f"no heartbeat for {age:.0f}s (it beats every {interval:g}s)"
    return None


def acquire_script(path: str, record: str, then: str = "") -> str:
    """Take the lock at `path`, or print who holds it and their heartbeat's age; once
    taken, run the program `then` (what the caller reads under the lock: one round trip).

    Prints `@@lock acquired` and what `then` prints, or `@@lock held`, `@@age SECONDS`,
    `@@holder RECORD`."""
    script = render.render_script("lock_acquire.sh.j2", path=path, record=record,
                                  lock_dir=os.path.dirname(path))
    return script + (f'if [ -n "$LOCK_ACQUIRED" ]; then\n(\n{then.rstrip()}\n)\nfi\n'
                     if then else "")


def heartbeat_script(path: str, token: str) -> str:
    """Touch the lock at `path` while it holds `token` (never recreate a removed one)."""
    return render.render_script("lock_heartbeat.sh.j2", path=path, token=token)


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


def note_script(path: str, token: str, record: str) -> str:
    """Rewrite our lock's record (progress), only while it still holds `token`."""
    return render.render_script("lock_note.sh.j2", path=path, token=token, record=record)


def read_lock_script(path: str) -> str:
    """Who holds the lock at `path`: the facts `acquire_script` prints for a held one,
    or `@@lock free`."""
    return render.render_script("lock_read.sh.j2", path=path)


def remove_lock_script(path: str, holder_id: str | None) -> str:
    """Remove the lock at `path` if it still holds `holder_id` (any lock if None):
    our release, a takeover of a dead run's lock, `unlock`. Prints `@@unlocked` when
    it removed one."""
    return render.render_script("lock_remove.sh.j2", path=path, token=holder_id or "")


class FleetLock:
    """The deploy lock of one service on every host of a fleet.

    `say(kind, message, **fields)` reports a takeover of a stale lock; the
    takeovers are kept in `taken_over` for the history."""

    def __init__(self, fleet, service, action: str, *, wait: float = 0, say=None,
                 then=None):
        self.fleet = fleet
        self.service = service
        self.owner = owner_record(action)
        self.wait = wait
        self.say = say or (lambda kind, message, **fields: None)
        self.held: list[str] = []
        # then(target) -> a program run on each host as soon as its lock is ours, in the
        # same round trip; what it printed is in `outputs` (host -> stdout).
        self.then = then
        self.outputs: dict[str, str] = {}
        self._connected = False  # every host connected, in the first attempt (_try)
        self.taken_over: list[dict] = []
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
                if why and holder.get("id"):
                    self._take_over(holder, why)
                    continue
                # A stale lock we cannot take over is refused at once: waiting never ends.
                if why or time.monotonic() >= deadline:
                    self._refuse(holder, why)
                time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        except BaseException:
            self.release()  # Ctrl-C half way through: drop what was taken
            raise
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat", daemon=True)
        self._beat.start()

    def _take_over(self, holder: dict, why: str) -> None:
        """Break a dead deploy's lock on every host that still has it, and say so loudly
        (with the furthest wave any host's lock noted: a deploy killed while noting a
        wave may have reached only some hosts)."""
        stale_id = holder["id"]
        outs, _ = each(list(self.fleet), lambda t: t.run(
            remove_lock_script(self._path(t), stale_id),
            what="breaking a stale deploy lock").stdout, parallel=self.service.parallel)
        waves = [holder.get("wave") or 0]
        for out in outs.values():
            try:
                waves.append(int(json.loads(facts(out).get("removed") or "{}").get("wave") or 0))
            except (ValueError, TypeError, AttributeError):
                pass
        if max(waves):
            holder = dict(holder, wave=max(waves))
        if all(h.get("id") != stale_id for h in self.taken_over):
            self.taken_over.append(dict(holder, stale=why))
            reached = f", it had reached wave {holder['wave']}" if holder.get("wave") else ""
            self.say("lock_takeover",
                     f"WARNING: taking over the lock of a dead deploy of {self.service.name} "
                     f"({why}): {describe_holder(holder)}{reached}. The fleet it left may be "
                     "mixed: check `deploytools status` (a plain `deploytools rollback` returns every host to "
                     "one release).", holder=holder, stale=why)

    def _refuse(self, holder: dict, stale: str | None) -> None:
        name = self.service.name
        if stale:
            raise LockedError(
                f"{name} is locked by a deploy that looks dead ({stale}): "
                f"{describe_holder(holder)}. The lock is stale. If no deploy of {name} is "
                f"running, break it with: deploytools unlock:{name}")
        raise LockedError(
            f"{name} is locked by another deploy: {describe_holder(holder)}. "
            "Wait for it to finish (or use --lock-wait SECONDS). If that deploy died, the "
            f"next deploy takes its lock over once it has missed {STALE_AFTER} heartbeats "
            f"(or break it now with: deploytools unlock:{name},force=true)")

    def _try(self) -> dict | None:
        """One attempt: the first host of the service's order first (two deploys of one
        service meet there, and only one gets further), then all the others at once.
        The others start as soon as the first host says whose lock it is, while the
        rest of its program (`then`) still runs, and they connect meanwhile.
        Any host held by someone else releases what was taken and returns its holder."""
        record = json.dumps(self.owner)
        self.outputs = {}
        outs: dict[str, str] = {}  # filled by each call itself: a signal loses none

        def take(target, on_line=None):
            then = self.then(target) if self.then else ""
            outs[target.name] = target.run(acquire_script(self._path(target), record, then),
                                           what="taking the deploy lock",
                                           on_line=on_line).stdout
        targets = list(self.fleet)
        first, rest = targets[0], targets[1:]
        errors: dict[str, BaseException] = {}
        told = threading.Event()  # the first host printed @@lock acquired|held
        said: list[str] = []

        def watch(line: str) -> None:
            if line.startswith("@@lock ") and not said:
                said.append(line.strip())
                told.set()

        def first_step():
            try:
                take(first, watch)
            except BaseException as e:  # noqa: BLE001  reported below, in order
                errors[first.name] = e
            finally:
                told.set()
        thread = threading.Thread(target=first_step, name="lock-first", daemon=True)
        interrupted: BaseException | None = None
        try:
            with signals.held():
                thread.start()
            if not self._connected:
                _, errs = each(rest, lambda t: t.connect(), parallel=self.service.parallel)
                errors.update(errs)
                self._connected = True
            told.wait()
            if said != ["@@lock acquired"]:  # held (or failed): its program ends right away
                thread.join()
            # Acquired: the program goes on with `then` while the others are locked.
            if not errors and said == ["@@lock acquired"]:
                errors.update(each(rest, take, parallel=self.service.parallel)[1])
        except BaseException as e:  # a signal: what was taken is counted first, so that
            interrupted = e         # the caller's release() drops it
        finally:
            # The first host's program has ended before its lock is counted.
            thread.join()
        holders = []
        for target in targets:  # in order: `held` is released in reverse
            if target.name not in outs:
                continue
            holder = parse_holder(outs[target.name])
            if holder is None:
                self.held.append(target.name)
                self.outputs[target.name] = outs[target.name]
            else:
                holders.append(dict(holder, host=target.name))
        if interrupted is not None:
            raise interrupted
        if errors or holders:
            self.release()
            if errors:
                raise next(errors[t.name] for t in targets if t.name in errors)
            return holders[0]
        return None

    def note_program(self, target, **progress) -> str:
        """The program that records `progress` (e.g. wave=2) in our lock on `target`,
        for whoever finds the lock after a crash. Best effort: a failure there prints
        `@@step_failed lock_note` and never stops the program it is part of. The
        rollout sends it inside each host's activation, so a host's lock names the
        wave before that host switches, at no round trip of its own; a takeover reads
        the furthest wave of all the hosts' locks."""
        self.owner.update(progress)
        return guarded(note_script(self._path(target), self.owner["id"],
                                   json.dumps(self.owner)), "lock_note")

    def _heartbeat(self) -> None:
        def beat(t):
            t.run(heartbeat_script(self._path(t), self.owner["id"]), check=False,
                  timeout=max(5.0, self.interval), what="lock heartbeat")
        while not self._stop.wait(self.interval):
            # A missed beat (a host briefly unreachable) is not worth failing a deploy for.
            each([self.fleet[n] for n in self.held], beat, parallel=8)

    def release(self, before=None) -> dict[str, str]:
        """Stop the heartbeat and remove our lock on every host, in reverse order; with
        `before(target) -> program`, run that program first in the same round trip (the
        history line, the pruning: a failure there never keeps the lock). Returns each
        host's output."""
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=10)
            self._beat = None

        def drop(target):
            if target.name in self.held:
                first = guarded(before(target), "before_unlock") if before else ""
                return target.run(first + remove_lock_script(self._path(target),
                                                             self.owner["id"]),
                                  check=False, what="releasing the deploy lock").stdout
            return ""
        outs, _ = each([self.fleet[n] for n in reversed(self.held)], drop,
                       parallel=self.service.parallel)
        self.held.clear()
        return outs

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def read_locks(fleet, service) -> dict[str, dict | None]:
    """Each host's lock holder (its record plus `age`), or None where unlocked."""
    def read(t):
        out = t.run(read_lock_script(service.dir_on(t.host) + "/.lock"),
                    what="reading the lock").stdout
        return None if facts(out).get("lock") == "free" else parse_holder(out)
    out, errors = each(fleet, read, parallel=service.parallel)
    if errors:
        raise DeployError("could not read the lock on every host:\n" + errors_text(errors))
    return out


def describe_holder(holder: dict) -> str:
    if "raw" in holder:
        return f"lock file on {holder.get('host')} says {holder['raw']!r}"
    job = f", job {holder['job']}" if holder.get("job") else ""
    age = holder.get("age")
    beat = f", last heartbeat {age:.0f}s ago on {holder.get('host')}" if age is not None else ""
    return (f"{holder.get('user')} ({holder.get('action')} from {holder.get('controller')} "
            f"pid {holder.get('pid')}{job}) since {holder.get('started')}{beat}")


def history_append_script(dir: str, record: dict) -> str:
    """Append `record` as one JSON line to the host's history.jsonl (any size: the
    script travels on stdin and printf is a builtin, so no argument limit applies)."""
    line = redact_json(json.dumps(record, sort_keys=True, default=str))
    return render.render_script("history_append.sh.j2", dir=dir, line=line)


HISTORY_COLUMNS = ("when", "who", "action", "from", "to", "tag", "outcome", "secs", "hosts",
                   "steps", "gates")


def history_row(record: dict) -> dict:
    """One line of `deploytools history`: a deploy or rollback, merged over its hosts
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
