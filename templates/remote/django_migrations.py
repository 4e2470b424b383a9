"""List the migrations Django would apply, with the facts of each operation.

Runs on a host, in a release directory, with the release's virtualenv and
environment (deploytools sends it to `python -` on stdin: it is never a file
on the host). It decides nothing: it prints one line

    @@migrations_plan {"django": "5.0.6", "pending": [...]}

and deploytools.migrations classifies the operations (pure code, tested on
these facts). Django's own MigrationLoader/MigrationExecutor read the
migration graph and the django_migrations table, so squashed and replaced
migrations, dependencies across apps and the database state are Django's.

Imported by the unit tests too (operation_facts), so it must import without
a configured Django project: the setup happens in main().
"""
import json
import os
import sys

OPERATIONS_MODULE = "django.db.migrations.operations"


def _not_provided():
    from django.db.models.fields import NOT_PROVIDED
    return NOT_PROVIDED


def field_facts(field):
    """What the classification needs to know of a model field (None: no field)."""
    if field is None:
        return None
    missing = _not_provided()
    return {
        "type": type(field).__name__,
        "null": bool(getattr(field, "null", False)),
        "has_default": bool(field.has_default()),
        "db_default": getattr(field, "db_default", missing) is not missing,
        "db_column": getattr(field, "db_column", None),
        "many_to_many": bool(getattr(field, "many_to_many", False)),
    }


def _model_state(state, app_label, model_name):
    if state is None or not model_name:
        return None
    return state.models.get((app_label, model_name.lower()))


def _together(value):
    return sorted(sorted(t) for t in (value or ()))


def operation_facts(op, state=None, app_label=""):
    """Facts of one operation, given the project state just before it (or None)."""
    cls = type(op)
    facts = {
        "op": cls.__name__,
        "builtin": cls.__module__.startswith(OPERATIONS_MODULE),
        "describe": op.describe(),
        "reversible": bool(op.reversible),
    }
    # Field operations name their model in model_name, model operations in name.
    model = _model_state(state, app_label, getattr(op, "model_name", None)
                         or getattr(op, "name", None))
    if hasattr(op, "field") and getattr(op, "field", None) is not None:
        facts["field"] = field_facts(op.field)
    if cls.__name__ in ("AlterField", "RemoveField", "RenameField"):
        old = None
        name = getattr(op, "old_name", None) or op.name
        if model is not None and name in model.fields:
            old = model.fields[name]
        facts["old_field"] = field_facts(old)
    if cls.__name__ in ("AlterUniqueTogether", "AlterIndexTogether"):
        facts["new"] = _together(op.option_value)
        facts["old"] = (_together(model.options.get(op.option_name)) if model is not None
                        else None)
    if cls.__name__ == "AlterOrderWithRespectTo":
        facts["order_with_respect_to"] = op.order_with_respect_to
    if cls.__name__ == "SeparateDatabaseAndState":
        facts["database_operations"] = [operation_facts(o, None, app_label)
                                        for o in op.database_operations]
    return facts


def pending(executor):
    """[(migration, state before it)] for every migration Django would apply, in order."""
    loader = executor.loader
    plan = executor.migration_plan(loader.graph.leaf_nodes())
    nodes = [(m.app_label, m.name) for m, backwards in plan if not backwards]
    out = []
    for m, backwards in plan:
        if backwards:
            continue
        key = (m.app_label, m.name)
        state = loader.project_state(key, at_end=False)
        ops = []
        for op in m.operations:
            ops.append(operation_facts(op, state, m.app_label))
            op.state_forwards(m.app_label, state)
        module = sys.modules.get(type(m).__module__)
        path = getattr(module, "__file__", None) or ""
        if path:
            path = os.path.relpath(os.path.realpath(path), os.path.realpath(os.getcwd()))
        ancestors = set(loader.graph.forwards_plan(key)) if key in loader.graph.nodes else set()
        out.append({
            "app": m.app_label, "name": m.name, "file": path,
            "post_deploy": getattr(m, "post_deploy", False) is True,
            "depends": [f"{a}.{n}" for a, n in nodes if (a, n) in ancestors and (a, n) != key],
            "operations": ops,
        })
    return out


def main():
    import django
    django.setup()
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.executor import MigrationExecutor
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    print("@@migrations_plan " + json.dumps(
        {"django": django.get_version(), "pending": pending(executor)}, sort_keys=True))


if __name__ == "__main__":
    main()
