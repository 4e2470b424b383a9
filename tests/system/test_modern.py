"""Issue 16 on the real fleet: a project as it is written today deploys.

The sample ketch (examples/ketch) is a Flask app factory with its dependencies in
pyproject.toml and no requirements file. It is deployed with `app: ketch:create_app()`
and `health: {path: /hello}`: a cold deploy, `exec ... init-db` once, a code-only
deploy (the venv is reused and the new code served), a dependency change (a new
venv) and a rollback (back onto the old venv). Times are printed (run with -s).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time

import pytest
import requests
import yaml

pytestmark = pytest.mark.system

SVC = "ketch"
PORT = 8030
HOSTS = ["web-0", "web-1"]
DATABASE = f"/srv/{SVC}/shared/ketch.sqlite"  # each host's own /srv
UV_SVC = "ketch-uv"
UV_PORT = 8031
UV_HOSTS = ["web-2", "web-3"]
V2_VENVS: dict[str, str] = {}  # the venv of each host before the dependency change


@pytest.fixture(scope="module")
def env(deployenv, tmp_path_factory):
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(deployenv.samples[SVC].origin), "hosts": HOSTS,
        "app": "ketch:create_app()", "port": PORT, "graceful_timeout": 5,
        "health": {"path": "/hello"}, "env": {"KETCH_DATABASE": DATABASE},
        "installer": "pip"}}  # the fallback installer; uv (the default) is ketch-uv below
    # The same project with installer: uv, on two other hosts (both start cold).
    data["services"][UV_SVC] = dict(data["services"][SVC], hosts=UV_HOSTS, port=UV_PORT,
                                    installer="uv", production_branch="production-uv",
                                    tag_prefix="production-uv-")
    config = tmp_path_factory.mktemp("modern") / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return dataclasses.replace(deployenv, config=config)


def get(env, host, path):
    return requests.get(env.url(host, path, PORT), timeout=5)


def served(env, host):
    return env.served(host, PORT) or {}


def last(env, host, action=None, service=SVC):
    recs = [r for r in env.history(host, service) if action in (None, r.get("action"))]
    return recs[-1] if recs else None


def sha(env, label):
    return env.samples[SVC].resolve(label)


def venv_of(env, host):
    """The venv key the live release runs on."""
    link = env.srv(host, SVC) / "current" / ".deploy" / "venv"
    return os.readlink(link).rsplit("/", 1)[1]  # absolute on the host, not here


def timed(env, *args, check=True):
    t0 = time.monotonic()
    proc = env.fab(*args, check=check)
    took = time.monotonic() - t0
    staging = [float(x) for x in re.findall(r": staged \(.*; ([0-9.]+)s\)", proc.stdout)]
    print(f"\n[timing] deploytools {' '.join(args)}: {took:.1f}s (staging per host: "
          f"{', '.join(f'{x:.1f}s' for x in staging)})")
    return proc, took


def assert_serves_its_release(env, host, label):
    data = served(env, host)
    assert data.get("revision") == sha(env, label), data
    # The code that answers is the release's, not the copy installed in the venv.
    # (gunicorn's --chdir <dir>/current is first on sys.path).
    assert data["code"] == f"/srv/{SVC}/current/ketch/__init__.py", data["code"]
    assert get(env, host, "/hello").text == "Hello, World!"


def test_cold_deploy_of_a_pyproject_app_factory(env):
    timed(env, f"deploy:{SVC},ref=v1")
    for h in HOSTS:
        assert_serves_its_release(env, h, "v1")
        rec = last(env, h, "deploy")
        assert rec["outcome"] == "success" and "venv_built" in rec["steps"], rec
        # The project was installed into the venv (non-editable), with its dependencies.
        site = list((env.srv(h, SVC) / "venvs" / venv_of(env, h)).glob("lib/python3*/site-packages"))
        assert len(site) == 1
        assert (site[0] / "flask").is_dir() and (site[0] / "ketch" / "__init__.py").is_file()
        assert not list(site[0].glob("__editable__*"))
        assert get(env, h, "/posts").status_code == 500  # no database yet


def test_exec_once_initialises_the_database_on_one_host(env):
    proc = env.fab("host:web-0,web-1", f"exec:{SVC},flask --app ketch init-db,once=true")
    lines = proc.stdout.splitlines()
    assert any(line.startswith("web-0: Initialized the database.") for line in lines), lines
    assert not [line for line in lines if line.startswith("web-1:")]
    assert get(env, "web-0", "/posts").json() == {"posts": 0}
    assert get(env, "web-1", "/posts").status_code == 500  # once: web-1 was not touched
    rec = last(env, "web-0", "exec")
    assert (rec["exit"], rec["outcome"], rec["command"]) == (0, "success", "flask --app ketch init-db")
    assert "Initialized the database." in rec["output"] and rec["release"] == env.current("web-0", SVC)
    assert last(env, "web-1", "exec") is None


def test_exec_reports_each_host_and_fails_naming_the_failed_ones(env):
    # The modern syntax, on both hosts; the venv's bin is first on PATH, the env file is
    # sourced, and the command runs in the live release.
    command = ('echo "$(hostname) $(command -v flask) $KETCH_DATABASE $(basename "$PWD")"; '
               'test "$(hostname)" = web-0')
    proc = env.fab("-H", "web-0,web-1", "exec", SVC, command, check=False)
    assert proc.returncode == 1, proc.stderr
    for h in HOSTS:
        release = env.current(h, SVC)
        assert f"{h}: {h} /srv/{SVC}/releases/{release}/.deploy/venv/bin/flask {DATABASE} " \
               f"{release}" in proc.stdout.splitlines(), proc.stdout
    err = proc.stderr.strip()
    assert err.startswith("Error: ") and err.count("Error:") == 1 and "Traceback" not in err
    assert "failed on 1 of 2 hosts: web-1 (exit 1)" in err and "succeeded on web-0" in err
    assert last(env, "web-1", "exec")["outcome"] == "failed"
    assert last(env, "web-1", "exec")["exit"] == 1
    assert last(env, "web-0", "exec")["exit"] == 0


def test_code_only_deploy_reuses_the_venv_and_serves_the_new_code(env):
    before = {h: venv_of(env, h) for h in HOSTS}
    timed(env, f"deploy:{SVC},ref=v2")
    for h in HOSTS:
        assert_serves_its_release(env, h, "v2")
        assert served(env, h)["version"] == "2" and "python" in served(env, h)
        rec = last(env, h, "deploy")
        assert "venv_reused" in rec["steps"] and "activate_reload" in rec["steps"], rec
        assert venv_of(env, h) == before[h]


def test_a_dependency_change_builds_a_new_venv(env):
    before = {h: venv_of(env, h) for h in HOSTS}
    timed(env, f"deploy:{SVC},ref=v3")
    for h in HOSTS:
        assert_serves_its_release(env, h, "v3")
        rec = last(env, h, "deploy")
        assert "venv_built" in rec["steps"] and "activate_restart" in rec["steps"], rec
        assert venv_of(env, h) != before[h]
    proc = env.fab(f"exec:{SVC},python -c 'import six; print(six.__name__)',once=true")
    assert "web-0: six" in proc.stdout.splitlines()
    V2_VENVS.update(before)


def test_rollback_goes_back_onto_the_old_venv(env):
    timed(env, f"rollback:{SVC}")
    for h in HOSTS:
        assert_serves_its_release(env, h, "v2")
        assert venv_of(env, h) == V2_VENVS[h]
        assert last(env, h)["action"] == "rollback"
    assert get(env, "web-0", "/posts").json() == {"posts": 0}  # shared/ survived it all


def test_installer_uv_cold_code_only_and_new_requirement(env):
    for label, venv_step in (("v1", "venv_built"), ("v2", "venv_reused"), ("v3", "venv_built")):
        timed(env, f"deploy:{UV_SVC},ref={label}")
        for h in UV_HOSTS:
            data = env.served(h, UV_PORT) or {}
            assert data.get("revision") == sha(env, label), data
            assert data["code"] == f"/srv/{UV_SVC}/current/ketch/__init__.py"
            assert venv_step in last(env, h, "deploy", UV_SVC)["steps"]
    for h in UV_HOSTS:
        srv = env.srv(h, UV_SVC)
        assert (srv / "tools" / "bin" / "uv").is_file()  # next to supervisor
        # (the link is absolute on the host: follow it inside the host's /srv)
        venv = srv / "venvs" / os.readlink(srv / "current" / ".deploy" / "venv").rsplit("/", 1)[1]
        assert not (venv / "bin" / "pip").exists()  # built by uv, not pip
        site = list(venv.glob("lib/python3*/site-packages"))[0]
        assert (site / "six.py").is_file() and (site / "flask").is_dir()
