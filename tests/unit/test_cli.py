"""The classic Fabric 1 syntax is rewritten to invoke's, using the tasks' signatures."""
import subprocess
import sys

import pytest
from invoke import Program
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


def test_fabric_core_flags_are_fabrics_own():
    """DeployProgram declares Fab's core flags itself (importing fabric.main loads
    paramiko): they must stay those of the installed fabric."""
    from fabric.main import Fab
    from invoke import Argument

    from deploytools.cli import FABRIC_CORE_ARGS

    def shape(args):
        return sorted((a.names, a.kind, a.help) for a in args)
    invoke_own = {a.names for a in Program().core_args()}
    fabs = [a for a in Fab().core_args() if a.names not in invoke_own]
    assert shape(Argument(**spec) for spec in FABRIC_CORE_ARGS) == shape(fabs)


def test_listing_and_parsing_load_no_ssh_git_http_or_templates(tmp_path):
    """`deploytools --list` and a rejected command line stay cheap: no paramiko,
    cryptography, fabric's connection, git, requests, Jinja2, nor our library."""
    heavy = ["paramiko", "cryptography", "fabric.connection", "git", "requests", "jinja2",
             "deploytools.operations", "deploytools.inventory", "deploytools.session"]
    probe = ("import sys\nfrom deploytools.cli import DeployProgram\n"
             "try:\n    DeployProgram().run(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)\n")
    for argv in (["--list"], ["--help", "deploy"], ["deploy:airship,colour=red"]):
        out = subprocess.run([sys.executable, "-c", probe, "deploytools", *argv], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        assert out.stderr.strip().splitlines()[-1] == "[]", (argv, out.stderr)


def test_running_a_task_gets_fabrics_config(tmp_path, monkeypatch):
    """Before tasks run the program's config becomes a fabric Config, with -i and -t
    applied as fabric's own `fab` does."""
    import fabric

    from deploytools.cli import DeployProgram
    monkeypatch.chdir(tmp_path)
    program = DeployProgram()
    program.execute = lambda: None
    program.run(["deploytools", "-i", "/k/id", "-t", "7", "host", "web-0"])
    assert isinstance(program.config, fabric.Config)
    assert program.config.connect_kwargs == {"key_filename": ["/k/id"], "timeout": 7}
    assert program.config.tasks.collection_name == "fabfile" and program.config.port == 22


def run_deploytools(tmp_path, *argv, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "deploytools", *argv], cwd=tmp_path,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def test_a_reader_that_goes_away_is_no_error(tmp_path):
    """`deploytools history:x | head`: the output's reader is gone before (or while) it
    is written. What is left is dropped, and the command ends as it would have (here
    0), not as an internal error; a deploy goes on to its end (test_lock_staging.py)."""
    proc = subprocess.Popen([sys.executable, "-m", "deploytools", "--list"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before it starts: every write meets a closed pipe
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""


def test_the_exit_runs_atexit_functions_and_waits_for_a_fabfiles_threads(tmp_path):
    """The CLI exits without Python's teardown (os._exit), but after the atexit functions
    (a fabfile's included) and, while a fabfile's non-daemon thread runs, as Python does:
    it waits for that thread."""
    (tmp_path / "fabfile.py").write_text(
        "import atexit, pathlib, threading, time\n"
        "from invoke import task\n\n"
        "@task\n"
        "def note(c, wait=False):\n"
        "    here = pathlib.Path(__file__).parent\n"
        "    atexit.register(lambda: (here / 'atexit').write_text('ran'))\n"
        "    if wait:\n"
        "        def later():\n"
        "            time.sleep(0.5)\n"
        "            (here / 'thread').write_text('done')\n"
        "        threading.Thread(target=later).start()\n"
        "    print('noted', end='')  # no newline: flushed all the same\n")
    r = run_deploytools(tmp_path, "note")
    assert (r.returncode, r.stdout) == (0, "noted"), r.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    (tmp_path / "atexit").unlink()
    r = run_deploytools(tmp_path, "note", "--wait")
    assert (r.returncode, r.stdout) == (0, "noted"), r.stderr
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
    # An error's exit status is kept.
    r = run_deploytools(tmp_path, "nosuchtask")
    assert r.returncode == 2 and r.stderr.startswith("Error: "), r.stderr
