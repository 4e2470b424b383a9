"""Issue 2, end to end on four real SSH hosts: setup, deploy (both syntaxes),
restart, rollback, status, venv reuse, and a broken release that never goes live.

The tests run in file order and build on each other, like an operator's day.
"""
from __future__ import annotations

import json
import os
import stat
import time

import pytest

pytestmark = pytest.mark.system

HOSTS = ["web-0", "web-1", "web-2", "web-3"]


def revisions(env, hosts=HOSTS):
    return {h: (env.served(h) or {}).get("revision") for h in hosts}


def sha(env, label):
    return env.samples["airship"].resolve(label)


def test_setup_is_idempotent(deployenv):
    for _ in range(2):
        out = deployenv.fab("setup:airship")
        assert out.returncode == 0
    for h in HOSTS:
        d = deployenv.srv(h)
        assert (d / "tools" / "bin" / "supervisord").exists()
        assert stat.S_IMODE(os.stat(d / "run").st_mode) == 0o700
        assert (d / "run" / "supervisor.sock").is_socket()
        pid = int((d / "run" / "supervisord.pid").read_text())
        os.kill(pid, 0)  # alive
    # Nothing is deployed: the program is stopped, not tried again and again (a stop
    # landing in a try's first milliseconds is lost, and the first deploy waited 15 s).
    spawned = {h: (deployenv.srv(h) / "log" / "supervisord.log").read_text().count("spawned:")
               for h in HOSTS}
    status = deployenv.fab("status:airship").stdout
    rows = [line.split() for line in status.splitlines() if line.startswith("web-")]
    assert {row[0]: row[4] for row in rows} == {h: "STOPPED" for h in HOSTS}, status
    time.sleep(2.5)  # supervisord's retries come 1, 2, 3 s apart
    assert {h: (deployenv.srv(h) / "log" / "supervisord.log").read_text().count("spawned:")
            for h in HOSTS} == spawned


def test_first_deploy_serves_everywhere(deployenv):
    deployenv.fab("deploy:airship,ref=v1")
    assert revisions(deployenv) == {h: sha(deployenv, "v1") for h in HOSTS}
    for h in HOSTS:
        d = deployenv.srv(h)
        rel = deployenv.current(h)
        assert rel.endswith("-" + sha(deployenv, "v1")[:7])
        manifest = json.loads((d / "releases" / rel / ".deploy" / "manifest.json").read_text())
        assert manifest["commit"] == sha(deployenv, "v1")
        assert stat.S_IMODE(os.stat(d / "releases" / rel / ".deploy" / "env").st_mode) == 0o600
        assert (d / "repo" / "HEAD").exists()  # the cached mirror
        # Django's media/ is shared by default (shared: [media/]), as before.
        assert os.readlink(d / "releases" / rel / "media") == "/srv/airship/shared/media"
        assert (d / "shared" / "media").is_dir()
        # gunicorn binds the host's own address, not a shared one
        assert deployenv.served(h)["hostname"] == h
        # gunicorn's control socket (25.1+, one path for every master of the user) is off
        log = (d / "log" / "error.log").read_text()
        assert "Booting worker" in log and "Control socket" not in log


def test_classic_syntax_deploys_one_host_only(deployenv):
    before = {h: deployenv.current(h) for h in HOSTS}
    deployenv.fab("host:web-0", "deploy:airship,ref=v2", "restart:airship")
    revs = revisions(deployenv)
    assert revs["web-0"] == sha(deployenv, "v2")
    for h in HOSTS[1:]:
        assert revs[h] == sha(deployenv, "v1")
        assert deployenv.current(h) == before[h]  # untouched
    steps = deployenv.history("web-0")[-1]["steps"]
    assert "venv_reused" in steps and "venv_built" not in steps  # requirements unchanged


def test_modern_syntax_on_two_hosts(deployenv):
    deployenv.fab("-H", "web-1,web-2", "deploy", "airship", "--ref", "v2", "restart", "airship")
    revs = revisions(deployenv)
    assert revs["web-1"] == revs["web-2"] == sha(deployenv, "v2")
    assert revs["web-3"] == sha(deployenv, "v1")


def test_status_shows_release_commit_and_state(deployenv):
    out = deployenv.fab("status:airship")
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if line.strip()}
    for h in HOSTS:
        assert deployenv.current(h) in lines[h]
        assert "RUNNING" in lines[h]
    assert sha(deployenv, "v2")[:7] in lines["web-0"]
    assert sha(deployenv, "v1")[:7] in lines["web-3"]
    js = deployenv.fab("status:airship", "--json")
    rows = [json.loads(x) for x in js.stdout.splitlines() if x.strip()]
    rows = {r["host"]: r for r in rows if r["event"] == "status"}
    assert rows["web-3"]["commit"] == sha(deployenv, "v1")[:7] and rows["web-3"]["healthy"]


def test_rollback_fleet_wide(deployenv):
    deployenv.fab("host:web-3", "deploy:airship,ref=v2")
    assert set(revisions(deployenv).values()) == {sha(deployenv, "v2")}
    deployenv.fab("rollback:airship")
    assert revisions(deployenv) == {h: sha(deployenv, "v1") for h in HOSTS}
    assert deployenv.history("web-2")[-1]["action"] == "rollback"


def test_new_requirements_build_a_venv_and_restart(deployenv):
    pid_before = deployenv.served("web-0")["pid"]
    deployenv.fab("host:web-0", "deploy:airship,ref=v3")
    assert deployenv.served("web-0")["revision"] == sha(deployenv, "v3")
    rec = deployenv.history("web-0")[-1]
    assert "venv_built" in rec["steps"] and "activate_restart" in rec["steps"]
    venvs = [p.name for p in (deployenv.srv("web-0") / "venvs").iterdir() if p.is_dir()]
    assert len(venvs) == 2
    # a restart means a new gunicorn master; its workers have new pids too
    assert deployenv.served("web-0")["pid"] != pid_before


def test_code_only_change_reloads_gracefully(deployenv):
    deployenv.fab("host:web-1", "deploy:airship,ref=v2")
    rec = deployenv.history("web-1")[-1]
    assert "venv_reused" in rec["steps"] and "activate_reload" in rec["steps"]


def test_broken_import_never_switches_current(deployenv):
    before = {h: deployenv.current(h) for h in HOSTS}
    out = deployenv.fab("deploy:airship,ref=broken-import", check=False)
    assert out.returncode == 1, out.stderr
    assert "does_not_exist" in out.stderr
    assert "Traceback" not in out.stderr.split("Error:", 1)[0]
    assert {h: deployenv.current(h) for h in HOSTS} == before
    for h in HOSTS:
        assert not (deployenv.srv(h) / ".lock").exists()
        assert deployenv.history(h)[-1]["outcome"] == "failed"
