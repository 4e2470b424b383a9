"""Migrations in a rolling deploy, pure: expand before the canary, contract after the last wave.

While a deploy runs, the old release keeps serving on every host not yet in a
wave. A migration that only *expands* the schema (a new table, a nullable
column, an index) is safe under the old code; one that *contracts* it (drops
or renames a column or table, makes a column NOT NULL) breaks every old host
the moment it commits, and no rollback brings the column back.

The facts come from the new release itself (templates/remote/django_migrations.py,
run by Django's MigrationLoader in the release's virtualenv on the first host);
this module only classifies them:

    probe output -> parse_probe -> [facts] -> pending(...) -> [Pending]

A `Pending` is (name, file, operations, verdict, post_deploy): any other
framework's probe (Alembic, say) that yields the same shape plugs in at
`pending()`. `check()` is the policy: a contract not marked post-deploy
refuses the deploy (exit 2) unless forced; unknown operations warn, or refuse
with `migrations.strict`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from .errors import UsageError

EXPAND, CONTRACT, UNKNOWN = "expand", "contract", "unknown"
_RANK = {EXPAND: 0, UNKNOWN: 1, CONTRACT: 2}

BEFORE = "before the canary"
AFTER = "after the last wave"

# Every operation class of django.db.migrations.operations: its verdict, and why.
# `depends` rows are decided from the operation's facts (see classify); the unit test
# tests/unit/test_migrations.py holds this table to Django's own list, and
# docs/design.md ("Migrations in a rolling deploy") to this table.
TABLE: dict[str, tuple[str, str]] = {
    "CreateModel": (EXPAND, "a new table: the old code never reads it"),
    "DeleteModel": (CONTRACT, "drops a table the old code still reads"),
    "RenameModel": (CONTRACT, "renames a table: the old code's queries name the old one"),
    "AlterModelTable": (CONTRACT, "renames a table: the old code's queries name the old one"),
    "AlterModelTableComment": (EXPAND, "a comment only"),
    "AlterModelOptions": (EXPAND, "Python-side options (ordering, verbose names): no schema change"),
    "AlterModelManagers": (EXPAND, "managers live in Python: no schema change"),
    "AlterUniqueTogether": ("depends", "contract when it adds a unique set (the old code's writes "
                                       "may violate it); expand when it only removes"),
    "AlterIndexTogether": (EXPAND, "indexes only: no read or write of the old code changes"),
    "AlterOrderWithRespectTo": ("depends", "contract when it removes the _order column the old "
                                           "code writes; unknown when it adds one (NOT NULL)"),
    "AddIndex": (EXPAND, "an index: the old code's queries work the same"),
    "RemoveIndex": (EXPAND, "an index: the old code's queries work the same (maybe slower)"),
    "RenameIndex": (EXPAND, "queries never name an index"),
    "AddConstraint": (CONTRACT, "a new constraint: the old code's writes may violate it"),
    "RemoveConstraint": (EXPAND, "removing a constraint only allows more"),
    "AlterConstraint": (EXPAND, "changes attributes that are not in the database"),
    "AddField": ("depends", "expand when the column is nullable, has a database default "
                            "(db_default) or is many-to-many (a new table); unknown when NOT "
                            "NULL with only a Python default: Django drops the default after "
                            "the backfill, so the old code's INSERTs fail"),
    "RemoveField": (CONTRACT, "drops a column the old code still reads and writes"),
    "AlterField": ("depends", "contract when it makes the column NOT NULL without a database "
                              "default, or renames its column (db_column); else expand"),
    "RenameField": (CONTRACT, "renames a column: the old code's queries name the old one"),
    "RunSQL": (UNKNOWN, "arbitrary SQL: only a person can tell"),
    "RunPython": (UNKNOWN, "arbitrary code: only a person can tell"),
    "SeparateDatabaseAndState": ("depends", "the worst verdict of its database_operations "
                                            "(state_operations change no schema)"),
}
CUSTOM = (UNKNOWN, "not one of Django's operations: only a person can tell")


def worst(verdicts: Iterable[str]) -> str:
    return max(verdicts, key=_RANK.__getitem__, default=EXPAND)


def classify(facts: dict) -> tuple[str, str]:
    """(verdict, reason) of one operation from its facts (django_migrations.operation_facts)."""
    name = facts.get("op", "?")
    if not facts.get("builtin", False) or name not in TABLE:
        return CUSTOM
    verdict, reason = TABLE[name]
    if verdict != "depends":
        return verdict, reason
    f = facts.get("field") or {}
    if name == "AddField":
        if f.get("null") or f.get("db_default") or f.get("many_to_many"):
            return EXPAND, "a nullable (or database-defaulted) column: the old code ignores it"
        return UNKNOWN, ("a NOT NULL column with only a Python default: the old code's "
                         "INSERTs fail once Django drops the default; add it null=True (or "
                         "with db_default) first")
    if name == "AlterField":
        old = facts.get("old_field") or {}
        if old and old.get("db_column") != f.get("db_column"):
            return CONTRACT, "renames the column the old code reads"
        if not f.get("null") and not f.get("db_default") and old.get("null", True):
            return CONTRACT, ("makes the column NOT NULL without a database default: the "
                              "old code may write NULL")
        return EXPAND, "the old code can still read and write the column"
    if name == "AlterUniqueTogether":
        old = facts.get("old")
        new = facts.get("new") or []
        if old is None or any(t not in old for t in new):
            return CONTRACT, "adds a unique set: the old code's writes may violate it"
        return EXPAND, "only removes unique sets"
    if name == "AlterOrderWithRespectTo":
        if facts.get("order_with_respect_to") is None:
            return CONTRACT, "removes the _order column the old code writes"
        return UNKNOWN, "adds a NOT NULL _order column the old code does not write"
    if name == "SeparateDatabaseAndState":
        inner = [classify(o) for o in facts.get("database_operations") or []]
        if not inner:
            return EXPAND, "state only: no schema change"
        v = worst(x[0] for x in inner)
        return v, next(r for x, r in inner if x == v)
    return CUSTOM  # pragma: no cover - every `depends` row is handled above


@dataclass
class Operation:
    kind: str  # the class name, e.g. RemoveField
    description: str  # Django's describe(): "Remove field gate from flight"
    verdict: str
    reason: str
    reversible: bool = True

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Pending:
    """One migration a deploy would apply: what any framework's probe must yield."""
    name: str  # app.name (Django) or a revision id
    file: str  # relative to the release
    operations: list[Operation] = field(default_factory=list)
    post_deploy: bool = False
    depends: list[str] = field(default_factory=list)  # pending migrations it needs first
    marked_by: str = ""  # "class attribute" | "services.yaml" | ""

    @property
    def verdict(self) -> str:
        return worst(op.verdict for op in self.operations)

    @property
    def when(self) -> str:
        return AFTER if self.post_deploy else BEFORE

    @property
    def reversible(self) -> bool:
        return all(op.reversible for op in self.operations)

    def to_dict(self) -> dict:
        return {"name": self.name, "file": self.file, "verdict": self.verdict,
                "post_deploy": self.post_deploy, "when": self.when,
                "marked_by": self.marked_by, "depends": self.depends,
                "reversible": self.reversible,
                "operations": [op.to_dict() for op in self.operations]}


