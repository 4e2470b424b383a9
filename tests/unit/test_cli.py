"""The classic Fabric 1 syntax is rewritten to invoke's, using the tasks' signatures."""
import pytest
from invoke import Collection
from invoke.exceptions import ParseError

from deploytools import tasks
from deploytools.cli import extract_globals, rewrite_classic, split_classic_args

COLL = Collection.from_module(tasks)


@pytest.mark.parametrize("tokens, expected", [
    (["deploy:airship"], ["deploy", "airship"]),
    (["deploy:airship,ref=v2"], ["deploy", "airship", "--ref=v2"]),
    (["deploy:airship,v2"], ["deploy", "airship", "--ref=v2"]),
    (["deploy:airship,force=true"], ["deploy", "airship", "--force"]),
    (["deploy:airship,force=no"], ["deploy", "airship"]),
    (["host:web-0;web-1", "restart:airship"], ["host", "web-0;web-1", "restart", "airship"]),
    (["host:web-0,web-1"], ["host", "web-0,web-1"]),
    (["rollback:airship,to=production-2026-11-26"],
     ["rollback", "airship", "--to=production-2026-11-26"]),
    (["deploy", "airship", "--ref", "v2"], ["deploy", "airship", "--ref", "v2"]),
    (["restart:airship,hard=1"], ["restart", "airship", "--hard"]),
    (["nosuchtask:x"], ["nosuchtask:x"]),  # left for invoke to reject
])
def test_rewrite_classic(tokens, expected):
    assert rewrite_classic(tokens, COLL) == expected


def test_underscore_names_resolve_to_dashed_tasks():
    coll = Collection.from_module(tasks)
    if "smart-deploy" not in coll.task_names:
        pytest.fail("smart-deploy task missing")
    assert rewrite_classic(["smart_deploy:airship"], coll) == ["smart-deploy", "airship"]
    assert rewrite_classic(["smart_deploy", "airship"], coll) == ["smart-deploy", "airship"]


def test_too_many_values_is_a_parse_error():
    with pytest.raises(ParseError):
        rewrite_classic(["unlock:a,b,c"], COLL)


def test_split_classic_args_escapes_commas():
    assert split_classic_args(r"a,b\,c,k=v") == ["a", "b,c", "k=v"]


@pytest.mark.parametrize("argv, flags, hosts, rest", [
    (["-H", "web-0", "deploy", "airship"], [], ["host", "web-0"], ["deploy", "airship"]),
    (["--hosts=web-0,web-1", "status", "x"], [], ["host", "web-0,web-1"], ["status", "x"]),
    (["smart_deploy:airship", "--json"], ["--json"], [], ["smart_deploy:airship"]),
    (["deploy:a", "--lock-wait", "30"], ["--lock-wait=30"], [], ["deploy:a"]),
    (["--debug", "deploy:a"], ["--debug"], [], ["deploy:a"]),
])
def test_extract_globals(argv, flags, hosts, rest):
    assert extract_globals(argv) == (flags, hosts, rest)
