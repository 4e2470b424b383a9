"""Per-service deploy lock across the fleet, and the append-only deploy history.

The lock is a `.lock` file on every host of the deploy, created with O_EXCL
(bash noclobber) so two deploys can never both hold a host. It is taken on
all hosts in a fixed order and released in reverse; failing on any host
releases what was taken and names the holder.
"""
from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone

from .errors import LockedError
from .inventory import each
from .script import q


def owner_record(action: str) -> dict:
    who = os.environ.get("DEPLOYTOOLS_USER") or os.environ.get("GITLAB_USER_LOGIN") \
        or os.environ.get("GITHUB_ACTOR") or getpass.getuser()
    job = os.environ.get("CI_JOB_URL") or os.environ.get("GITHUB_RUN_ID") or os.environ.get("BUILD_URL")
    return {"id": uuid.uuid4().hex[:12], "user": who, "job": job, "controller": socket.gethostname(),
            "pid": os.getpid(), "action": action,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class FleetLock:
    def __init__(self, fleet, service, action: str, *, wait: float = 0):
        self.fleet = fleet
        self.service = service
        self.owner = owner_record(action)
        self.wait = wait
        self.held: list[str] = []

    def _path(self, target) -> str:
        return self.service.dir_on(target.host) + "/.lock"

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            holder = self._try()
            if holder is None:
                return
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{self.service.name} is locked by another deploy: {describe_holder(holder)}. "
                    "Wait for it to finish (or use --lock-wait SECONDS); if that deploy is dead, "
                    f"break the lock with: fab unlock:{self.service.name}")
            time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))

    def _try(self) -> dict | None:
        record = json.dumps(self.owner)
        for target in self.fleet:
            path = self._path(target)
            r = target.run(f"mkdir -p {q(os.path.dirname(path))}\n"
                           f"if (set -o noclobber; printf '%s\\n' {q(record)} > {q(path)}) 2>/dev/null; "
                           f"then echo @@lock acquired; else echo @@lock held; cat {q(path)}; fi",
                           what="taking the deploy lock")
            if "@@lock acquired" in r.stdout:
                self.held.append(target.name)
                continue
            text = r.stdout.split("@@lock held", 1)[-1].strip()
            self.release()
            try:
                holder = json.loads(text)
            except ValueError:
                holder = {"raw": text}
            holder["host"] = target.name
            return holder
        return None

    def release(self) -> None:
        token = q(self.owner["id"])

        def drop(target):
            if target.name in self.held:
                path = q(self._path(target))
                target.run(f"grep -q {token} {path} 2>/dev/null && rm -f {path} || true",
                           check=False, what="releasing the deploy lock")
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
    return (f"{holder.get('user')} ({holder.get('action')} from {holder.get('controller')} "
            f"pid {holder.get('pid')}{job}) since {holder.get('started')}")


def unlock_script(dir: str) -> str:
    return f"if [ -f {q(dir)}/.lock ]; then cat {q(dir)}/.lock; rm -f {q(dir)}/.lock; echo @@unlocked; fi\n"


def history_append_script(dir: str, record: dict) -> str:
    line = json.dumps(record, sort_keys=True, default=str)
    return f"mkdir -p {q(dir)} && printf '%s\\n' {q(line)} >> {q(dir)}/history.jsonl\n"


def history_read_script(dir: str, limit: int) -> str:
    return f"tail -n {int(limit)} {q(dir)}/history.jsonl 2>/dev/null || true\n"
