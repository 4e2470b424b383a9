"""The sample services (examples/) and the git repositories built from them."""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest

import build_repos

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALLOWED_REQUIREMENTS = {"Django", "gunicorn", "psycopg[binary]", "Flask", "flask", "six",
                        "SQLAlchemy", "alembic"}
LABELS = {
    "airship": {"v1", "v2", "v3", "v4", "v5", "broken-import", "errors-20", "fails-on-others",
                "expand-column", "drop-column", "drop-column-post"},
    "skiff": {"v1", "v2", "v3", "broken-import", "errors-20"},
    "dory": {"v1", "v2", "v3", "broken-import", "errors-20"},
    "harbor": {"v1", "v2", "v3", "errors-20", "broken-build", "fails-to-start"},
    "ketch": {"v1", "v2", "v3"},
    "flaskr": {"v1"},
    "tern": {"v1", "v2", "v3", "v4", "drop-tags"},
}
TIP = {"airship": "v5", "skiff": "v3", "dory": "v3", "harbor": "v3", "ketch": "v3", "flaskr": "v1",
       "tern": "v4"}
VERBATIM = {"flaskr"}  # someone else's project, as published: no VERSION of ours in it
# sha256sum of `find . -type f | sort | xargs sha256sum` in Flask 3.1.3's examples/tutorial
# (flask-3.1.3.tar.gz, sha256 0ef0e52b8a9cd932855379197dd8f94047b359ca0a78695144304cb45f87c9eb)
FLASKR_TREE = "3052b5f2a1c98ee7b373f274eb4b5910ef7d6f976a86e5c9aa4aead1422269c9"
BRANCHES = {"broken-import", "errors-20", "fails-on-others", "broken-build", "fails-to-start",
            "drop-tags"}
# Issue 12's releases: a chain of branches on top of master's tip (not on v2).
MIGRATION_BRANCHES = {"expand-column": "v5", "drop-column": "expand-column",
                      "drop-column-post": "expand-column"}




@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    built = build_repos.build(tmp_path_factory.mktemp("samples"))
    return built


def git(repo_dir: Path, *args: str) -> str:
    return build_repos.git(repo_dir, *args)


def changed(repo, a: str, b: str) -> dict[str, str]:
    """path -> status letter (A/M/D) between two labels."""
    out = git(repo.work, "diff", "--name-status", repo.commits[a], repo.commits[b])
    return {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines()}


def show(repo, label: str, path: str) -> str:
    return git(repo.work, "show", f"{repo.commits[label]}:{path}")


def version_file(name: str) -> str:
    """Where the sample keeps VERSION (NAME/version.py, or harbor's Main.java)."""
    return build_repos.SAMPLES[name].version_path


