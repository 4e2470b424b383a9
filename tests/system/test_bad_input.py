"""Issue 2, bar 5: bad input through the real `deploytools` program.

Every case runs `python -m deploytools` (what the `deploytools` script runs) as a
subprocess, the way an operator would, and checks the contract of
deploytools/errors.py:

- exit 2 for bad usage or a broken services.yaml (nothing is touched);
  exit 1 when a host cannot be reached or logged in to (ConnectionFailed is
  a DeployError: the command failed, and here nothing was changed either);
- stderr is one paragraph that starts with `Error:` and names the file:line
  (config), the file (a name given on the command line) or the host;
- never a traceback.

The config cases need no hosts (each writes its own broken services.yaml to
tmp_path and runs from there). The last cases need real sshd hosts and a
real repository: a ref that does not exist, a ref with shell metacharacters,
a host missing from known_hosts and a host whose key does not match.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
hosts:
  web-0: {address: 127.0.0.99, port: 2222}
roles:
  web: [web-0]
services:
  airship:
    kind: django
    repo: /nonexistent/airship.git
    role: web
    app: airship.wsgi:application
    port: 8000
"""


def fab(cwd: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    """Our fab, run from `cwd` (./services.yaml, unless `config` is given)."""
    env = dict(os.environ, DEPLOYTOOLS_CACHE=str(cwd / ".cache"), DEPLOYTOOLS_USER="tester")
    for var in ("DEPLOYTOOLS_CONFIG", "DEPLOYTOOLS_JSON"):
        env.pop(var, None)
    if config is not None:
        env["DEPLOYTOOLS_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "deploytools", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}:\n{err}"
    assert err.startswith("Error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert "\n\n" not in err.strip(), f"more than one paragraph:\n{err}"
    assert err.count("Error:") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    return err


# -- a broken services.yaml: exit 2, file:line ---------------------------------

CONFIG_CASES = {
    "yaml_syntax": (
        GOOD.replace("{address: 127.0.0.99, port: 2222}", "{address: 127.0.0.99, port: 2222"),
        3, ["invalid YAML"]),
    "tab_indent": (GOOD.replace("  web-0:", "\tweb-0:"), 2, ["invalid YAML", "'\\t'"]),
    "unknown_key": (GOOD + "    helth: {path: /healthz}\n", 12,
                    ["services.airship: unknown key 'helth'", "Did you mean 'health'?"]),
    "wrong_type": (GOOD.replace("port: 8000", "port: eighty"), 11,
                   ["services.airship.port", "expected an integer", "'eighty'"]),
    "quoted_number": (GOOD.replace("port: 8000", 'port: "8000"'), 11,
                      ["services.airship.port", "without quotes"]),
    "unknown_host_in_role": (GOOD.replace("[web-0]", "[web-0, web-7]"), 4,
                             ["roles.web", "unknown host 'web-7'", "web-0"]),
    "duplicate_key": (GOOD + "    port: 8001\n", 12,
                      ["duplicate key 'port'", "first on line 11"]),
    "metachar_service_name": (GOOD.replace("  airship:", "  'air;rm -rf /':"), 6,
                              ["invalid service name 'air;rm -rf /'"]),
    "missing_required": (GOOD.replace("    app: airship.wsgi:application\n", ""), 6,
                         ["services.airship: missing 'app'"]),
    "bad_kind": (GOOD.replace("kind: django", "kind: rails"), 7,
                 ["services.airship.kind", "rails", "django"]),
    "top_level_list": ("- web-0\n- web-1\n", 1, ["the top level must be a mapping"]),
    # Issue 14: hostile values are errors at load, before anything reaches a host.
    "nested_3000_levels": (GOOD + "x: " + "[" * 3000 + "]" * 3000 + "\n", 12,
                           ["invalid YAML", "nested more than 50 levels deep"]),
    "huge_connect_timeout": ("ssh: {connect_timeout: 100000000000000000000}\n" + GOOD, 1,
                             ["ssh.connect_timeout: expected at most 600 seconds"]),
    "root_with_space": (GOOD + "    root: /srv/my apps\n", 12,
                        ["services.airship.root: expected a path of letters", "'/srv/my apps'"]),
    "root_with_percent": (GOOD.replace("port: 2222}", "port: 2222, root: '/srv/%(x)s'}"), 2,
                          ["hosts.web-0.root: expected a path of letters"]),
    "tag_prefix_dash": (GOOD + "    tag_prefix: '-x'\n", 12,
                        ["services.airship.tag_prefix", "'-x'"]),
    "build_outputs_dot_deploy": (GOOD.replace("kind: django", "kind: command").replace(
        "    app: airship.wsgi:application\n", "    command: ./run\n    build: make\n"
        "    build_outputs: [./.deploy]\n"), 12, ["services.airship.build_outputs", ".deploy"]),
    "bad_rollout_share": (GOOD + "    rollout: [1, '150%']\n", 12,
                          ["services.airship.rollout", "150%"]),
    "env_bad_name": (GOOD + "    env: {'9LIVES': x}\n", 12, ["services.airship.env", "9LIVES"]),
    "env_multiline_value": (GOOD + "    env: {A: \"x\\ny\"}\n", 12,
                            ["services.airship.env.A", "single line"]),
    "role_and_hosts": (GOOD + "    hosts: [web-0]\n", 12, ["has both 'role' and 'hosts'"]),
    "bind_port_mismatch": (GOOD + "    bind: 0.0.0.0:9000\n", 12,
                           ["services.airship.bind", "must be the service's port 8000"]),
    "repo_bad_scheme": (GOOD.replace("repo: /nonexistent/airship.git",
                                     "repo: 'ftp://x/airship.git'"), 8,
                        ["services.airship.repo", "ftp://"]),
    "branch_with_dotdot": (GOOD + "    branch: 'a..b'\n", 12, ["services.airship.branch"]),
    "workers_zero": (GOOD + "    workers: 0\n", 12, ["services.airship.workers", ">= 1"]),
    "gate_rate_above_one": (GOOD + "    gate: {max_error_rate: 2}\n", 12,
                            ["services.airship.gate.max_error_rate"]),
    "build_on_django": (GOOD + "    build: make\n", 12,
                        ["services.airship.build", "only for kind command"]),
}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_broken_services_yaml(name, tmp_path):
    text, line, needles = CONFIG_CASES[name]
    (tmp_path / "services.yaml").write_text(text)
    proc = fab(tmp_path, "deploy:airship")
    assert_error(proc, 2, f"Error: services.yaml:{line}: ", *needles)
    assert proc.stdout == ""  # nothing was started


def test_empty_and_non_utf8_files(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("# nothing but a comment\n")
    assert_error(fab(tmp_path, "status:airship"), 2, "services.yaml: the file is empty")
    path.write_bytes(GOOD.encode().replace(b"airship.wsgi", b"airship\xff.wsgi"))
    assert_error(fab(tmp_path, "status:airship"), 2, "services.yaml: not UTF-8")


def test_missing_file(tmp_path):
    # The default ./services.yaml, from a directory that has none.
    assert_error(fab(tmp_path, "deploy:airship"), 2, "services.yaml: no such file",
                 str(tmp_path), "DEPLOYTOOLS_CONFIG")
    # A path given with --services, or in $DEPLOYTOOLS_CONFIG.
    gone = tmp_path / "gone" / "services.yaml"
    assert_error(fab(tmp_path, "--services", str(gone), "deploy:airship"), 2,
                 f"Error: {gone}: no such file")
    assert_error(fab(tmp_path, "deploy:airship", config=gone), 2, f"Error: {gone}: no such file")
    # A directory where the file should be.
    assert_error(fab(tmp_path, "deploy:airship", config=tmp_path), 2,
                 f"Error: {tmp_path}: cannot read it")


def test_error_names_the_file_given_with_services(tmp_path):
    path = tmp_path / "conf" / "fleet.yaml"
    path.parent.mkdir()
    path.write_text(GOOD.replace("port: 8000", "port: 0"))
    assert_error(fab(tmp_path, "status:airship", "--services", str(path)), 2,
                 f"Error: {path}:11: services.airship.port")


# -- a bad command line: exit 2 ------------------------------------------------

@pytest.fixture
def good(tmp_path) -> Path:
    (tmp_path / "services.yaml").write_text(GOOD)
    return tmp_path


def test_unknown_service(good):
    assert_error(fab(good, "deploy:airsip"), 2, "unknown service 'airsip'",
                 "services.yaml defines: airship", "Did you mean 'airship'?")
    assert_error(fab(good, "-H", "web-0", "status", "skiff"), 2, "unknown service 'skiff'")


@pytest.mark.parametrize("argv", [
    ["deploy:air;touch {sentinel}"],  # classic: one shell word, as in deploy:'air;...'
    ["deploy", "air$(touch {sentinel})"],  # modern
    ["rollback:airship;touch {sentinel}"],
])
def test_service_name_with_shell_metacharacters(good, argv):
    sentinel = good / "pwned"
    proc = fab(good, *[a.format(sentinel=sentinel) for a in argv])
    assert_error(proc, 2, "invalid service name", "lowercase letters")
    assert not sentinel.exists()


@pytest.mark.parametrize("argv", [
    ["deploy:airship,ref={payload}"],
    ["rollback:airship,to={payload}"],
    ["plan:airship,ref={payload}"],
    ["migrate:airship,to={payload}"],
    ["monitor:airship,lines={payload}"],
    ["--services", "{payload}", "status:airship"],
])
def test_injection_payloads_in_arguments_run_nothing(good, argv):
    """Every argument reaches git, a script or a file as data: a payload that would run a
    command in a shell ends in a clean error, and the command never ran."""
    sentinel = good / "MARK"
    payload = f"x'\";$(touch {sentinel})`touch {sentinel}`"
    proc = fab(good, *[a.format(payload=payload) for a in argv])
    assert proc.returncode in (1, 2), proc.stderr
    assert proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert not sentinel.exists(), "a payload ran"


def test_metacharacters_in_a_host_selection(good):
    sentinel = good / "pwned"
    proc = fab(good, f"host:web-0$(touch {sentinel})", "status:airship")
    assert_error(proc, 2, "unknown host or role", "hosts: web-0; roles: web")
    assert not sentinel.exists()


def test_unknown_host_on_the_command_line(good):
    assert_error(fab(good, "host:web-9", "status:airship"), 2,
                 "unknown host or role 'web-9'", "Did you mean 'web-0'?")
    assert_error(fab(good, "-H", "db", "status", "airship"), 2, "unknown host or role 'db'")


@pytest.mark.parametrize("argv, needles", [
    (["nosuchtask:airship"], ["No idea what 'nosuchtask:airship' is", "deploytools --list"]),
    (["deploy"], ["'deploy' did not receive required positional arguments: 'service'"]),
    (["rollback:"], ["'rollback' did not receive required positional arguments: 'service'"]),
    (["deploy:airship,v2,true,extra"], ["has more values than deploy takes"]),
    (["deploy:airship,refs=v2"], ["deploy has no argument 'refs'", "ref, force"]),
    (["restart:airship,hard=maybe"], ["hard is true or false, not 'maybe'"]),
    (["--lock-wait", "soon", "deploy:airship"], ["wrong type", "'soon'"]),
    (["deploy", "airship", "--rev", "v2"], ["No idea what '--rev' is"]),
    (["monitor:airship,lines=abc"], ["lines=abc", "number of lines"]),
    (["deploy:airship,ref="], ["ref= is empty"]),
    (["rollback:airship,to="], ["to= is empty"]),
    (["unlock:airship,force=maybe"], ["force is true or false, not 'maybe'"]),
    (["history:airship,limit=many"], ["wrong type", "'many'"]),
])
def test_bad_task_usage(good, argv, needles):
    assert_error(fab(good, *argv), 2, *needles)


def test_the_deploytools_script_itself(good):
    """The installed console script (not only `python -m deploytools`) behaves the same."""
    script = Path(sys.executable).with_name("deploytools")
    if not script.exists():
        pytest.fail(f"{script} is missing: `pip install -e .` installs it next to python")
    proc = subprocess.run([str(script), "deploy:air;rm -rf /"], cwd=good, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items()
                                                       if k != "DEPLOYTOOLS_CONFIG"})
    assert_error(proc, 2, "invalid service name 'air;rm -rf /'")


# -- a host that cannot be reached: exit 1, names the host ----------------------

def test_unreachable_host(good):
    # Nothing listens on 127.0.0.99:2222: connection refused, at once.
    proc = fab(good, "status:airship")
    assert_error(proc, 1, "web-0", "127.0.0.99:2222", "could not connect",
                 "address and port in services.yaml")


def test_unreachable_host_during_deploy(good, samples):
    text = GOOD.replace("/nonexistent/airship.git", str(samples["airship"].origin))
    (good / "services.yaml").write_text(text)
    proc = fab(good, "deploy:airship,ref=v1")
    assert_error(proc, 1, "web-0", "127.0.0.99:2222", "could not connect")


# -- on the real fleet ---------------------------------------------------------

def _snapshot(env) -> dict:
    """What a deploy could change: each host's airship dir, and origin's refs."""
    state = {}
    for h in env.fleet.hosts:
        d = env.srv(h.name)
        rel = d / "releases"
        hist = d / "history.jsonl"
        state[h.name] = {
            "exists": d.exists(),
            "current": env.current(h.name),
            "releases": sorted(p.name for p in rel.iterdir()) if rel.exists() else [],
            "history": hist.read_text() if hist.exists() else "",
            "lock": (d / ".lock").exists(),
            # What it serves, less the worker that answered (two workers take turns).
            "served": {k: v for k, v in (env.served(h.name) or {}).items() if k != "pid"},
        }
    state["origin"] = subprocess.run(
        ["git", "-C", str(env.samples["airship"].origin), "for-each-ref"],
        capture_output=True, text=True, check=True).stdout
    return state


@pytest.mark.system
def test_bad_ref_changes_nothing(deployenv, tmp_path):
    before = _snapshot(deployenv)
    proc = deployenv.fab("deploy:airship,ref=no-such-branch", check=False)
    assert_error(proc, 2, "ref 'no-such-branch' not found", "airship",
                 str(deployenv.samples["airship"].origin), "master")
    sentinel = tmp_path / "pwned"
    proc = deployenv.fab(f"deploy:airship,ref=v1;touch {sentinel}", check=False)
    assert_error(proc, 2, f"'v1;touch {sentinel}' is not a valid git ref name")
    proc = deployenv.fab("-H", "web-0", "deploy", "airship", "--ref", f"$(touch {sentinel})",
                         check=False)
    assert_error(proc, 2, "is not a valid git ref name")
    assert not sentinel.exists()
    assert _snapshot(deployenv) == before


def _one_host_yaml(fleet, known_hosts: Path) -> str:
    web0 = fleet.hosts_yaml()["web-0"]
    return yaml.safe_dump({
        "ssh": dict(fleet.ssh_config_yaml(), known_hosts=str(known_hosts)),
        "hosts": {"web-0": web0},
        "services": {"airship": {"kind": "django", "repo": "/nonexistent/airship.git",
                                 "hosts": ["web-0"], "app": "airship.wsgi:application",
                                 "port": 8000}},
    })


@pytest.mark.system
def test_host_not_in_known_hosts(fleet, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    (tmp_path / "services.yaml").write_text(_one_host_yaml(fleet, known))
    proc = fab(tmp_path, "status:airship")
    web0 = fleet.host("web-0")
    assert_error(proc, 1, "web-0", f"{web0.address}:{web0.ssh_port}", f"is not in {known}",
                 "strict host key checking",
                 f"ssh-keyscan -p {web0.ssh_port} {web0.address} >> {known}")
    assert known.read_text() == ""  # never added behind the operator's back


@pytest.mark.system
def test_host_key_mismatch(fleet, tmp_path):
    web0, web1 = fleet.host("web-0"), fleet.host("web-1")
    lines = {line.split()[0]: line.split()[1:] for line in
             Path(fleet.ssh_config_yaml()["known_hosts"]).read_text().splitlines()}
    other_key = lines[f"[{web1.address}]:{web1.ssh_port}"]  # web-1's key, said to be web-0's
    known = tmp_path / "known_hosts"
    known.write_text(f"[{web0.address}]:{web0.ssh_port} {' '.join(other_key)}\n")
    (tmp_path / "services.yaml").write_text(_one_host_yaml(fleet, known))
    assert_error(fab(tmp_path, "status:airship"), 1, "web-0", "does not match", str(known))
