"""Issue 12: every operation of Django's migrations, classified expand / contract / unknown.

The facts come from the probe the hosts run (templates/remote/django_migrations.py),
fed here with real operation objects and project states from the test venv's Django;
the verdicts from deploytools.migrations. The table of docs/design.md must say the same.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import django
from django.conf import settings

if not settings.configured:
    settings.configure(INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
    django.setup()

from django.db import migrations as ops_mod, models  # noqa: E402
from django.db.migrations import operations as operations_pkg  # noqa: E402
from django.db.migrations.state import ModelState, ProjectState  # noqa: E402

from deploytools import migrations as mig  # noqa: E402
from deploytools.errors import UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "django_migrations_probe", ROOT / "templates" / "remote" / "django_migrations.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

E, C, U = mig.EXPAND, mig.CONTRACT, mig.UNKNOWN


def state() -> ProjectState:
    """The project before each operation: app `a`, model Flight(number NOT NULL,
    gate NULL, code NOT NULL), unique together (number,), an index and a constraint."""
    s = ProjectState()
    s.add_model(ModelState("a", "Flight", [
        ("id", models.BigAutoField(primary_key=True)),
        ("number", models.CharField(max_length=16)),
        ("gate", models.CharField(max_length=8, null=True)),
        ("code", models.CharField(max_length=8, db_column="code")),
    ], options={"unique_together": {("number",)}, "index_together": set(),
                "indexes": [models.Index(fields=["number"], name="flight_number_idx")],
                "constraints": [models.CheckConstraint(
                    condition=models.Q(number__gt=""), name="number_set")]}))
    return s


def noop(apps, schema_editor):
    pass


# (case id, operation, expected verdict). Every class of django.db.migrations.operations
# appears at least once (test_every_django_operation_has_a_case).
CASES = [
    ("CreateModel", ops_mod.CreateModel("Gate", [("id", models.BigAutoField(primary_key=True))]), E),
    ("DeleteModel", ops_mod.DeleteModel("Flight"), C),
    ("RenameModel", ops_mod.RenameModel("Flight", "Trip"), C),
    ("AlterModelTable", ops_mod.AlterModelTable("Flight", "trips"), C),
    ("AlterModelTableComment", ops_mod.AlterModelTableComment("Flight", "flights"), E),
    ("AlterModelOptions", ops_mod.AlterModelOptions("Flight", {"ordering": ["number"]}), E),
    ("AlterModelManagers", ops_mod.AlterModelManagers("Flight", []), E),
    ("AlterUniqueTogether adds", ops_mod.AlterUniqueTogether("Flight", {("number",), ("code",)}), C),
    ("AlterUniqueTogether removes", ops_mod.AlterUniqueTogether("Flight", set()), E),
    ("AlterIndexTogether", ops_mod.AlterIndexTogether("Flight", {("number", "code")}), E),
    ("AlterOrderWithRespectTo removes", ops_mod.AlterOrderWithRespectTo("Flight", None), C),
    ("AlterOrderWithRespectTo adds", ops_mod.AlterOrderWithRespectTo("Flight", "number"), U),
    ("AddIndex", ops_mod.AddIndex("Flight", models.Index(fields=["code"], name="code_idx")), E),
    ("RemoveIndex", ops_mod.RemoveIndex("Flight", "flight_number_idx"), E),
    ("RenameIndex", ops_mod.RenameIndex("Flight", "flight_no_idx", old_name="flight_number_idx"), E),
    ("AddConstraint", ops_mod.AddConstraint("Flight", models.UniqueConstraint(
        fields=["code"], name="code_unique")), C),
    ("RemoveConstraint", ops_mod.RemoveConstraint("Flight", "number_set"), E),
    ("AlterConstraint", ops_mod.AlterConstraint("Flight", "number_set", models.CheckConstraint(
        condition=models.Q(number__gt=""), name="number_set", violation_error_message="no")), E),
    ("AddField nullable", ops_mod.AddField("Flight", "seat", models.CharField(
        max_length=4, null=True)), E),
    ("AddField db_default", ops_mod.AddField("Flight", "seat", models.CharField(
        max_length=4, db_default="")), E),
    ("AddField many-to-many", ops_mod.AddField("Flight", "crew", models.ManyToManyField(
        "a.Flight")), E),
    ("AddField NOT NULL, Python default", ops_mod.AddField("Flight", "seat", models.CharField(
        max_length=4, default="")), U),
    ("RemoveField", ops_mod.RemoveField("Flight", "gate"), C),
    ("AlterField to NOT NULL", ops_mod.AlterField("Flight", "gate", models.CharField(
        max_length=8)), C),
    ("AlterField to NOT NULL with db_default", ops_mod.AlterField("Flight", "gate",
                                                                   models.CharField(max_length=8, db_default="")), E),
    ("AlterField longer", ops_mod.AlterField("Flight", "number", models.CharField(max_length=32)), E),
    ("AlterField to NULL", ops_mod.AlterField("Flight", "number", models.CharField(
        max_length=16, null=True)), E),
    ("AlterField renames column", ops_mod.AlterField("Flight", "code", models.CharField(
        max_length=8, db_column="flight_code")), C),
    ("RenameField", ops_mod.RenameField("Flight", "gate", "door"), C),
    ("RunSQL", ops_mod.RunSQL("SELECT 1", reverse_sql="SELECT 1"), U),
    ("RunPython", ops_mod.RunPython(noop), U),
    ("SeparateDatabaseAndState state only", ops_mod.SeparateDatabaseAndState(
        state_operations=[ops_mod.RemoveField("Flight", "gate")]), E),
    ("SeparateDatabaseAndState drops", ops_mod.SeparateDatabaseAndState(
        database_operations=[ops_mod.AddIndex("Flight", models.Index(fields=["code"], name="c")),
                             ops_mod.RemoveField("Flight", "gate")]), C),
]


class Shout(ops_mod.RunSQL):
    """A project's own operation: a subclass of a Django one is still custom."""


