"""Bad command lines end in one `Error:` paragraph and exit 2, never a traceback.

These run the `deploytools` program in-process (its `run` is what the console script
calls); tests/system/test_bad_input.py does the same through a subprocess,
with broken services.yaml files and real hosts.
"""
import pytest
from invoke import Collection
from invoke.exceptions import ParseError

from deploytools import tasks
from deploytools.cli import DeployProgram, rewrite_classic

COLL = Collection.from_module(tasks)


def run_fab(argv, capsys, tmp_path, monkeypatch):
    # A services.yaml that is never reached: every case fails while parsing.
    monkeypatch.setenv("DEPLOYTOOLS_CONFIG", str(tmp_path / "services.yaml"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        DeployProgram().run(["fab", *argv])
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("value", ["maybe", "2", "ture"])
def test_classic_bool_value_that_is_neither_true_nor_false(value):
    with pytest.raises(ParseError, match=f"hard is true or false, not '{value}'"):
        rewrite_classic([f"restart:airship,hard={value}"], COLL)


@pytest.mark.parametrize("value", ["no", "false", "0", "off", "N"])
def test_classic_false_values_give_no_flag(value):
    assert rewrite_classic([f"restart:airship,hard={value}"], COLL) == ["restart", "airship"]


@pytest.mark.parametrize("argv, needle", [
    (["--lock-wait", "soon", "status:airship"], "'soon'"),  # a core flag of kind float
    (["history:airship,limit=many"], "'many'"),  # a task argument of kind int (classic)
    (["history", "airship", "--limit", "many"], "'many'"),  # the same, modern
    (["restart:airship,hard=maybe"], "hard is true or false"),
    (["nosuchtask:airship"], "No idea what 'nosuchtask:airship' is."),
    (["deploy"], "did not receive required positional arguments: 'service'"),
    (["status:airship,extra"], "has more values than status takes"),
    (["deploy:airship,refs=v2"], "deploy has no argument 'refs'"),  # not taken as a value
])
def test_bad_command_lines_are_usage_errors(argv, needle, capsys, tmp_path, monkeypatch):
    code, err = run_fab(argv, capsys, tmp_path, monkeypatch)
    assert code == 2, err
    assert err.startswith("Error: ") and needle in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert "!." not in err  # invoke's "No idea what ... is!" is not doubled up
    assert err.rstrip("\n").count("\n") == 0, err  # one paragraph, here one line
    assert "deploytools --list" in err  # says where to look
