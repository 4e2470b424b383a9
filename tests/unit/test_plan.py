"""Smart-deploy decisions are pure: table-driven over changed files."""
from types import SimpleNamespace

import pytest

from deploytools.plan import decide, migration_delta, parse_showmigrations


def django(**kw):
    base = dict(kind="django", requirements="requirements.txt", collectstatic=True, migrate=True,
                build=None)
    return SimpleNamespace(**{**base, **kw})


LIVE = "a" * 40


@pytest.mark.parametrize("files, expected", [
    (["airship/views.py"], {"venv": False, "collectstatic": False, "migrate": False, "reload": True}),
    (["requirements.txt", "airship/x.py"],
     {"venv": True, "collectstatic": False, "migrate": False, "restart": True}),
    (["flights/migrations/0002_flight_destination.py", "flights/models.py"],
     {"venv": False, "collectstatic": False, "migrate": True, "reload": True}),
    (["flights/static/flights/site.css"],
     {"venv": False, "collectstatic": True, "migrate": False, "reload": True}),
    ([], {"venv": False, "collectstatic": False, "migrate": False, "reload": True}),
    (["docs/requirements.txt"], {"venv": False, "collectstatic": False, "migrate": False,
                                 "reload": True}),
    (["flights/migrations/__init__.py"], {"venv": False, "collectstatic": False,
                                          "migrate": False, "reload": True}),
])
def test_decide_django(files, expected):
    steps = decide(django(), "b" * 40, {LIVE: files})
    assert {s.name: s.run for s in steps} == expected


def test_nothing_live_runs_everything():
    steps = decide(django(), "b" * 40, {})
    assert {s.name: s.run for s in steps} == {"venv": True, "collectstatic": True,
                                             "migrate": True, "reload": True}
    assert all("nothing is live" in s.reason for s in steps if s.name != "reload")


def test_unknown_live_commit_runs_everything():
    steps = decide(django(), "b" * 40, {LIVE: None})
    assert {s.name: s.run for s in steps if s.name != "restart"} == {
        "venv": True, "collectstatic": True, "migrate": True}


def test_any_of_several_live_commits_triggers_a_step():
    steps = decide(django(), "b" * 40, {LIVE: [], "c" * 40: ["requirements.txt"]})
    assert {s.name: s.run for s in steps}["venv"] is True


def test_flask_has_no_django_steps():
    steps = decide(django(kind="flask", collectstatic=False, migrate=False), "b" * 40,
                   {LIVE: ["app.py"]})
    assert [s.name for s in steps] == ["venv", "reload"]


def test_reasons_name_the_files():
    steps = decide(django(), "b" * 40, {LIVE: ["requirements.txt"]})
    assert "requirements.txt" in steps[0].reason and LIVE[:7] in steps[0].reason


SHOW = """admin
 [X] 0001_initial
 [X] 0002_logentry_remove_auto_add
auth
 [X] 0001_initial
flights
 [X] 0001_initial
 [ ] 0002_flight_destination
sessions
 (no migrations)
"""


def test_parse_showmigrations():
    assert parse_showmigrations(SHOW) == {"admin": "0002_logentry_remove_auto_add",
                                          "auth": "0001_initial", "flights": "0001_initial"}


def test_migration_delta_names_what_a_rollback_crosses():
    now = {"flights": "0002_flight_destination", "auth": "0001_initial"}
    then = {"flights": "0001_initial", "auth": "0001_initial"}
    assert migration_delta(now, then) == ["flights.0002_flight_destination"]
    assert migration_delta(now, now) == []
