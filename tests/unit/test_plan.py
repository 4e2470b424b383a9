"""Smart-deploy decisions are pure: table-driven over changed files."""
from types import SimpleNamespace

import pytest

from deploytools.plan import decide, matches_build_inputs, migration_delta, parse_showmigrations


def django(**kw):
    base = dict(kind="django", requirements="requirements.txt", install="auto", collectstatic=True,
                migrate=True, build=None, migrate_command=None, migrations_path=None)
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


# --- kind command: rebuild only when the build inputs changed -------------------------

def command(**kw):
    base = dict(kind="command", requirements=None, install="auto", collectstatic=False,
                migrate=False,
                build="sh build.sh", build_inputs=("src/", "build.sh"),
                build_outputs=("build/",), reload_signal="restart", migrate_command=None,
                migrations_path=None)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("files, build", [
    (["src/harbor/Main.java"], True),
    (["build.sh"], True),
    (["README.md"], False),
    (["docs/build.sh", "srcfoo/x.java"], False),  # neither under src/ nor the top build.sh
    ([], False),  # the same commit again
])
def test_decide_command_build(files, build):
    steps = decide(command(), "b" * 40, {LIVE: files})
    assert {s.name: s.run for s in steps} == {"build": build, "restart": True}


def test_command_reuse_reason_names_inputs_and_outputs():
    step = decide(command(), "b" * 40, {LIVE: ["README.md"]})[0]
    assert not step.run
    assert "src/, build.sh" in step.reason and "build/" in step.reason


def test_command_build_reasons_name_the_changed_file():
    step = decide(command(), "b" * 40, {LIVE: ["README.md", "build.sh"]})[0]
    assert step.run and "build.sh" in step.reason and "README" not in step.reason


@pytest.mark.parametrize("changes, why", [
    ({}, "nothing is live yet"),
    ({LIVE: None}, "cannot compare"),
])
def test_command_builds_without_a_comparable_live_commit(changes, why):
    step = decide(command(), "b" * 40, changes)[0]
    assert step.run and why in step.reason


def test_command_without_outputs_always_builds():
    step = decide(command(build_outputs=None), "b" * 40, {LIVE: ["README.md"]})[0]
    assert step.run and "no build_outputs" in step.reason


def test_command_default_inputs_are_every_file():
    svc = command(build_inputs=None)
    assert decide(svc, "b" * 40, {LIVE: ["README.md"]})[0].run
    assert not decide(svc, "b" * 40, {LIVE: []})[0].run


def test_command_any_live_commit_with_changed_inputs_rebuilds():
    steps = decide(command(), "b" * 40, {LIVE: ["README.md"], "c" * 40: ["src/a.java"]})
    assert steps[0].run


def test_command_without_build_has_no_build_step():
    steps = decide(command(build=None, build_outputs=None, build_inputs=None), "b" * 40,
                   {LIVE: ["x"]})
    assert [s.name for s in steps] == ["restart"]


def test_command_with_a_reload_signal_reloads():
    steps = decide(command(reload_signal="USR2"), "b" * 40, {LIVE: ["src/a.java"]})
    assert [(s.name, s.run) for s in steps] == [("build", True), ("reload", True)]
    assert "USR2" in steps[1].reason


@pytest.mark.parametrize("path, patterns, expected", [
    ("src/harbor/Main.java", ("src/",), True),
    ("src/harbor/Main.java", ("src",), True),
    ("src", ("src/",), True),
    ("srcfoo/a", ("src",), False),
    ("src/harbor/Main.java", ("*.java",), True),  # `*` crosses `/`, as in git pathspecs
    ("src/harbor/Main.java", ("src/*/Main.java",), True),
    ("README.md", ("*.java", "build.sh"), False),
    ("pom.xml", ("pom.xml",), True),
    ("anything", None, True),
])
def test_matches_build_inputs(path, patterns, expected):
    assert matches_build_inputs(path, patterns) is expected


@pytest.mark.parametrize("install,requirements,changed,venv", [
    # auto: the host picks the method from the release, so any candidate predicts a venv
    ("auto", "requirements.txt", ["pyproject.toml"], True),
    ("auto", "requirements.txt", ["uv.lock"], True),
    ("auto", None, ["setup.cfg"], True),
    ("auto", None, ["requirements.txt"], False),  # `requirements: null`: not an input
    ("auto", "req/prod.txt", ["req/prod.txt"], True),
    ("auto", "requirements.txt", ["flaskr/__init__.py", "README.md"], False),
    ("requirements", "requirements.txt", ["pyproject.toml", "uv.lock"], False),
    ("requirements", "requirements.txt", ["requirements.txt"], True),
    ("uv", "requirements.txt", ["requirements.txt", "setup.py"], False),
    ("uv", "requirements.txt", ["uv.lock"], True),
    ("uv", "requirements.txt", ["pyproject.toml"], True),
    ("project", "requirements.txt", ["requirements.txt", "uv.lock"], False),
    ("project", "requirements.txt", ["setup.py"], True),
    ("none", "requirements.txt", ["requirements.txt", "pyproject.toml", "uv.lock"], False),
])
def test_venv_step_follows_the_install_method(install, requirements, changed, venv):
    steps = decide(django(install=install, requirements=requirements), "b" * 40, {LIVE: changed})
    step = next(s for s in steps if s.name == "venv")
    assert step.run is venv, step.reason
    assert (steps[-1].name == "restart") is venv


def flask(**kw):
    base = dict(kind="flask", requirements=None, install="auto", collectstatic=False,
                migrate=False, build=None, migrate_command="flask db upgrade",
                migrations_path="migrations/versions")
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("svc,files,runs,reason", [
    (flask(), ["app/views.py"], False, "migrations/versions unchanged"),
    (flask(), ["migrations/versions/0002_add_tags.py"], True,
     "migrations/versions changed since aaaaaaa: migrations/versions/0002_add_tags.py"),
    (flask(migrations_path="migrations/versions/"), ["migrations/versions_old/x.py"], False,
     "migrations/versions unchanged"),
    (flask(migrations_path=None), ["app/views.py"], True,
     "no migrations_path: migrate_command runs on every deploy"),
    (flask(migrate_command=None, migrations_path=None), ["migrations/versions/1.py"], None, None),
])
def test_decide_migrate_command(svc, files, runs, reason):
    steps = {s.name: s for s in decide(svc, "t" * 40, {"a" * 40: files})}
    if runs is None:
        assert "migrate" not in steps
    else:
        assert (steps["migrate"].run, steps["migrate"].reason) == (runs, reason)
