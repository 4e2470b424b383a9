"""Issue 11 (shared paths) and issue 16 (Flask's instance folder) on the real fleet.

ketch keeps its SQLite database in Flask's instance folder, inside the release; with
`shared: [instance/, conf/local.cfg]` the database and a host's own config file live
in `<dir>/shared/` and are linked into every release. A deploy before the shared file
exists stops at staging, naming the file to create on each host, with no host
switched. Then the database written by the app (through `exec`) and a file the test
put in the shared directory survive three deploys (v1; v2, code only; v3, a new
virtualenv) and a rollback, with every release's links pointing into shared/.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import requests
import yaml

import build_repos

pytestmark = pytest.mark.system

SVC = "keep"
PORT = 8040  # no other test uses it
HOSTS = ["web-2", "web-3"]
SHARED = f"/srv/{SVC}/shared"  # as the hosts see it (each its own /srv)


@pytest.fixture(scope="module")
def env(deployenv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    # Its own origin: it deploys v1, v2, v3 in order, and other tests move `production`.
    samples = build_repos.build(tmp / "samples", names=["ketch"])
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(samples["ketch"].origin), "hosts": HOSTS,
        "app": "ketch:create_app()", "port": PORT, "graceful_timeout": 5,
        "health": {"path": "/hello"}, "rollout": [1, "100%"],
        "shared": ["instance/", "conf/local.cfg"]}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return dataclasses.replace(deployenv, config=config, samples=samples)


def posts(env, host):
    r = requests.get(env.url(host, "/posts", PORT), timeout=5)
    return r.status_code, r.json() if r.status_code == 200 else r.text


def check_shared(env, label: str, note: dict[str, str]) -> None:
    for h in HOSTS:
        srv = env.srv(h, SVC)
        assert (env.served(h, PORT) or {}).get("revision") == env.samples["ketch"].resolve(label)
        # The database the app wrote through the release's instance/ link, still there.
        assert posts(env, h) == (200, {"posts": 1})
        assert (srv / "shared" / "instance" / "ketch.sqlite").is_file()
        assert (srv / "shared" / "instance" / "note.txt").read_text() == note[h]
        assert (srv / "shared" / "conf" / "local.cfg").read_text() == f"host = {h}\n"
        releases = sorted(p for p in (srv / "releases").iterdir() if (p / "REVISION").exists())
        assert env.current(h, SVC) in [p.name for p in releases]
        for rel in releases:  # every release on disk: links into shared/, nothing else
            assert os.readlink(rel / "instance") == f"{SHARED}/instance"
            assert os.readlink(rel / "conf" / "local.cfg") == f"{SHARED}/conf/local.cfg"


def test_shared_paths_survive_three_deploys_and_a_rollback(env):
    # No conf/local.cfg on the hosts yet: staging stops, naming it, before any switch.
    proc = env.fab(f"deploy:{SVC},ref=v1", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    for h in HOSTS:
        assert f"{h}: staging" in err and env.current(h, SVC) is None
    assert f"create {SHARED}/conf/local.cfg" in err and "no host was switched" in err, err

    note = {}
    for h in HOSTS:
        shared = env.srv(h, SVC) / "shared"
        (shared / "conf").mkdir(parents=True)
        (shared / "conf" / "local.cfg").write_text(f"host = {h}\n")
    env.fab(f"deploy:{SVC},ref=v1")
    for h in HOSTS:
        assert posts(env, h)[0] == 500  # no database yet
        # The test writes into the shared directory the app sees.
        note[h] = f"written by the test on {h}\n"
        (env.srv(h, SVC) / "shared" / "instance" / "note.txt").write_text(note[h])
    # The app writes its database through the link (Flask's instance folder).
    add_post = ("flask --app ketch init-db && python -c 'import sqlite3; "
                "c = sqlite3.connect(\"instance/ketch.sqlite\"); "
                "c.execute(\"INSERT INTO post (title) VALUES (1)\"); c.commit()'")
    env.fab("-H", ",".join(HOSTS), "exec", SVC, add_post)
    check_shared(env, "v1", note)

    for label in ("v2", "v3"):
        env.fab(f"deploy:{SVC},ref={label}")
        check_shared(env, label, note)
    env.fab(f"rollback:{SVC}")
    check_shared(env, "v2", note)
