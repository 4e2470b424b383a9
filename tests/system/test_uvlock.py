"""A project locked with uv.lock, on the real fleet (one host).

The ketch sample (examples/ketch) gets a uv.lock here, locked by uv against the test
wheelhouse (so no network): L1 the locked project, L2 a code-only change, L3 a new
dependency (`six` in pyproject.toml, locked again). A cold deploy, a code-only deploy
(the venv reused), the dependency change (a new venv) and a rollback (the old venv).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import requests
import yaml

import build_repos

pytestmark = pytest.mark.system

SVC = "ketch-lock"
PORT = 8034
HOST = "web-3"
VENVS: dict[str, str] = {}


def uv_lock(uv, work, wheelhouse):
    subprocess.run([uv, "lock", "--no-index", "--find-links", str(wheelhouse)], cwd=work,
                   check=True, capture_output=True, text=True)
    return (work / "uv.lock").read_text()


@pytest.fixture(scope="module")
def env(deployenv, wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uvlock")
    tools = tmp / "uv-venv"
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    subprocess.run([tools / "bin" / "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-index", "--find-links", str(wheelhouse), "uv"], check=True)
    uv = tools / "bin" / "uv"
    repo = build_repos.build(tmp / "samples", names=["ketch"])["ketch"]
    work = repo.work
    # uv locks for every Python the project allows; the wheelhouse has this one's wheels.
    repo.commit("ketch: Python 3.11 or later", {"pyproject.toml": build_repos.Sub(
        ('requires-python = ">=3.9"', 'requires-python = ">=3.11"'))}, base="v1")
    repo.commit("ketch: locked with uv", {"uv.lock": uv_lock(uv, work, wheelhouse)}, label="L1")
    repo.commit("ketch: a code-only change", {"ketch/version.py": 'VERSION = "L2"\n'}, label="L2")
    repo.commit("ketch: depend on six", {"pyproject.toml": build_repos.Sub(
        ('    "Flask>=2.3",\n', '    "Flask>=2.3",\n    "six>=1.16",\n'))})
    repo.commit("ketch: lock six", {"uv.lock": uv_lock(uv, work, wheelhouse)}, label="L3")
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(repo.origin), "hosts": [HOST],
        "app": "ketch:create_app()", "port": PORT, "graceful_timeout": 5,
        "health": {"path": "/hello"}}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return dataclasses.replace(deployenv, config=config, samples={SVC: repo})


def venv_of(env):
    return (env.srv(HOST, SVC) / "current" / ".deploy" / "venv").readlink().name


def deploy(env, label, venv_step):
    env.fab(f"deploy:{SVC},ref={env.samples[SVC].commits[label]}")
    data = requests.get(env.url(HOST, "/", PORT), timeout=5).json()
    assert data["revision"] == env.samples[SVC].commits[label]
    assert data["code"] == f"/srv/{SVC}/current/ketch/__init__.py"  # the release's code
    rec = env.history(HOST, SVC)[-1]
    assert venv_step in rec["steps"], rec
    VENVS[label] = venv_of(env)
    return data


def test_cold_deploy_syncs_the_lock(env):
    deploy(env, "L1", "venv_built")
    site = list((env.srv(HOST, SVC) / "venvs" / VENVS["L1"]).glob("lib/python3*/site-packages"))[0]
    assert (site / "flask").is_dir() and not (site / "six.py").exists()
    assert not list(site.glob("ketch*"))  # --no-install-project: the code is the release's


def test_code_only_reuses_the_venv(env):
    assert deploy(env, "L2", "venv_reused")["version"] == "L2"
    assert VENVS["L2"] == VENVS["L1"]


def test_a_locked_dependency_change_builds_a_new_venv_and_rollback_returns(env):
    deploy(env, "L3", "venv_built")
    assert VENVS["L3"] != VENVS["L2"]
    site = list((env.srv(HOST, SVC) / "venvs" / VENVS["L3"]).glob("lib/python3*/site-packages"))[0]
    assert (site / "six.py").is_file()
    env.fab(f"rollback:{SVC}")
    data = requests.get(env.url(HOST, "/", PORT), timeout=5).json()
    assert data["revision"] == env.samples[SVC].commits["L2"] and venv_of(env) == VENVS["L2"]
