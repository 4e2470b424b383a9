"""Issue 3 on the real fleet: smart deploy does exactly the needed steps, the
production branch and date tags move only on success, plan changes nothing,
and rolling back across a migration warns (or reverses it) against PostgreSQL.
"""
from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone

import pytest
import requests

pytestmark = pytest.mark.system

HOSTS = ["web-0", "web-1", "web-2", "web-3"]
SVC = "smart"
PORT = 8002


def repo(env):
    return env.smart_repo


def git(origin, *args):
    return subprocess.run(["git", "-C", str(origin), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def production(env):
    origin = repo(env).origin
    try:
        return git(origin, "rev-parse", "--verify", "-q", "refs/heads/production")
    except subprocess.CalledProcessError:
        return None


def tags(env):
    return git(repo(env).origin, "tag", "-l", "production-*").split()


def revisions(env):
    return {h: (env.served(h, PORT) or {}).get("revision") for h in HOSTS}


def last(env, host="web-0"):
    return env.history(host, SVC)[-1]


def sha(env, label):
    return repo(env).resolve(label)


def smart_deploy(env, label, check=True):
    return env.fab(f"smart_deploy:{SVC},ref={label}", check=check)


def snapshot(env):
    """Every file under the service's directories on every host, with mtimes and links."""
    out = {}
    for h in HOSTS:
        root = env.srv(h, SVC)
        for dirpath, dirnames, filenames in os.walk(root):
            if "/venvs/" in dirpath + "/" or "/tools" in dirpath or "/log" in dirpath \
                    or "/run" in dirpath or "/repo" in dirpath:
                continue
            for name in filenames + dirnames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                out[p] = (st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else None)
    return out


def test_first_smart_deploy_runs_everything_and_tags(deployenv, postgres):
    assert production(deployenv) is None
    smart_deploy(deployenv, "v1")
    steps = last(deployenv)["all_steps"]
    for step in ("venv_built", "collectstatic", "migrate", "check_config"):
        assert step in steps, steps
    assert set(revisions(deployenv).values()) == {sha(deployenv, "v1")}
    assert production(deployenv) == sha(deployenv, "v1")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert tags(deployenv) == [f"production-{today}"]
    assert last(deployenv)["tag"] == f"production-{today}"
    r = requests.get(deployenv.url("web-2", "/flights", PORT), timeout=5)
    assert r.status_code == 200 and r.json()["count"] == 0


def test_plan_prints_steps_and_waves_and_touches_nothing(deployenv):
    before, prod, tg = snapshot(deployenv), production(deployenv), tags(deployenv)
    out = deployenv.fab(f"plan:{SVC},ref=v3")
    text = out.stdout
    assert "RUN   venv" in text and "requirements.txt" in text
    assert "skip  migrate" in text and "skip  collectstatic" in text
    assert "RUN   restart" in text
    assert "wave 1: web-0" in text and "wave 2: web-1" in text and "wave 3: web-2, web-3" in text
    assert snapshot(deployenv) == before
    assert (production(deployenv), tags(deployenv)) == (prod, tg)
    js = deployenv.fab(f"plan:{SVC},ref=v3", "--json").stdout.splitlines()
    plan = next(json.loads(x) for x in js if json.loads(x)["event"] == "plan")
    assert {s["name"]: s["run"] for s in plan["steps"]} == {
        "venv": True, "collectstatic": False, "migrate": False, "restart": True}


@pytest.mark.parametrize("label, ran, not_ran", [
    ("v2", {"venv_reused", "collectstatic_reused", "activate_reload"},
     {"venv_built", "migrate", "collectstatic", "activate_restart"}),
    ("v3", {"venv_built", "collectstatic_reused", "activate_restart"},
     {"migrate", "collectstatic"}),
    ("v4", {"venv_reused", "migrate", "collectstatic_reused", "activate_reload"},
     {"venv_built", "collectstatic"}),
    ("v5", {"venv_reused", "collectstatic", "activate_reload"},
     {"venv_built", "migrate", "collectstatic_reused"}),
])
def test_smart_deploy_sequence_runs_only_needed_steps(deployenv, postgres, label, ran, not_ran):
    n_tags = len(tags(deployenv))
    smart_deploy(deployenv, label)
    steps = set(last(deployenv)["all_steps"])
    assert ran <= steps, steps
    assert not (not_ran & steps), steps
    assert set(revisions(deployenv).values()) == {sha(deployenv, label)}
    assert production(deployenv) == sha(deployenv, label)
    assert len(tags(deployenv)) == n_tags + 1
    if label == "v4":
        cols = postgres.query(SVC, "SELECT column_name FROM information_schema.columns "
                                   "WHERE table_name = 'flights_flight'")
        assert "destination" in cols.split()
        applied = postgres.query(SVC, "SELECT count(*) FROM django_migrations WHERE "
                                      "app = 'flights' AND name LIKE '0002%'")
        assert applied == "1"  # once, not once per host
        r = requests.get(deployenv.url("web-3", "/flights", PORT), timeout=5)
        assert r.status_code == 200
    if label == "v5":
        css = requests.get(deployenv.url("web-1", "/static/flights/site.css", PORT), timeout=5)
        assert css.status_code == 200
        work = repo(deployenv).work
        expected = git(work, "show", f"{sha(deployenv, 'v5')}:flights/static/flights/site.css")
        assert css.text.strip() == expected.strip()


def test_failed_deploy_moves_neither_branch_nor_tags(deployenv):
    prod, tg = production(deployenv), tags(deployenv)
    # A broken commit on top of the live one (a fast-forward, so only the import fails).
    wsgi = git(repo(deployenv).origin, "show", f"{prod}:airship/wsgi.py")
    broken = repo(deployenv).commit("break the import", {"airship/wsgi.py": wsgi.replace(
        "import airship.urls", "import does_not_exist  # noqa\nimport airship.urls")},
        branch="broken-on-live", base=prod)
    out = smart_deploy(deployenv, broken, check=False)
    assert out.returncode == 1, out.stderr
    assert "does_not_exist" in out.stderr
    assert (production(deployenv), tags(deployenv)) == (prod, tg)
    assert last(deployenv)["outcome"] == "failed"


def test_failing_migration_switches_no_host(deployenv):
    """A migration that fails runs before any activation: every host keeps serving the
    live release, and the branch, the tags and the lock are as they were."""
    prod, tg = production(deployenv), tags(deployenv)
    live = {h: deployenv.current(h, SVC) for h in HOSTS}
    names = git(repo(deployenv).origin, "ls-tree", "--name-only", f"{prod}:flights/migrations")
    latest = max(n[:-3] for n in names.split() if n[:4].isdigit())
    broken = repo(deployenv).commit("a migration that fails", {
        "flights/migrations/0099_fails.py": (
            "from django.db import migrations\n\n\n"
            "class Migration(migrations.Migration):\n"
            f"    dependencies = [('flights', {latest!r})]\n"
            "    operations = [migrations.RunSQL('SELECT no_such_column FROM no_such_table')]\n")},
        branch="failing-migration", base=prod)
    out = smart_deploy(deployenv, broken, check=False)
    assert out.returncode == 1, out.stderr
    assert "migrations of" in out.stderr and "no host was switched" in out.stderr, out.stderr
    assert "no_such_table" in out.stderr
    assert {h: deployenv.current(h, SVC) for h in HOSTS} == live
    assert (production(deployenv), tags(deployenv)) == (prod, tg)
    assert not any((deployenv.srv(h, SVC) / ".lock").exists() for h in HOSTS)
    rec = last(deployenv)
    assert (rec["outcome"], rec["failed_step"]) == ("failed", "migrate")


def test_rollback_across_a_migration_warns_by_name(deployenv, postgres):
    out = deployenv.fab(f"rollback:{SVC},to=v3")
    assert "flights.0002_flight_destination" in out.stdout
    assert set(revisions(deployenv).values()) == {sha(deployenv, "v3")}
    cols = postgres.query(SVC, "SELECT column_name FROM information_schema.columns "
                               "WHERE table_name = 'flights_flight'")
    assert "destination" in cols.split()  # kept: the warning said so
    assert production(deployenv) == sha(deployenv, "v5")  # rollback is not a release


def test_rollback_with_migrate_reverses_to_the_recorded_state(deployenv, postgres):
    smart_deploy(deployenv, "v5")
    deployenv.fab(f"rollback:{SVC},to=v3,migrate=true")
    assert set(revisions(deployenv).values()) == {sha(deployenv, "v3")}
    cols = postgres.query(SVC, "SELECT column_name FROM information_schema.columns "
                               "WHERE table_name = 'flights_flight'")
    assert "destination" not in cols.split()
    assert postgres.query(SVC, "SELECT count(*) FROM django_migrations WHERE "
                               "app = 'flights' AND name LIKE '0002%'") == "0"
    r = requests.get(deployenv.url("web-0", "/flights", PORT), timeout=5)
    assert r.status_code == 200
