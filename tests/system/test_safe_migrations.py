"""Issue 12 on the real fleet: expand before the canary, contract after the last wave.

A service of its own (`migr`: the airship sample from its own origin, on port 8700,
its own PostgreSQL database) on the four hosts, rollout canary -> 50% -> 100%
(three waves). The releases (examples/build_repos.py): v5, then expand-column (adds a
nullable Flight.gate that /flights reads), then drop-column (drops it, unmarked) and
drop-column-post (the same with `post_deploy = True`); last, a commit whose post-deploy
migration fails.

Constant load on /flights of every host: an old host that meets a dropped column
answers 500, so "0 failed requests" means no old host ever met the contraction. The
tests run in file order and build on each other.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import build_repos
from loadgen import LoadGen
from sysenv import ServiceEnv

pytestmark = pytest.mark.system

SVC = "migr"
PORT = 8700  # no other test uses it
HOSTS = ["web-0", "web-1", "web-2", "web-3"]
MIN_REQUESTS = 2000
RATE = 150.0  # requests/s over all hosts: >= 2,000 within a deploy, and the machine keeps up
COLUMN_SQL = ("SELECT count(*) FROM information_schema.columns "
              "WHERE table_name = 'flights_flight' AND column_name = 'gate'")
DROP = "flights.0004_remove_flight_gate"


class Migr(ServiceEnv):
    SERVICE, PORT = SVC, PORT

    def __init__(self, env, sample, dir: Path, database_url: str):
        super().__init__(env, sample, dir, {
            "kind": "django", "repo": str(sample.origin), "role": "web",
            "app": "airship.wsgi:application", "port": PORT, "workers": 2,
            "graceful_timeout": 5,
            "env": {"DJANGO_SETTINGS_MODULE": "airship.settings", "DATABASE_URL": database_url},
            "rollout": [1, "50%", "100%"], "keep_releases": 10,
            # Less wall time: no static files to collect, and an inconclusive gate
            # proceeds at once (the defaults say proceed) instead of extending the bake.
            "collectstatic": False, "gate": {"max_extensions": 0}})

    def urls(self) -> list[str]:
        return [f"http://{self.env.fleet.host(h).address}:{PORT}/flights" for h in HOSTS]


@pytest.fixture(scope="module")
def migr(deployenv, postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("migrations")
    sample = build_repos.build(tmp / "samples", names=["airship"])["airship"]
    env = Migr(deployenv, sample, tmp, postgres.database(SVC))
    yield env
    env.stop_everywhere()


def has_gate(postgres) -> bool:
    return postgres.query(SVC, COLUMN_SQL) == "1"


def applied(postgres, name: str) -> bool:
    app, _, migration = name.partition(".")
    return postgres.query(SVC, "SELECT count(*) FROM django_migrations WHERE "
                               f"app = '{app}' AND name = '{migration}'") == "1"


def assert_no_failures(stats):
    stats = dict(stats)
    stats.pop("per_url", None)
    assert stats["requests"] >= MIN_REQUESTS, stats
    assert stats["failures"] == 0, json.dumps(stats, indent=1)


def test_first_deploy(migr, postgres):
    migr.fab(f"setup:{SVC}")
    migr.fab(f"deploy:{SVC},ref=v5")
    assert migr.revisions() == {h: migr.sha("v5") for h in HOSTS}
    assert not has_gate(postgres)


def test_expand_migration_deploys_under_load_with_no_failed_request(migr, postgres):
    with LoadGen(migr.urls(), threads=8, duration=300, rate=RATE) as gen:
        time.sleep(1)
        proc = migr.fab(f"deploy:{SVC},ref=expand-column")
        while gen.stats.requests < MIN_REQUESTS:
            time.sleep(0.2)
    assert_no_failures(gen.stats.summary())
    assert "flights.0003_flight_gate: EXPAND, runs before the canary" in proc.stdout, proc.stdout
    assert migr.revisions() == {h: migr.sha("expand-column") for h in HOSTS}
    assert has_gate(postgres)
    rec = migr.history("web-0")[-1]
    assert rec["outcome"] == "success"
    assert [(m["name"], m["verdict"]) for m in rec["migration_plan"]] == [
        ("flights.0003_flight_gate", "expand")]


def test_plan_prints_each_migrations_verdict_and_when_it_runs(migr):
    out = migr.fab(f"plan:{SVC},ref=drop-column").stdout
    assert f"{DROP}  CONTRACT  runs before the canary" in out, out
    assert "RemoveField: Remove field gate from flight" in out
    assert "A DEPLOY WOULD BE REFUSED (exit 2)" in out
    out = migr.fab(f"plan:{SVC},ref=drop-column-post").stdout
    assert (f"{DROP}  CONTRACT  runs after the last wave, marked post-deploy by class "
            "attribute") in out, out
    assert "REFUSED" not in out
    assert "nothing was changed (dry run)" in out


def test_unmarked_contract_is_refused_before_anything_is_touched(migr, postgres):
    before = {h: migr.current(h) for h in HOSTS}
    proc = migr.fab(f"deploy:{SVC},ref=drop-column", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "flights/migrations/0004_remove_flight_gate.py" in err and "RemoveField" in err, err
    assert "post_deploy = True" in err and "expand release" in err and "force=true" in err
    assert "Traceback" not in err
    assert {h: migr.current(h) for h in HOSTS} == before
    assert migr.revisions() == {h: migr.sha("expand-column") for h in HOSTS}
    assert has_gate(postgres) and not applied(postgres, DROP)
    # The staged release is gone too: a rollback can never pick a refused release.
    short = migr.sha("drop-column")[:7]
    assert [p.name for h in HOSTS for p in (migr.srv(h) / "releases").iterdir()
            if p.name.endswith(short)] == []
    rec = migr.history("web-0")[-1]
    assert (rec["outcome"], rec["failed_step"]) == ("refused", "migrations")


def test_marked_contract_runs_after_the_last_wave_with_no_failed_request(migr, postgres):
    """The old hosts keep reading gate during all three waves (0 failed requests of
    >= 2,000), and the column is gone only after wave 3 passed: polled in
    information_schema while the deploy runs, and checked as each wave ends."""
    gone_at: list[float] = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            if not has_gate(postgres):
                gone_at.append(time.monotonic())
                return
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    with LoadGen(migr.urls(), threads=8, duration=300, rate=RATE) as gen:
        time.sleep(1)
        poller.start()
        run = migr.spawn(f"deploy:{SVC},ref=drop-column-post")
        try:
            present = {}
            for i in (1, 2, 3):
                _, line = run.wait_for(lambda s, i=i: s.startswith(f"wave {i}/3"), 240)
                present[f"wave {i} starts"] = has_gate(postgres)
                t_done, _ = run.wait_for(lambda s, i=i: s.startswith(f"wave {i} ok"), 240)
                if i < 3:
                    present[f"wave {i} ok"] = has_gate(postgres)
            code, out, err = run.finish(240)
        finally:
            run.kill()
            stop.set()
        while gen.stats.requests < MIN_REQUESTS:
            time.sleep(0.2)
    poller.join(5)
    assert code == 0, out + err
    assert present == {"wave 1 starts": True, "wave 1 ok": True, "wave 2 starts": True,
                       "wave 2 ok": True, "wave 3 starts": True}, out
    assert gone_at and gone_at[0] > t_done, (gone_at, t_done, out)
    assert not has_gate(postgres) and applied(postgres, DROP)
    assert_no_failures(gen.stats.summary())
    # The order in the output: the last wave, the post-deploy migrations, then the tag.
    lines = out.splitlines()
    idx = {key: next(i for i, s in enumerate(lines) if s.startswith(key))
           for key in ("wave 3 ok", "post-deploy migrations on web-0", "production -> ")}
    assert idx["wave 3 ok"] < idx["post-deploy migrations on web-0"] < idx["production -> "], out
    rec = migr.history("web-0")[-1]
    assert rec["outcome"] == "success" and rec["post_deploy_migrations"] == [DROP]
    assert "post_deploy_migrate" in rec["steps"]
    assert migr.revisions() == {h: migr.sha("drop-column-post") for h in HOSTS}


def test_rollback_past_a_contraction_warns_by_name(migr, postgres):
    proc = migr.fab(f"rollback:{SVC}")
    assert "WARNING: rolling back past post-deploy migrations that ran" in proc.stdout
    assert DROP in proc.stdout
    assert migr.revisions() == {h: migr.sha("expand-column") for h in HOSTS}
    assert migr.history("web-0")[-1]["contracted_schema"] == [DROP]
    assert not has_gate(postgres)  # a warning, not a reversal


def test_a_failing_post_deploy_migration_leaves_the_code_live_and_exits_3(migr, postgres):
    """After the last wave the release serves everywhere; a post-deploy migration that
    fails then changes none of that: exit 3, the history says post_deploy_failed, and
    production is not moved."""
    broken = migr.sample.commit("a post-deploy migration that fails", {
        "flights/migrations/0005_fails.py": (
            "from django.db import migrations\n\n\n"
            "class Migration(migrations.Migration):\n"
            "    post_deploy = True\n"
            "    dependencies = [('flights', '0004_remove_flight_gate')]\n"
            "    operations = [migrations.RunSQL('SELECT no_such_column FROM no_such_table')]\n")},
        branch="post-deploy-fails", base="drop-column-post")
    migr.data["services"][SVC]["rollout"] = ["100%"]  # one wave is enough here
    migr.write()
    try:
        proc = migr.fab(f"deploy:{SVC},ref={broken}", check=False)
    finally:
        migr.data["services"][SVC]["rollout"] = [1, "50%", "100%"]
        migr.write()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "post-deploy migrations (flights.0005_fails) failed on web-0" in proc.stderr
    assert "no_such_table" in proc.stderr and "stays live" in proc.stderr
    assert migr.revisions() == {h: broken for h in HOSTS}
    rec = migr.history("web-0")[-1]
    assert (rec["outcome"], rec["failed_step"]) == ("post_deploy_failed", "post_deploy_migrate")
    assert rec["post_deploy_failed"] == ["flights.0005_fails"]
    assert not applied(postgres, "flights.0005_fails")
    assert "tag" not in rec
    assert build_repos.git(migr.sample.origin, "rev-parse", "production") == \
        migr.sha("drop-column-post")
