"""Smart deploy decisions, pure: (what changed between live and target) -> steps.

A step is needed when the change touches its inputs:
- virtualenv: the requirements file (a new venv, and a restart onto it);
- migrate: a new or changed migration file (`<app>/migrations/NNNN_*.py`);
- collectstatic: any file under a `static/` directory (otherwise the live
  release's collected files are reused, hard-linked);
- build (kind command): always; a build has no declared inputs to compare.
With nothing live yet every step is needed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_MIGRATION = re.compile(r"(^|/)migrations/\d{4}_[^/]*\.py$")
_STATIC = re.compile(r"(^|/)static/")


@dataclass(frozen=True)
class Step:
    name: str
    run: bool
    reason: str


@dataclass
class Plan:
    service: str
    target: str
    live: list[str]  # distinct live commits (empty: nothing deployed)
    steps: list[Step] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)

    def runs(self, name: str) -> bool:
        return any(s.name == name and s.run for s in self.steps)

    def to_dict(self) -> dict:
        return {"service": self.service, "target": self.target, "live": self.live,
                "steps": [s.__dict__ for s in self.steps], "waves": self.waves}


def decide(service, target: str, changes: dict[str, list[str] | None]) -> list[Step]:
    """`changes` maps each live commit to the files changed from it to `target`
    (None: unknown, e.g. the live commit is not in the repository)."""
    steps: list[Step] = []

    def needed(predicate, what: str) -> tuple[bool, str]:
        if not changes:
            return True, "nothing is live yet"
        for live, files in changes.items():
            if files is None:
                return True, f"cannot compare with live {live[:7]}"
            hits = [f for f in files if predicate(f)]
            if hits:
                more = f" (+{len(hits) - 3} more)" if len(hits) > 3 else ""
                return True, f"{what} changed since {live[:7]}: {', '.join(hits[:3])}{more}"
        return False, f"{what} unchanged"

    if service.kind != "command":
        req = service.requirements
        run, why = needed(lambda f: bool(req) and f == req, req or "requirements")
        steps.append(Step("venv", run, why))
    if service.kind == "command" and service.build:
        steps.append(Step("build", True, "a build step always runs (no declared inputs)"))
    if service.kind == "django" and service.collectstatic:
        run, why = needed(lambda f: bool(_STATIC.search(f)), "static files")
        steps.append(Step("collectstatic", run, why))
    if service.kind == "django" and service.migrate:
        run, why = needed(lambda f: bool(_MIGRATION.search(f)), "migrations")
        steps.append(Step("migrate", run, why))
    venv = next((s for s in steps if s.name == "venv"), None)
    restart = venv is not None and venv.run and bool(changes)
    steps.append(Step("restart" if restart else "reload", True,
                      "new virtualenv: the processes restart onto it" if restart
                      else "same virtualenv: graceful reload, no request dropped"))
    return steps


def migration_delta(current: dict[str, str], target: dict[str, str]) -> list[str]:
    """Migrations applied in `current` that `target` lacks, as app.name, per app.

    Each dict maps app -> its last applied migration (from a release manifest).
    Only apps whose last migration differs are named.
    """
    return [f"{app}.{name}" for app, name in sorted(current.items())
            if target.get(app) != name]


def parse_showmigrations(output: str) -> dict[str, str]:
    """`manage.py showmigrations --list` -> {app: last applied migration}."""
    state: dict[str, str] = {}
    app = None
    for line in output.splitlines():
        if line and not line.startswith(" "):
            app = line.strip()
            continue
        m = re.match(r"^\s*\[(?P<mark>[X ])\]\s+(?P<name>\S+)", line)
        if m and app and m.group("mark") == "X":
            state[app] = m.group("name")
    return state