def diff_lines(repo, a: str, b: str, path: str) -> list[str]:
    """The +/- lines of `path` between two labels."""
    out = git(repo.work, "diff", repo.commits[a], repo.commits[b], "--", path)
    return [l for l in out.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")]


# --- the commit graph ---------------------------------------------------------

def test_labels_and_refs(repos):
    assert set(repos) == set(LABELS)
    for name, repo in repos.items():
        assert repo.origin == repo.origin.parent / f"{name}.git" and repo.origin.parent.name == "origin"
        assert repo.work.name == name and repo.work.parent.name == "work"
        assert set(repo.commits) == LABELS[name]
        assert all(re.fullmatch(r"[0-9a-f]{40}", sha) for sha in repo.commits.values())
        assert git(repo.origin, "rev-parse", "master") == repo.commits[TIP[name]]
        assert git(repo.origin, "symbolic-ref", "HEAD") == "refs/heads/master"
        assert git(repo.work, "rev-parse", "HEAD") == repo.commits[TIP[name]]
        assert git(repo.work, "status", "--porcelain") == ""
        for label, sha in repo.commits.items():
            ref = (f"refs/heads/{label}" if label in BRANCHES | set(MIGRATION_BRANCHES)
                   else f"refs/tags/{label}")
            assert git(repo.origin, "rev-parse", ref) == sha


def test_master_is_linear_and_versions_count_up(repos):
    for name, repo in repos.items():
        masters = sorted(label for label in repo.commits if label.startswith("v"))
        for n, label in enumerate(masters, start=1):
            parent = git(repo.work, "rev-parse", f"{repo.commits[label]}^") if n > 1 else None
            assert parent == (repo.commits[f"v{n - 1}"] if n > 1 else None)
            if name in VERBATIM:
                continue
            assert f'VERSION = "{n}"' in show(repo, label, version_file(name))
        assert git(repo.work, "rev-list", "--count", repo.commits[masters[-1]]) == str(len(masters))


def test_branches_are_one_change_on_top_of_v2(repos):
    for name, repo in repos.items():
        base = build_repos.SAMPLES[name].base  # v2, or v4 for tern
        for label in BRANCHES & set(repo.commits):
            assert git(repo.work, "rev-parse", f"{repo.commits[label]}^") == repo.commits[base]
            assert f'VERSION = "{base[1:]}"' in show(repo, label, version_file(name))
    airship = repos["airship"]
    assert changed(airship, "v2", "broken-import") == {"airship/urls.py": "M"}
    assert changed(airship, "v2", "errors-20") == {"airship/views.py": "M"}
    assert changed(airship, "v2", "fails-on-others") == {"airship/views.py": "M"}
    assert changed(repos["skiff"], "v2", "errors-20") == {"skiff/app.py": "M"}
    assert changed(repos["dory"], "v2", "broken-import") == {"dory/wsgi.py": "M"}
    for label in ("errors-20", "broken-build", "fails-to-start"):
        assert changed(repos["harbor"], "v2", label) == {"src/harbor/Main.java": "M"}


def test_airship_history(repos):
    repo = repos["airship"]
    assert changed(repo, "v1", "v2") == {"airship/version.py": "M", "airship/views.py": "M"}

    assert changed(repo, "v2", "v3") == {"requirements.txt": "M", "airship/version.py": "M", "airship/views.py": "M"}
    assert "six" not in show(repo, "v2", "requirements.txt")
    assert "six>=" in show(repo, "v3", "requirements.txt")
    views_diff = git(repo.work, "diff", repo.commits["v2"], repo.commits["v3"], "--", "airship/views.py")
    assert [l for l in views_diff.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---")] == [
        "+import six  # noqa: F401  v3 needs a new requirement"]

    v4 = changed(repo, "v3", "v4")
    new_migrations = [p for p, s in v4.items() if s == "A" and re.fullmatch(r"flights/migrations/0002_\w+\.py", p)]
    assert len(new_migrations) == 1
    assert v4["flights/models.py"] == "M"
    assert not any(p.startswith("flights/static/") or p == "requirements.txt" for p in v4)

    assert changed(repo, "v4", "v5") == {"flights/static/flights/site.css": "M", "airship/version.py": "M"}


def test_skiff_and_dory_history(repos):
    skiff, dory = repos["skiff"], repos["dory"]
    assert changed(skiff, "v1", "v2") == {"skiff/version.py": "M", "skiff/app.py": "M"}
    assert changed(skiff, "v2", "v3") == {"skiff/version.py": "M", "skiff/app.py": "M", "requirements.txt": "M"}
    assert "six>=" in show(skiff, "v3", "requirements.txt")
    assert changed(dory, "v1", "v2") == {"dory/version.py": "M", "dory/wsgi.py": "M"}
    assert changed(dory, "v2", "v3") == {"dory/version.py": "M", "dory/wsgi.py": "M"}


def test_only_prebuilt_requirements_in_any_commit(repos):
    for repo in repos.values():
        for sha in git(repo.origin, "rev-list", "--all").split():
            files = git(repo.origin, "ls-tree", "--name-only", sha).splitlines()
            if repo.name in ("ketch", "flaskr"):  # their dependencies are in pyproject.toml
                assert "requirements.txt" not in files
                text = git(repo.origin, "show", f"{sha}:pyproject.toml")
                deps = re.search(r"^dependencies = \[\n(.*?)^\]", text, re.S | re.M).group(1)
                for line in deps.splitlines():
                    name = re.match(r'\s*"([A-Za-z0-9_.-]+)', line).group(1)
                    assert name in ALLOWED_REQUIREMENTS, (repo.name, sha, line)
                continue
            if "requirements.txt" not in files:
                assert repo.name == "harbor"  # the Java sample has no Python requirements
                continue
            for line in git(repo.origin, "show", f"{sha}:requirements.txt").splitlines():
                if line.strip() and not line.startswith("#"):
                    name = re.match(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?", line).group(0)
                    assert name in ALLOWED_REQUIREMENTS, (repo.name, sha, line)


def test_ketch_history(repos):
    ketch = repos["ketch"]
    assert changed(ketch, "v1", "v2") == {"ketch/version.py": "M", "ketch/__init__.py": "M"}
    assert changed(ketch, "v2", "v3") == {"ketch/version.py": "M", "ketch/__init__.py": "M",
                                          "pyproject.toml": "M"}
    assert "six>=" in show(ketch, "v3", "pyproject.toml")


def test_ketch_is_an_app_factory_with_an_init_db_command(repos, tmp_path):
    repo = repos["ketch"]
    tree = repo.export("v1", tmp_path / "v1")
    db = tmp_path / "data" / "ketch.sqlite"
    with imported(tree, "ketch") as mod:
        app = mod.create_app({"DATABASE": str(db)})
        check_endpoints(lambda p: flask_get(app, p), "ketch", "1", "unknown")
        assert flask_get(app, "/hello")[2] == "Hello, World!"
        assert flask_get(app, "/posts")[0] == 500  # not initialised yet
        result = app.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code == 0 and "Initialized the database." in result.output
        assert json.loads(flask_get(app, "/posts")[2]) == {"posts": 0}
    with imported(repo.export("v3", tmp_path / "v3"), "ketch") as mod:
        assert json.loads(flask_get(mod.create_app(), "/")[2])["version"] == "3"


def test_tern_history(repos):
    tern = repos["tern"]
    assert changed(tern, "v2", "v3") == {"tern/version.py": "M", "tern/__init__.py": "M",
                                         "requirements.txt": "M"}
    assert changed(tern, "v3", "v4") == {"tern/version.py": "M", "tern/__init__.py": "M",
                                         "migrations/versions/0002_post_tags.py": "A"}
    assert changed(tern, "v4", "drop-tags") == {"tern/__init__.py": "M",
                                                "migrations/versions/0003_drop_tags.py": "A"}
    assert git(tern.work, "rev-parse", f"{tern.commits['drop-tags']}^") == tern.commits["v4"]
    assert "tags" not in show(tern, "drop-tags", "tern/__init__.py")


def test_flaskr_is_flasks_tutorial_unmodified(repos, tmp_path):
    """Byte for byte the tree of Flask 3.1.3's examples/tutorial, its licence included."""
    def tree_hash(root: Path) -> str:
        lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root)}\n"
                        for p in sorted(root.rglob("*"), key=lambda p: str(p.relative_to(root)))
                        if p.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()

    assert tree_hash(EXAMPLES / "flaskr") == FLASKR_TREE
    assert tree_hash(repos["flaskr"].export("v1", tmp_path / "v1")) == FLASKR_TREE
    assert "Copyright 2010 Pallets" in (EXAMPLES / "flaskr" / "LICENSE.txt").read_text()


