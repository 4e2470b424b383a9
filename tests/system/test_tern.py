"""migrate_command on the real fleet: the tern sample (Flask app factory, Alembic, PostgreSQL).

One service on two hosts, its own origin, the suite's PostgreSQL. In order: a cold deploy
(`alembic upgrade head` once, before the canary), a smart code-only deploy (no migration,
venv reused), a dependency change (a new venv), an expand migration (a nullable column),
a contract migration refused before anything is touched, and a rollback.
"""
from __future__ import annotations

import dataclasses

import pytest
import requests
import yaml

import build_repos

pytestmark = pytest.mark.system

SVC = "tern"
PORT = 8033
HOSTS = ["web-0", "web-1"]
STATE: dict[str, dict[str, str]] = {}  # label -> host -> venv key


@pytest.fixture(scope="module")
def env(deployenv, postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tern")
    samples = build_repos.build(tmp / "samples", names=[SVC])
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(samples[SVC].origin), "hosts": HOSTS,
        "app": "tern:create_app()", "port": PORT, "graceful_timeout": 5,
        "migrate_command": "alembic upgrade head", "migrations_path": "migrations/versions",
        "env": {"DATABASE_URL": postgres.database(SVC)}}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return dataclasses.replace(deployenv, config=config, samples=samples)


def served(env, host, path="/"):
    return requests.get(env.url(host, path, PORT), timeout=5).json()


def last(env, host):
    return env.history(host, SVC)[-1]


def venv_of(env, host):
    return (env.srv(host, SVC) / "current" / ".deploy" / "venv").readlink().name


def schema(postgres):
    version = postgres.query(SVC, "SELECT version_num FROM alembic_version")
    columns = postgres.query(SVC, "SELECT column_name FROM information_schema.columns "
                                  "WHERE table_name = 'post' ORDER BY column_name")
    return version, columns.split()


def assert_serves(env, label):
    for h in HOSTS:
        assert served(env, h)["revision"] == env.samples[SVC].commits[label], h


def test_cold_deploy_migrates_once_before_the_canary(env, postgres):
    proc = env.fab(f"deploy:{SVC},ref=v1")
    assert_serves(env, "v1")
    assert "web-0: migrate_command ran" in proc.stdout
    assert proc.stdout.index("migrate_command ran") < proc.stdout.index("wave 1/")
    assert "migrate" in last(env, "web-0")["steps"] and "migrate" not in last(env, "web-1")["steps"]
    assert schema(postgres) == ("0001", ["id", "title"])
    for h in HOSTS:
        assert served(env, h, "/posts") == {"posts": [{"id": 1, "title": "hello from tern"}]}
    STATE["v1"] = {h: venv_of(env, h) for h in HOSTS}


def test_smart_code_only_deploy_skips_the_migration_and_reuses_the_venv(env):
    env.fab(f"smart_deploy:{SVC},ref=v2")
    assert_serves(env, "v2")
    for h in HOSTS:
        rec = last(env, h)
        assert "migrate" not in rec["steps"] and "venv_reused" in rec["steps"], rec
        assert venv_of(env, h) == STATE["v1"][h]
    plan = {s["name"]: s for s in last(env, "web-0")["plan"]}
    assert plan["migrate"] == {"name": "migrate", "run": False,
                               "reason": "migrations/versions unchanged"}


def test_a_dependency_change_builds_a_new_venv(env):
    env.fab(f"deploy:{SVC},ref=v3")
    assert_serves(env, "v3")
    for h in HOSTS:
        assert "venv_built" in last(env, h)["steps"] and venv_of(env, h) != STATE["v1"][h]
    STATE["v3"] = {h: venv_of(env, h) for h in HOSTS}


def test_an_expand_migration_runs_and_is_classified(env, postgres):
    env.fab(f"deploy:{SVC},ref=v4")
    assert_serves(env, "v4")
    assert schema(postgres) == ("0002", ["id", "tags", "title"])
    rec = last(env, "web-0")
    assert [(o["path"], o["op"], o["verdict"]) for o in rec["migration_ops"]] == [
        ("migrations/versions/0002_post_tags.py", "add_column", "expand")]
    for h in HOSTS:
        assert served(env, h, "/posts")["posts"][0]["tags"] is None
        assert "venv_reused" in last(env, h)["steps"] and venv_of(env, h) == STATE["v3"][h]
    # The migrate task runs migrate_command in the live release (alembic: nothing to do).
    proc = env.fab(f"migrate:{SVC}")
    assert "tern on web-0: migrate_command ran" in proc.stdout
    assert schema(postgres) == ("0002", ["id", "tags", "title"])


def test_a_contract_migration_is_refused_with_nothing_touched(env, postgres):
    before = {h: env.current(h, SVC) for h in HOSTS}
    proc = env.fab(f"deploy:{SVC},ref=drop-tags", check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("Error: ") and err.count("Error:") == 1 and "Traceback" not in err
    assert "migrations/versions/0003_drop_tags.py:16: op.drop_column (contract)" in err, err
    assert "force=true" in err and "Nothing was touched" in err
    assert {h: env.current(h, SVC) for h in HOSTS} == before
    assert schema(postgres) == ("0002", ["id", "tags", "title"])
    assert_serves(env, "v4")
    rec = last(env, "web-0")
    assert (rec["outcome"], rec["failed_step"]) == ("failed", "check_migrations")


def test_rollback_goes_back_to_the_release_before(env):
    env.fab(f"rollback:{SVC}")
    assert_serves(env, "v3")
    for h in HOSTS:
        assert last(env, h)["action"] == "rollback" and venv_of(env, h) == STATE["v3"][h]
        assert served(env, h, "/posts")["posts"] == [{"id": 1, "title": "hello from tern"}]
