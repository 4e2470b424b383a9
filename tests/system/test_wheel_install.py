"""Issue 15, the bar: a wheel built from the checkout (`python -m build`) and installed
into a fresh virtualenv, not editable, deploys a sample from an ops directory that
has its own fabfile with its own task; `deploytools --list` there shows both, the
user's task runs, a template of the ops repo overrides ours, fabric's own `fab` is
untouched, and `pip uninstall deploytools` leaves a working fabric.

Offline: the build backend and every dependency come from the wheelhouse.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import requests
import yaml

import build_repos
import fleet as fleet_mod

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
PORT = 8021  # no other test uses it


def run(argv, *, cwd: Path, env: dict | None = None, timeout: float = 600):
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc


def ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (f"{' '.join(proc.args)} exited {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def installed(wheelhouse, tmp_path_factory):
    """(venv, dist): deploytools built into a wheel and an sdist, the wheel installed
    into a fresh virtualenv from the wheelhouse only."""
    tmp = tmp_path_factory.mktemp("install")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wheels = fleet_mod.build_wheelhouse(wheelhouse, deps)  # fabric & co, once
    offline = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
    dist = tmp / "dist"
    ok(run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=tmp, env=offline))
    venv = tmp / "venv"
    ok(run([sys.executable, "-m", "venv", venv], cwd=tmp))
    [wheel] = dist.glob("deploytools-*.whl")
    ok(run([venv / "bin/pip", "install", "-q", "--no-index", "--find-links", wheels, wheel],
           cwd=tmp, env=offline))
    return venv, dist


@pytest.fixture(scope="module")
def opsdir(wheelhouse, tmp_path_factory):
    """An ops repo: its own fabfile (no word of deploytools), a services.yaml with one
    `local: true` host, and its own env.j2 template."""
    ops = tmp_path_factory.mktemp("ops")
    # Its own origin: the shared sample's `production` is moved by other tests.
    skiff = build_repos.build(tmp_path_factory.mktemp("ops-samples"), names=["skiff"])["skiff"]
    (ops / "fabfile.py").write_text(textwrap.dedent('''\
        from invoke import task


        @task
        def hello(c):
            """Greet from the ops repo's own fabfile."""
            with open("hello.txt", "w") as f:
                f.write("hello from ops\\n")
        '''))
    (ops / "templates").mkdir()
    (ops / "templates/env.j2").write_text(
        "# env of {{ service.name }}, from the ops repo's templates\n"
        "{% for key, value in env.items() -%}\n{{ key }}={{ value | shquote }}\n{% endfor -%}\n")
    address = f"127.0.0.{fleet_mod.first_octet() + 3}"  # the fleet's own loopback addresses
    data = {
        "hosts": {"box": {"local": True, "address": address, "root": "hosts/box"}},
        "defaults": {"pip_args": f"--no-index --find-links {wheelhouse}",
                     "health": {"timeout": 20, "interval": 0.2},
                     "gate": {"warmup": 0, "bake": 1, "on_inconclusive": "proceed"}},
        "services": {"skiff": {"kind": "flask", "repo": str(skiff.origin),
                               "hosts": ["box"], "app": "skiff.app:app", "port": PORT,
                               "graceful_timeout": 5, "templates": "templates"}},
    }
    (ops / "services.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    yield ops, address
    ctl = ops / "hosts/box/skiff/bin/ctl"
    if ctl.exists():
        subprocess.run([str(ctl), "stop"], capture_output=True, timeout=120)


def env_for(ops: Path, venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DEPLOYTOOLS_CONFIG", "DEPLOYTOOLS_JSON", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(DEPLOYTOOLS_CACHE=str(ops / "cache"), DEPLOYTOOLS_USER="tester",
               DEPLOYTOOLS_SYSTEM_ROOT="none",  # as root, setup would link into /etc
               PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


def test_wheel_and_sdist_carry_the_templates_and_no_fabfile(installed):
    venv, dist = installed
    [sdist] = dist.glob("deploytools-*.tar.gz")
    import tarfile
    import zipfile
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/templates/supervisord.conf.j2") for n in t.getnames())
    [wheel] = dist.glob("deploytools-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "deploytools/templates/supervisord.conf.j2" in names
    assert "deploytools/tasks.py" in names
    assert not [n for n in names if n.startswith(("fabfile", "templates/"))], names
    # Installed: the package is the venv's, and there is no top-level `fabfile`.
    probe = ok(run([venv / "bin/python", "-c",
                    "import importlib.util, deploytools.render as r; "
                    "print(r.TEMPLATES); print(importlib.util.find_spec('fabfile'))"],
                   cwd=venv))
    templates, fabfile = probe.stdout.split()
    assert templates.startswith(str(venv)) and fabfile == "None", probe.stdout


def test_deploy_from_an_ops_repo_with_its_own_fabfile(installed, opsdir):
    venv, _ = installed
    ops, address = opsdir
    env = env_for(ops, venv)
    deploytools = venv / "bin/deploytools"

    listing = ok(run([deploytools, "--list"], cwd=ops, env=env)).stdout
    for name in ("hello", "deploy", "smart-deploy", "setup", "status", "rollback"):
        assert f"  {name} " in listing, listing

    ok(run([deploytools, "hello"], cwd=ops, env=env))
    assert (ops / "hello.txt").read_text() == "hello from ops\n"

    ok(run([deploytools, "setup:skiff", "deploy:skiff,ref=v1"], cwd=ops, env=env))
    body = requests.get(f"http://{address}:{PORT}/", timeout=5).json()
    assert (body["service"], body["version"]) == ("skiff", "1")
    live_env = (ops / "hosts/box/skiff/current/.deploy/env").read_text()
    assert live_env.startswith("# env of skiff, from the ops repo's templates\n"), live_env
    # Our other templates came from the wheel.
    assert "supervisord" in (ops / "hosts/box/skiff/etc/supervisord.conf").read_text()

    # The classic syntax and our flags, with the user's task on the same line.
    out = ok(run([deploytools, "status:skiff", "hello", "--json"], cwd=ops, env=env)).stdout
    assert '"event": "status"' in out and '"host": "box"' in out, out


def test_fabric_fab_is_untouched_and_survives_uninstall(installed, opsdir):
    venv, _ = installed
    ops, _ = opsdir
    env = env_for(ops, venv)
    fab = venv / "bin/fab"
    assert ok(run([fab, "--version"], cwd=ops, env=env)).stdout.startswith("Fabric ")
    assert "hello" in ok(run([fab, "--list"], cwd=ops, env=env)).stdout
    ok(run([venv / "bin/pip", "uninstall", "-y", "deploytools"], cwd=ops, env=env))
    assert not (venv / "bin/deploytools").exists()
    assert ok(run([fab, "--version"], cwd=ops, env=env)).stdout.startswith("Fabric ")
    ok(run([fab, "hello"], cwd=ops, env=env))
    assert "hello" in ok(run([fab, "--list"], cwd=ops, env=env)).stdout