def test_builds_are_reproducible(repos, tmp_path):
    again = build_repos.build(tmp_path, names=["dory"])
    assert again["dory"].commits == repos["dory"].commits


def test_helpers_commit_push_export(tmp_path):
    repo = build_repos.build(tmp_path / "b", names=["dory"])["dory"]
    v3 = repo.commits["v3"]

    sha = repo.commit("add notes", {"NOTES.txt": "hello\n"}, label="notes")
    assert repo.commits["notes"] == sha
    assert git(repo.origin, "rev-parse", "master") == sha
    assert git(repo.origin, "rev-parse", f"{sha}^") == v3

    gone = repo.commit("drop notes", {"NOTES.txt": None})
    assert git(repo.origin, "rev-parse", f"{gone}^") == sha
    assert "NOTES.txt" not in git(repo.origin, "ls-tree", "--name-only", gone)

    assert repo.push("v1") == repo.commits["v1"]
    assert git(repo.origin, "rev-parse", "master") == repo.commits["v1"]
    assert repo.push(v3[:10], branch="release") == v3
    assert git(repo.origin, "rev-parse", "release") == v3

    feature = repo.commit("feature", {"dory/extra.py": "X = 1\n"}, branch="feature", base="v2")
    assert git(repo.origin, "rev-parse", "feature^") == repo.commits["v2"]
    assert git(repo.origin, "rev-parse", "feature") == feature

    tree = repo.export("v1", tmp_path / "v1")
    assert 'VERSION = "1"' in (tree / "dory" / "version.py").read_text()
    assert not (tree / ".git").exists()

    # a fresh clone of origin still has every labelled master commit (tags)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo.origin), str(clone)], check=True,
                   env=build_repos.git_env())
    git(clone, "cat-file", "-e", f"{repo.commits['v3']}^{{commit}}")


