"""The bar of issue 16: Flask's tutorial app "flaskr", unmodified, deploys.

examples/flaskr is Flask 3.1.3's examples/tutorial byte for byte (tests/unit/test_samples.py
checks that): dependencies in pyproject.toml (built with flit_core), no requirements file,
an app factory, and a database that `flask --app flaskr init-db` creates once per server
in Flask's instance folder. It gets its own origin, so no other test moves its branches.
"""
from __future__ import annotations

import dataclasses

import pytest
import requests
import yaml

import build_repos

pytestmark = pytest.mark.system

SVC = "flaskr"
PORT = 8032
HOSTS = ["web-2", "web-3"]


@pytest.fixture(scope="module")
def env(deployenv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flaskr")
    samples = build_repos.build(tmp / "samples", names=[SVC])
    data = yaml.safe_load(deployenv.config.read_text())
    # Exactly what the issue asks an operator to write, nothing about the project changed.
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(samples[SVC].origin), "hosts": HOSTS,
        "app": "flaskr:create_app()", "port": PORT, "graceful_timeout": 5,
        "health": {"path": "/hello"}}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return dataclasses.replace(deployenv, config=config, samples=samples)


def get(env, host, path):
    return requests.get(env.url(host, path, PORT), timeout=5)


def test_flaskr_deploys_unmodified_and_init_db_runs_once(env):
    env.fab(f"deploy:{SVC}")
    for h in HOSTS:
        assert env.current(h, SVC).endswith(env.samples[SVC].commits["v1"][:7])
        r = get(env, h, "/hello")
        assert (r.status_code, r.text) == (200, "Hello, World!")
        # The blog index needs the database, which nothing has created yet.
        assert get(env, h, "/").status_code == 500
        rec = env.history(h, SVC)[-1]
        assert rec["outcome"] == "success" and "venv_built" in rec["steps"], rec

    # The command as the issue spells it, classic syntax, on the service's hosts, once.
    proc = env.fab(f"exec:{SVC},flask --app flaskr init-db,once=true")
    lines = proc.stdout.splitlines()
    assert f"{HOSTS[0]}: Initialized the database." in lines, lines
    assert not [line for line in lines if line.startswith(f"{HOSTS[1]}:")], lines

    index = get(env, HOSTS[0], "/")
    assert index.status_code == 200 and "<h1>Posts</h1>" in index.text, index.text
    assert get(env, HOSTS[1], "/").status_code == 500  # once: the other host was not touched
    # The database is where flaskr puts it: Flask's instance folder, inside the live
    # release (until `shared:` paths keep it across releases, see README).
    release = env.current(HOSTS[0], SVC)
    assert (env.srv(HOSTS[0], SVC) / "releases" / release / "instance" / "flaskr.sqlite").is_file()
    rec = env.history(HOSTS[0], SVC)[-1]
    assert (rec["action"], rec["exit"], rec["command"]) == ("exec", 0, "flask --app flaskr init-db")