@pytest.mark.parametrize("case,op,expected", CASES, ids=[c[0] for c in CASES])
def test_each_operation_is_classified(case, op, expected):
    facts = probe.operation_facts(op, state(), "a")
    verdict, reason = mig.classify(facts)
    assert verdict == expected, (facts, reason)
    assert reason


def test_every_django_operation_has_a_case():
    """The table and the cases cover Django's list exactly: a new Django operation fails
    here until it is classified."""
    names = set(operations_pkg.__all__)
    assert names == set(mig.TABLE)
    assert names == {c[1].__class__.__name__ for c in CASES}


def test_custom_operations_are_unknown():
    facts = probe.operation_facts(Shout("SELECT 1"), state(), "a")
    assert facts["builtin"] is False
    assert mig.classify(facts) == mig.CUSTOM


def test_reversible_is_djangos():
    assert probe.operation_facts(ops_mod.RunPython(noop), state(), "a")["reversible"] is False
    assert probe.operation_facts(ops_mod.RunSQL("SELECT 1"), state(), "a")["reversible"] is False
    assert probe.operation_facts(ops_mod.RemoveField("Flight", "gate"), state(),
                                 "a")["reversible"] is True


def _design_table() -> dict[str, str]:
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("### Classification of migration operations", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|\s*([\w ]+?)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_design_doc_table_matches_the_code():
    rows = _design_table()
    assert set(rows) == set(mig.TABLE)
    for name, (verdict, _) in mig.TABLE.items():
        assert rows[name] == ("depends" if verdict == "depends" else verdict), name


# --- the policy -----------------------------------------------------------------------


def migration(name, *kinds, post=False, depends=(), file=None):
    verdict = {"RemoveField": C, "AddField": E, "RunPython": U}
    return mig.Pending(name, file or f"{name.replace('.', '/migrations/')}.py",
                       [mig.Operation(k, f"{k} x", verdict[k], "why") for k in kinds],
                       post, list(depends), "class attribute" if post else "")


def test_unmarked_contract_is_refused_naming_file_operation_and_both_fixes():
    with pytest.raises(UsageError) as e:
        mig.check("airship", [migration("flights.0004_remove", "RemoveField")])
    text = str(e.value)
    assert "flights/migrations/0004_remove.py" in text and "RemoveField" in text
    assert "post_deploy = True" in text and "post_deploy_migrations" in text
    assert "expand release" in text and "force=true" in text
    assert e.value.exit_code == 2


def test_forced_contract_warns():
    w = mig.check("airship", [migration("flights.0004_remove", "RemoveField")], force=True)
    assert len(w) == 1 and w[0].startswith("force=true")


def test_marked_contract_passes_and_runs_after():
    ms = [migration("flights.0003_add", "AddField"),
          migration("flights.0004_remove", "RemoveField", post=True, depends=["flights.0003_add"])]
    assert mig.check("airship", ms) == []
    assert [m.when for m in ms] == [mig.BEFORE, mig.AFTER]
    assert mig.pre_targets(ms) == [("flights", "0003_add")]


def test_nothing_post_deploy_migrates_everything():
    assert mig.pre_targets([migration("a.0001_x", "AddField")]) is None


def test_pre_target_per_app_stops_at_the_first_post_deploy():
    ms = [migration("a.0002_x", "AddField"), migration("b.0005_y", "RemoveField", post=True),
          migration("a.0003_z", "AddField"), migration("b.0006_w", "AddField", post=True,
                                                       depends=["b.0005_y"])]
    assert mig.pre_targets(ms) == [("a", "0003_z")]


def test_unknown_warns_and_strict_refuses():
    ms = [migration("a.0002_data", "RunPython")]
    assert len(mig.check("s", ms)) == 1
    with pytest.raises(UsageError, match="migrations.strict"):
        mig.check("s", ms, strict=True)


def test_a_pre_migration_depending_on_a_post_deploy_one_is_refused():
    ms = [migration("a.0002_drop", "RemoveField", post=True),
          migration("a.0003_add", "AddField", depends=["a.0002_drop"])]
    with pytest.raises(UsageError, match="depends on post-deploy a.0002_drop"):
        mig.check("s", ms)


def test_services_yaml_marks_and_probe_output_parse():
    out = ('noise\n@@migrations_plan {"django": "5.2", "pending": [{"app": "flights", '
           '"name": "0004_remove_flight_gate", "file": "flights/migrations/0004_remove_flight_gate.py",'
           ' "post_deploy": false, "depends": [], "operations": [{"op": "RemoveField", '
           '"builtin": true, "describe": "Remove field gate from flight", "reversible": true}]}]}\n')
    data = mig.parse_probe(out)
    [m] = mig.pending(data, marked=["flights.0004_remove_flight_gate"])
    assert (m.verdict, m.post_deploy, m.marked_by) == (C, True, "services.yaml")
    [m] = mig.pending(data)
    assert (m.verdict, m.post_deploy, m.when) == (C, False, mig.BEFORE)
    again = mig.from_records([m.to_dict()])
    assert again[0].to_dict() == m.to_dict()
    with pytest.raises(ValueError):
        mig.parse_probe("nothing")


def test_contracted_lists_the_post_deploy_migrations_that_ran():
    recs = [dict(migration("a.1", "RemoveField", post=True).to_dict(), ran=True),
            dict(migration("a.2", "RemoveField", post=True).to_dict(), ran=False),
            dict(migration("a.0", "AddField").to_dict(), ran=True)]
    assert mig.contracted(recs) == ["a.1"]


def test_rollback_refuses_only_contracts_that_ran_and_cannot_be_reversed():
    drop = migration("a.0004_drop", "RemoveField", post=True)
    data = migration("a.0005_data", "RemoveField", "RunPython", post=True)
    data.operations[1].reversible = False
    expand = migration("a.0003_add", "AddField", "RunPython")
    expand.operations[1].reversible = False  # irreversible, but no contract
    recs = [dict(m.to_dict(), ran=True) for m in (drop, data, expand)]
    assert [m.name for m in mig.irreversible_contracts(recs)] == ["a.0005_data"]
    recs[1]["ran"] = False  # never ran: nothing to reverse
    assert mig.irreversible_contracts(recs) == []