def test_cli_json(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "build_repos.py"), str(tmp_path), "--json"],
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    assert {name: set(info["commits"]) for name, info in data.items()} == LABELS
    assert Path(data["airship"]["origin"]).is_dir()


# --- running the apps ---------------------------------------------------------

@contextlib.contextmanager
def imported(tree: Path, module: str):
    """Import `module` fresh from `tree`, and forget it afterwards."""
    package = module.split(".")[0]

    def forget():
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]

    forget()
    sys.path.insert(0, str(tree))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(tree))
        forget()


def wsgi_get(application, path):
    environ = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(application(environ, start_response))
    return seen["status"], seen["headers"], body.decode()


def flask_get(app, path):
    response = app.test_client().get(path)
    return response.status_code, dict(response.headers), response.get_data(as_text=True)


def check_endpoints(get, name, version, revision):
    status, headers, body = get("/healthz")
    assert (status, body) == (200, "ok")
    assert headers["Content-Type"].startswith("text/plain")

    status, headers, body = get("/")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    assert {k: data[k] for k in ("service", "version", "revision", "hostname", "pid")} == {
        "service": name, "version": version, "revision": revision,
        "hostname": socket.gethostname(), "pid": os.getpid()}

    status, _, body = get("/version")
    assert (status, body) == (200, revision)


@pytest.mark.parametrize("name, module, attr, get", [
    ("skiff", "skiff.app", "app", flask_get),
    ("dory", "dory.wsgi", "application", wsgi_get),
])
def test_small_apps(repos, tmp_path, name, module, attr, get):
    repo = repos[name]
    tree = repo.export("v1", tmp_path / "v1")
    with imported(tree, module) as mod:
        app = getattr(mod, attr)
        check_endpoints(lambda p: get(app, p), name, "1", "unknown")
        (tree / "REVISION").write_text(repo.commits["v1"] + "\n")
        check_endpoints(lambda p: get(app, p), name, "1", repo.commits["v1"])

    with imported(repo.export("v3", tmp_path / "v3"), module) as mod:
        assert json.loads(get(getattr(mod, attr), "/")[2])["version"] == "3"

    with pytest.raises(ModuleNotFoundError, match="does_not_exist"):
        with imported(repo.export("broken-import", tmp_path / "broken"), module):
            pass

    with imported(repo.export("errors-20", tmp_path / "e20"), module) as mod:
        app = getattr(mod, attr)
        statuses = []
        for _ in range(50):
            statuses.append(get(app, "/")[0])
            assert get(app, "/healthz")[0] == 200
        assert [i for i, s in enumerate(statuses, 1) if s != 200] == list(range(5, 51, 5))
        assert set(statuses) == {200, 500}