def parse_probe(stdout: str) -> dict:
    """The probe's `@@migrations_plan JSON` line -> its data."""
    for line in stdout.splitlines():
        if line.startswith("@@migrations_plan "):
            return json.loads(line.split(" ", 1)[1])
    raise ValueError("the migration probe printed no @@migrations_plan line")


def pending(data: dict, marked: Iterable[str] = ()) -> list[Pending]:
    """The probe's data -> classified migrations. `marked`: names (app.name) listed in
    services.yaml's post_deploy_migrations."""
    marked = set(marked)
    out = []
    for m in data.get("pending", []):
        name = f"{m['app']}.{m['name']}"
        ops = []
        for f in m.get("operations", []):
            verdict, reason = classify(f)
            ops.append(Operation(f.get("op", "?"), f.get("describe", ""), verdict, reason,
                                 bool(f.get("reversible", True))))
        by = "class attribute" if m.get("post_deploy") else \
            "services.yaml" if name in marked else ""
        out.append(Pending(name, m.get("file", ""), ops, bool(by), list(m.get("depends", [])),
                           by))
    return out


def from_records(records: Iterable[dict]) -> list[Pending]:
    """Pending.to_dict() records (a release's .deploy/migration-plan.json) -> Pending."""
    return [Pending(r["name"], r.get("file", ""),
                    [Operation(o["kind"], o.get("description", ""), o["verdict"],
                               o.get("reason", ""), o.get("reversible", True))
                     for o in r.get("operations", [])],
                    r.get("post_deploy", False), r.get("depends", []), r.get("marked_by", ""))
            for r in records]


