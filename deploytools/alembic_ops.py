"""Expand or contract: what an Alembic migration's upgrade() does to the schema (pure).

The rollout runs `migrate_command` once, before the canary, while the old code still
serves on every other host. An *expand* operation (a new table, a nullable column, an
index) is safe then; a *contract* one breaks the old code the moment it commits:

    op.drop_column, op.drop_table, op.drop_constraint, op.rename_table,
    op.alter_column(..., nullable=False) or (..., new_column_name=...)
    (and the same names on a batch_op inside `with op.batch_alter_table(...)`)

`op.execute` (raw SQL), `op.get_bind()` and anything else not in the table below
is *unknown*: the deploy goes on and warns. A file that cannot be parsed, or has no
upgrade(), is unknown too. Read from the source with `ast`; nothing is imported.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

CONTRACT = {"drop_column", "drop_table", "drop_constraint", "rename_table"}
EXPAND = {"add_column", "create_table", "create_index", "create_unique_constraint",
          "create_foreign_key", "create_check_constraint", "create_primary_key",
          "create_table_comment", "create_exclude_constraint", "bulk_insert",
          "create_sequence",
          "batch_alter_table", "f", "inline_literal"}  # (containers and helpers)
# Dropping an index only slows the old code's queries down; it does not break them.
EXPAND |= {"drop_index", "drop_table_comment"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    op: str       # "drop_column", "alter_column(nullable=False)", "execute", "upgrade()"
    verdict: str  # "expand" | "contract" | "unknown"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: op.{self.op} ({self.verdict})"


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _alter(call: ast.Call) -> tuple[str, str]:
    nullable = _kw(call, "nullable")
    if isinstance(nullable, ast.Constant) and nullable.value is False:
        # NOT NULL breaks the old code's inserts unless the database fills the column.
        default = _kw(call, "server_default")
        if default is None or (isinstance(default, ast.Constant) and default.value is None):
            return "alter_column(nullable=False)", "contract"
    if _kw(call, "new_column_name") is not None:
        return "alter_column(new_column_name=...)", "contract"
    if nullable is not None and not isinstance(nullable, ast.Constant):
        return "alter_column(nullable=<expression>)", "unknown"
    if _kw(call, "type_") is not None:
        return "alter_column(type_=...)", "unknown"  # safe or not depends on the types
    return "alter_column", "expand"


def classify(path: str, source: str) -> list[Finding]:
    """The operations of the migration's upgrade(), in source order."""
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as e:
        why = e.msg if isinstance(e, SyntaxError) else str(e)
        return [Finding(path, getattr(e, "lineno", 0) or 0, f"<cannot parse: {why}>", "unknown")]
    upgrade = next((n for n in tree.body
                    if isinstance(n, ast.FunctionDef) and n.name == "upgrade"), None)
    if upgrade is None:
        return [Finding(path, 1, "upgrade()", "unknown")]
    batch_names = {"op"}
    for node in ast.walk(upgrade):  # `with op.batch_alter_table("t") as batch_op:`
        if isinstance(node, ast.With):
            for item in node.items:
                if isinstance(item.optional_vars, ast.Name):
                    batch_names.add(item.optional_vars.id)
    found = []
    for node in ast.walk(upgrade):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in batch_names):
            continue
        name = node.func.attr
        if name == "alter_column":
            op, verdict = _alter(node)
        elif name in CONTRACT:
            op, verdict = name, "contract"
        elif name in EXPAND:
            op, verdict = name, "expand"
        else:
            op, verdict = name, "unknown"
        found.append(Finding(path, node.lineno, op, verdict))
    found.sort(key=lambda f: f.line)
    return found


def under(path: str, migrations_path: str) -> bool:
    """Whether a repository path is inside `migrations_path` (a directory)."""
    base = migrations_path.rstrip("/")
    return path == base or path.startswith(base + "/")


def changed_migrations(files: list[str], migrations_path: str) -> list[str]:
    """The Python files among `files` that are migrations under `migrations_path`."""
    return sorted(f for f in files if under(f, migrations_path) and f.endswith(".py")
                  and not f.rsplit("/", 1)[-1].startswith("__"))