DJANGO_SCRIPT = r"""
import json, socket, sys
spec = json.loads(sys.argv[1])
if spec.get("hostname"):
    socket.gethostname = lambda: spec["hostname"]
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)
call_command("collectstatic", interactive=False, verbosity=0)
from django.test import Client
client = Client()
out = []
for path in spec["paths"]:
    response = client.get(path)
    out.append([path, response.status_code, response.get("Content-Type"), response.getvalue().decode()])
    response.close()
print(json.dumps(out))
"""


def django_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STATIC_ROOT", "AIRSHIP_SQLITE_PATH")}
    env.update(DJANGO_SETTINGS_MODULE="airship.settings", PYTHONDONTWRITEBYTECODE="1",
               AIRSHIP_SQLITE_PATH=str(tmp_path / "airship.sqlite3"), STATIC_ROOT=str(tmp_path / "static"))
    return env


def run_django(tree, tmp_path, paths, hostname=None):
    proc = subprocess.run([sys.executable, "-c", DJANGO_SCRIPT, json.dumps({"paths": paths, "hostname": hostname})],
                          cwd=tree, env=django_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_airship_v1(repos, tmp_path):
    repo = repos["airship"]
    tree = repo.export("v1", tmp_path / "v1")
    (tree / "REVISION").write_text(repo.commits["v1"] + "\n")
    results = run_django(tree, tmp_path, ["/healthz", "/", "/version", "/flights", "/static/flights/site.css"])
    by_path = {path: (status, ctype, body) for path, status, ctype, body in results}

    assert by_path["/healthz"] == (200, "text/plain", "ok")
    status, ctype, body = by_path["/"]
    assert status == 200 and ctype == "application/json"
    data = json.loads(body)
    assert {k: data[k] for k in ("service", "version", "revision")} == {
        "service": "airship", "version": "1", "revision": repo.commits["v1"]}
    assert data["hostname"] == socket.gethostname() and isinstance(data["pid"], int)
    assert by_path["/version"][0] == 200 and by_path["/version"][2] == repo.commits["v1"]
    assert by_path["/flights"][0] == 200 and json.loads(by_path["/flights"][2]) == {"count": 0}
    assert by_path["/static/flights/site.css"][0] == 200
    assert "color: #123456" in by_path["/static/flights/site.css"][2]


def test_airship_tip_migrates_and_serves_new_static(repos, tmp_path):
    tree = repos["airship"].export("v5", tmp_path / "v5")
    results = run_django(tree, tmp_path, ["/", "/flights", "/static/flights/site.css"])
    assert [r[1] for r in results] == [200, 200, 200]
    assert json.loads(results[0][3])["version"] == "5" and json.loads(results[0][3])["revision"] == "unknown"
    assert json.loads(results[1][3]) == {"count": 0, "with_destination": 0}
    assert "color: #654321" in results[2][3]


def test_airship_expand_then_contract_releases(repos, tmp_path):
    repo = repos["airship"]
    for label, base in MIGRATION_BRANCHES.items():
        assert git(repo.work, "rev-parse", f"{repo.commits[label]}^") == repo.commits[base]
    assert changed(repo, "v5", "expand-column") == {
        "flights/models.py": "M", "airship/views.py": "M", "flights/migrations/0003_flight_gate.py": "A"}
    for label in ("drop-column", "drop-column-post"):
        assert changed(repo, "expand-column", label) == {
            "flights/models.py": "M", "airship/views.py": "M",
            "flights/migrations/0004_remove_flight_gate.py": "A"}
    path = "flights/migrations/0004_remove_flight_gate.py"
    assert "post_deploy = True" in show(repo, "drop-column-post", path)
    assert "post_deploy" not in show(repo, "drop-column", path)
    tree = repo.export("expand-column", tmp_path / "expand")
    results = run_django(tree, tmp_path, ["/flights"])
    assert json.loads(results[0][3]) == {"count": 0, "with_destination": 0, "with_gate": 0}


@pytest.mark.parametrize("label", ["v1", "v4", "expand-column", "drop-column", "drop-column-post"])
def test_airship_has_no_missing_migrations(repos, tmp_path, label):
    tree = repos["airship"].export(label, tmp_path / label)
    proc = subprocess.run([sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
                          cwd=tree, env=django_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_airship_errors_20(repos, tmp_path):
    tree = repos["airship"].export("errors-20", tmp_path / "e20")
    results = run_django(tree, tmp_path, ["/", "/healthz"] * 50)
    index = [status for path, status, _, _ in results if path == "/"]
    assert [i for i, s in enumerate(index, 1) if s != 200] == list(range(5, 51, 5))
    assert set(index) == {200, 500}
    assert all(status == 200 for path, status, _, _ in results if path == "/healthz")


@pytest.mark.parametrize("hostname, expected", [("web-0", 200), ("web-0.fleet.test", 200), ("web-1", 500)])
def test_airship_fails_on_others(repos, tmp_path, hostname, expected):
    tree = repos["airship"].export("fails-on-others", tmp_path / "f")
    results = run_django(tree, tmp_path, ["/", "/", "/healthz"], hostname=hostname)
    assert [r[1] for r in results] == [expected, expected, 200]


@pytest.mark.parametrize("name, target", [("airship", "airship.wsgi"), ("skiff", "skiff.app:app"),
                                          ("dory", "dory.wsgi")])
def test_gunicorn_check_config(repos, tmp_path, name, target):
    repo = repos[name]
    env = django_env(tmp_path)
    for label, ok in (("v1", True), ("broken-import", False)):
        tree = repo.export(label, tmp_path / label)
        proc = subprocess.run([sys.executable, "-m", "gunicorn", "--check-config", target],
                              cwd=tree, env=env, capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, proc.stderr
        if not ok:
            assert "does_not_exist" in proc.stderr


def test_airship_settings(repos, tmp_path, monkeypatch):
    import runpy

    tree = repos["airship"].export("v1", tmp_path / "releases" / "r1")
    settings_py = str(tree / "airship" / "settings.py")
    for var in ("DATABASE_URL", "AIRSHIP_SQLITE_PATH", "STATIC_ROOT", "SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)

    s = runpy.run_path(settings_py)
    assert s["DEBUG"] is False and s["ALLOWED_HOSTS"] == ["*"] and s["SECRET_KEY"]
    assert s["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert s["DATABASES"]["default"]["NAME"] == tmp_path / "shared" / "airship.sqlite3"
    assert s["STATIC_ROOT"] == tree / "staticfiles" and s["STATIC_URL"] == "/static/"

    monkeypatch.setenv("SECRET_KEY", "s3")
    monkeypatch.setenv("AIRSHIP_SQLITE_PATH", "/data/a.db")
    monkeypatch.setenv("STATIC_ROOT", "/srv/static")
    s = runpy.run_path(settings_py)
    assert s["SECRET_KEY"] == "s3" and str(s["DATABASES"]["default"]["NAME"]) == "/data/a.db"
    assert str(s["STATIC_ROOT"]) == "/srv/static"

    monkeypatch.setenv("DATABASE_URL", "postgres://air%40ship:p%3Ass@db.example:6543/flights")
    db = runpy.run_path(settings_py)["DATABASES"]["default"]
    assert db == {"ENGINE": "django.db.backends.postgresql", "NAME": "flights", "USER": "air@ship",
                  "PASSWORD": "p:ss", "HOST": "db.example", "PORT": "6543"}


# --- harbor: the Java sample, built and run for real ----------------------------

HARBOR_MAIN = "src/harbor/Main.java"
HARBOR_BUILD = ["sh", "build.sh"]  # what staging runs in the release directory
HARBOR_RUN = ["java", "-jar", "build/harbor.jar"]  # the supervisord command, from the release directory
HARBOR_LABELS = ("v1", "v3", "errors-20", "broken-build", "fails-to-start")
TEXT = "text/plain; charset=utf-8"


def test_harbor_history(repos):
    repo = repos["harbor"]
    assert changed(repo, "v1", "v2") == {HARBOR_MAIN: "M"}
    assert changed(repo, "v2", "v3") == {"build.sh": "M", HARBOR_MAIN: "M"}
    # v3 changes the build and nothing else: in Main.java only VERSION moves
    assert diff_lines(repo, "v2", "v3", HARBOR_MAIN) == [
        '-    static final String VERSION = "2";', '+    static final String VERSION = "3";']
    removed, added = diff_lines(repo, "v2", "v3", "build.sh")
    assert removed.startswith('-"$JAVAC" ') and "-Xlint" not in removed
    assert added == "+" + removed[1:].replace(" --release 17 ", " -Xlint:all --release 17 ")
    for label in repo.commits:
        script = show(repo, label, "build.sh")
        assert "-d build/classes" in script
        assert "--create --file build/harbor.jar --main-class harbor.Main -C build/classes ." in script
    assert "/build/" in show(repo, "v1", ".gitignore").splitlines()


@pytest.fixture(scope="module")
def harbor_builds(repos, tmp_path_factory):
    """label -> (exported tree, `sh build.sh` result); the builds run side by side to save time."""
    missing = [tool for tool in ("java", "javac", "jar") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"needs a JDK 17: {', '.join(missing)} not found")
    root = tmp_path_factory.mktemp("harbor")
    trees = {label: repos["harbor"].export(label, root / label) for label in HARBOR_LABELS}

    def build(tree):
        return subprocess.run(HARBOR_BUILD, cwd=tree, capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(len(trees)) as pool:
        results = list(pool.map(build, trees.values()))
    return {label: (tree, result) for (label, tree), result in zip(trees.items(), results)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def harbor_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}
    env.update(HOST="127.0.0.1", PORT=str(port), **extra)
    return env


class Harbor:
    """A running `java -jar build/harbor.jar` (optionally behind `wrap`), its stdout+stderr in `log`."""

    def __init__(self, tree: Path, log: Path, wrap: tuple[str, ...] = (), **env: str):
        self.port, self.log = free_port(), log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([*wrap, *HARBOR_RUN], cwd=tree, env=harbor_env(self.port, **env),
                                         stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str, str]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=5)  # no proxies from the environment
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type"), response.read().decode()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"harbor exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"harbor did not answer /healthz within {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 5) -> tuple[int, float]:
        """SIGTERM, as supervisord stops it; returns (exit status, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"harbor still running {timeout}s after SIGTERM:\n{self.log.read_text()}")
        return status, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def harbor(tree: Path, log: Path, wrap: tuple[str, ...] = (), **env: str):
    server = Harbor(tree, log, wrap, **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def test_harbor_v1_builds_serves_and_stops(repos, harbor_builds, tmp_path):
    tree, build = harbor_builds["v1"]
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tree / "build" / "harbor.jar").is_file() and (tree / "build" / "classes" / "harbor" / "Main.class").is_file()
    sha = repos["harbor"].commits["v1"]
    (tree / "REVISION").unlink(missing_ok=True)

    with harbor(tree, tmp_path / "v1.log") as server:
        assert server.get("/healthz") == (200, TEXT, "ok")
        status, ctype, body = server.get("/")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body) == {"service": "harbor", "version": "1", "revision": "unknown",
                                    "hostname": socket.gethostname(), "pid": server.proc.pid}
        assert server.get("/version") == (200, TEXT, "unknown")

        (tree / "REVISION").write_text(f"  {sha}\n")  # read per request, trimmed
        assert json.loads(server.get("/")[2])["revision"] == sha
        assert server.get("/version") == (200, TEXT, sha)
        (tree / "REVISION").write_text("\n")  # empty counts as unknown
        assert server.get("/version")[2] == "unknown"
        assert server.get("/nope")[:2] == (404, TEXT)

        status, seconds = server.terminate()
    assert status == 128 + signal.SIGTERM and seconds < 5  # the JVM's exit status after SIGTERM

    log = (tmp_path / "v1.log").read_text()
    access = re.findall(r'^\S+ 127\.0\.0\.1 "GET (\S+) HTTP/1\.1" (\d{3}) \d+$', log, flags=re.M)
    # One line per request. In any order: a pool thread writes its line after the response
    # went out, so under load the next request's thread can write first (this failed
    # now and then on a busy machine).
    assert sorted(a for a in access if a[0] != "/healthz") == sorted([
        ("/", "200"), ("/version", "200"), ("/", "200"), ("/version", "200"), ("/version", "200"), ("/nope", "404")])
    assert "listening on 127.0.0.1:" in log and "shutting down" in log


def test_harbor_reports_the_uts_hostname(harbor_builds, tmp_path):
    """On a fleet host (own UTS namespace, shared /etc) the name is the namespace's, e.g. web-0:
    InetAddress.getLocalHost() cannot resolve it there, and /etc/hostname and HOSTNAME say otherwise."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode:
        pytest.skip("cannot create a UTS namespace here (needs root and unshare)")
    tree, build = harbor_builds["v1"]
    assert build.returncode == 0, build.stderr
    wrap = ("unshare", "-u", "sh", "-c", 'hostname web-0 && exec "$@"', "sh")  # both exec: the pid is java's
    with harbor(tree, tmp_path / "uts.log", wrap, HOSTNAME="not-web-0") as server:
        data = json.loads(server.get("/")[2])
        assert (data["hostname"], data["pid"]) == ("web-0", server.proc.pid)


def test_harbor_v3_builds_without_warnings(harbor_builds):
    tree, build = harbor_builds["v3"]
    assert build.returncode == 0, build.stdout + build.stderr
    assert "warning" not in build.stderr.lower(), build.stderr
    assert (tree / "build" / "harbor.jar").is_file()


def test_harbor_broken_build_fails_to_stage(harbor_builds):
    tree, build = harbor_builds["broken-build"]
    assert build.returncode != 0
    assert "package does.not does not exist" in build.stderr
    assert not (tree / "build" / "harbor.jar").exists()


def test_harbor_fails_to_start_exits_quickly(harbor_builds):
    tree, build = harbor_builds["fails-to-start"]
    assert build.returncode == 0, build.stdout + build.stderr
    started = time.monotonic()
    proc = subprocess.run(HARBOR_RUN, cwd=tree, env=harbor_env(free_port()), capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 1 and time.monotonic() - started < 5
    assert "fails-to-start" in proc.stderr


def test_harbor_errors_20(harbor_builds, tmp_path):
    tree, build = harbor_builds["errors-20"]
    assert build.returncode == 0, build.stdout + build.stderr
    with harbor(tree, tmp_path / "e20.log") as server:
        statuses = []
        for _ in range(50):
            statuses.append(server.get("/")[0])
            assert server.get("/healthz") == (200, TEXT, "ok")
    assert [i for i, s in enumerate(statuses, 1) if s != 200] == list(range(5, 51, 5))
    assert set(statuses) == {200, 500}
    assert (tmp_path / "e20.log").read_text().count("simulated failure") == 10