def check(service: str, migrations: list[Pending], *, force: bool = False,
          strict: bool = False) -> list[str]:
    """The policy. Returns warnings; raises UsageError (exit 2, nothing touched) for a
    contract not marked post-deploy (unless `force`), an unknown operation under
    `strict`, or a migration that runs before the canary but needs a post-deploy one."""
    warnings: list[str] = []
    post = {m.name for m in migrations if m.post_deploy}
    for m in migrations:
        early = [d for d in m.depends if d in post]
        if not m.post_deploy and early:
            raise UsageError(
                f"migration {m.name} ({m.file}) runs before the canary but depends on "
                f"post-deploy {', '.join(early)}: mark it post-deploy too, or move it to a "
                "later release.")
    for m in migrations:
        if m.post_deploy:
            continue
        for op in m.operations:
            if op.verdict == CONTRACT:
                text = (f"migration {m.name} ({m.file}) contracts the schema while the old "
                        f"release still serves: {op.kind}: {op.description} ({op.reason}).")
                if force:
                    warnings.append(f"force=true: {text} It runs before the canary anyway; "
                                    "the old hosts may fail until their wave.")
                    continue
                raise UsageError(
                    f"{text} Every host not yet switched would fail from the moment it "
                    "commits, and a rollback cannot bring the column back. Either mark it "
                    "post-deploy (`post_deploy = True` on the Migration class, or list "
                    f"{m.name} in post_deploy_migrations:) so it runs once after the last "
                    "wave, or split the change into an expand release (stop using the "
                    "column) and a later contract release. force=true deploys it anyway.")
            elif op.verdict == UNKNOWN:
                text = (f"migration {m.name} ({m.file}): {op.kind}: {op.description} "
                        f"({op.reason}); check that the old release still works with it.")
                if strict:
                    raise UsageError(f"{text} Refused because migrations.strict is true: "
                                     "mark it post-deploy, or deploy with force=true.")
                warnings.append(text)
    return warnings


def pre_targets(migrations: list[Pending]) -> list[tuple[str, str]] | None:
    """What the before-the-canary run migrates to, per app, when some pending migrations
    are post-deploy: [(app, last migration before its first post-deploy one)]. None:
    nothing is post-deploy, so a plain `migrate` applies everything."""
    if not any(m.post_deploy for m in migrations):
        return None
    targets: dict[str, str] = {}
    stopped: set[str] = set()
    for m in migrations:  # in the order Django applies them
        app, _, name = m.name.partition(".")
        if m.post_deploy:
            stopped.add(app)
        elif app not in stopped:
            targets[app] = name
    return list(targets.items())


def contracted(records: Iterable[dict]) -> list[str]:
    """Names of the post-deploy migrations that ran, from migration-plan records."""
    return [r["name"] for r in records if r.get("post_deploy") and r.get("ran")]


def irreversible_contracts(records: Iterable[dict]) -> list[Pending]:
    """Contract migrations that ran and have an operation Django cannot reverse
    (RunPython without reverse_code, RunSQL without reverse_sql, ...): what
    `rollback migrate=true` refuses to reverse."""
    return [m for m in from_records(r for r in records if r.get("ran"))
            if m.verdict == CONTRACT and not m.reversible]
