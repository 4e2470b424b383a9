"""Turn the sample services in examples/ into real git repositories with history.

    python examples/build_repos.py DEST [--json] [--only NAME ...]

For each sample NAME this creates a bare origin DEST/origin/NAME.git and a
working clone DEST/work/NAME. The tree in examples/NAME/ is commit v1; the
later commits are small edits described in SAMPLES below. Every commit on
master bumps VERSION ("1", "2", ...; in NAME/version.py, or for harbor the
constant in src/harbor/Main.java), so `GET /` tells them apart; the branches
sit one commit on top of v2 and differ from it by exactly their change
(VERSION stays "2"). Master labels are also pushed as
tags (v1, v2, ...), so each stays reachable in origin and in every clone
even after `push()` moves master.

  airship (Django)  master v1..v5 (== v5); branches broken-import, errors-20, fails-on-others
                    (on v2), expand-column (on v5), drop-column and drop-column-post
                    (on expand-column)
  skiff (Flask)     master v1..v3 (== v3); branches broken-import, errors-20
  dory (WSGI)       master v1..v3 (== v3); branches broken-import, errors-20
  harbor (Java 17)  master v1..v3 (== v3); branches errors-20, broken-build, fails-to-start
  ketch (Flask app factory, pyproject.toml, no requirements file)  master v1..v3 (== v3)
  flaskr (Flask's tutorial app, verbatim from Flask 3.1.3's sdist; BSD, LICENSE.txt)  master v1
  tern (Flask app factory on PostgreSQL, Alembic migrations)  master v1..v4 (== v4); branch drop-tags
      v4: migration 0002 adds post.tags (nullable: expand), /posts reads it
      drop-tags (on v4): migration 0003 drops post.tags (contract), /posts stops reading it

  v2               code only (`/` also reports the Python version)
  v3               new requirement `six`, imported by the app (dory: a second code change;
                   ketch: in pyproject.toml's dependencies)
  v4               Flight.destination + migration 0002 (/flights uses the new column)
  v5               static change (site.css)
  broken-import    imports a missing module: the app cannot load, `gunicorn --check-config` fails
  errors-20        every 5th request to `/` in each process answers 500; /healthz stays 200
  fails-on-others  `/` answers 500 unless the short hostname is web-0; /healthz stays 200
  expand-column    Flight.gate, nullable (migration 0003, an expand); /flights reads it
  drop-column      /flights stops reading gate, migration 0004 drops it (a contract, unmarked)
  drop-column-post the same, with `post_deploy = True` on the Migration

harbor is a JDK-only HTTP server (no Maven/Gradle): stage it with `sh build.sh`
(javac + jar into build/harbor.jar), run it with `java -jar build/harbor.jar`
from the release directory; env HOST (default 127.0.0.1) and PORT (default 8080).

  harbor v2        code only (`/` also reports the Java version)
  harbor v3        build.sh only (javac -Xlint:all), plus the VERSION bump: build inputs changed
  broken-build     Main.java imports a package that does not exist: `sh build.sh` fails
  fails-to-start   builds, but `java -jar build/harbor.jar` exits with status 1 at startup

Identity and dates are fixed and global/system git config is ignored, so
the shas are the same on every build.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

EXAMPLES = Path(__file__).resolve().parent
MASTER = "master"
IDENTITY = {"name": "deploytools samples", "email": "samples@deploytools.invalid"}
EPOCH = 1_700_000_000  # commit n is dated EPOCH + 60 * n
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "staticfiles", "REVISION", "*.sqlite3", "build")


def git_env(when: Optional[int] = None) -> dict[str, str]:
    """Environment for git: fixed identity, no global/system config, no prompts."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("GIT_")]:
        del env[key]  # e.g. GIT_DIR / GIT_INDEX_FILE from an enclosing git hook
    env.update(
        GIT_AUTHOR_NAME=IDENTITY["name"], GIT_AUTHOR_EMAIL=IDENTITY["email"],
        GIT_COMMITTER_NAME=IDENTITY["name"], GIT_COMMITTER_EMAIL=IDENTITY["email"],
        GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
    )
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    return env


def git(cwd: Path, *args: str, when: Optional[int] = None, input: Optional[bytes] = None) -> str:
    proc = subprocess.run(
        ["git", "-c", "init.defaultBranch=master", "-c", "commit.gpgsign=false", *args],
        cwd=cwd, env=git_env(when), input=input, capture_output=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}:\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace").strip()


# --- describing commits -------------------------------------------------------

class Sub:
    """Edit a file by replacing `old` (which must occur exactly once) with `new`."""

    def __init__(self, *pairs: tuple[str, str]):
        self.pairs = pairs

    def apply(self, path: Path) -> str:
        text = path.read_text()
        for old, new in self.pairs:
            if text.count(old) != 1:
                raise ValueError(f"{path}: expected exactly one {old!r}")
            text = text.replace(old, new)
        return text


Edit = Union[str, bytes, Sub, None]  # new content, an edit, or None to delete
PY_VERSION_LINE = r'^VERSION = "(.*)"$'


@dataclass
class Step:
    label: str
    message: str
    edits: Mapping[str, Edit] = field(default_factory=dict)
    base: Optional[str] = None  # a branch's parent label (default: the sample's `base`)


@dataclass
class Sample:
    name: str
    master: list[Step]  # first step is the tree in examples/NAME as it is
    branches: list[Step]  # each one commit on top of `base`
    base: str = "v2"
    version_file: str = ""  # relpath of the file holding VERSION; "" means NAME/version.py
    version_line: str = PY_VERSION_LINE  # regex (re.M) whose group 1 is the version

    @property
    def version_path(self) -> str:
        return self.version_file or f"{self.name}/version.py"


def add_python_key(module: str, pid: str, python: str) -> dict[str, Sub]:
    """The v2 code change: `/` also reports the Python version."""
    return {module: Sub(("import os\n", "import os\nimport platform\n"),
                        (pid, pid + f"        {python}platform.python_version(),\n"))}


def every_fifth_fails(module: str, index_head: str, failure: str) -> dict[str, Sub]:
    """The errors-20 edit: a per-process counter fails every 5th request to `/`."""
    return {module: Sub(
        ("import logging\n", "import itertools\nimport logging\n"),
        ("log = logging.getLogger", "_requests = itertools.count(1)  # per process\nlog = logging.getLogger"),
        (index_head, index_head
         + "    if next(_requests) % 5 == 0:  # errors-20: every 5th request fails\n"
         + '        log.error("simulated failure: every 5th request to / fails")\n'
         + f"        return {failure}\n"),
    )}


BROKEN = "import does_not_exist  # noqa: F401  broken-import: this release cannot start\n"
SIX = "import six  # noqa: F401  v3 needs a new requirement\n"

MIGRATION_0003 = '''\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("flights", "0002_flight_destination")]

    operations = [
        migrations.AddField(
            model_name="flight",
            name="gate",
            field=models.CharField(max_length=8, null=True),
        ),
    ]
'''


def drop_gate(post_deploy: bool) -> dict[str, Edit]:
    """Stop reading Flight.gate and drop its column (migration 0004): a contract, safe
    only once no old host reads the column, i.e. after the last wave."""
    mark = ("    # Drops a column the previous release reads: run it after the last wave.\n"
            "    post_deploy = True\n\n") if post_deploy else ""
    return {
        "flights/models.py": Sub(("    gate = models.CharField(max_length=8, null=True)\n", "")),
        "airship/views.py": Sub(('        "with_gate": Flight.objects.filter(gate__isnull=False).count(),\n', "")),
        "flights/migrations/0004_remove_flight_gate.py": f'''\
from django.db import migrations


class Migration(migrations.Migration):
{mark}    dependencies = [("flights", "0003_flight_gate")]

    operations = [
        migrations.RemoveField(model_name="flight", name="gate"),
    ]
''',
    }


AIRSHIP = Sample("airship", master=[
    Step("v1", "airship: Django project with the flights app, migration 0001 and static css"),
    Step("v2", "airship: report the Python version on /", add_python_key("airship/views.py", '"pid": os.getpid(),\n', '"python": ')),
    Step("v3", "airship: depend on six", {
        "requirements.txt": Sub(("psycopg[binary]>=3.1\n", "psycopg[binary]>=3.1\nsix>=1.16\n")),
        "airship/views.py": Sub(("from django.http import HttpResponse, JsonResponse\n",
                                 "from django.http import HttpResponse, JsonResponse\n" + SIX)),
    }),
    Step("v4", "airship: add Flight.destination (migration 0002)", {
        "flights/models.py": Sub(("    created =", "    destination = models.CharField(max_length=64, default=\"\")\n"
                                                "    created =")),
        "flights/migrations/0002_flight_destination.py": '''\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("flights", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="flight",
            name="destination",
            field=models.CharField(default="", max_length=64),
        ),
    ]
''',
        # Touch the new column, so /flights fails if the migration was not run.
        "airship/views.py": Sub(('return JsonResponse({"count": Flight.objects.count()})',
                                 'return JsonResponse({\n        "count": Flight.objects.count(),\n'
                                 '        "with_destination": Flight.objects.exclude(destination="").count(),\n'
                                 '    })')),
    }),
    Step("v5", "airship: new colours", {
        "flights/static/flights/site.css": Sub(("color: #123456;", "color: #654321; background: #fafafa;")),
    }),
], branches=[
    Step("broken-import", "airship: import a module that does not exist", {
        "airship/urls.py": Sub(("from django.views.static import serve\n",
                                "from django.views.static import serve\n" + BROKEN)),
    }),
    Step("errors-20", "airship: fail every 5th request to /", every_fifth_fails(
        "airship/views.py", "def index(request):\n",
        'HttpResponse("simulated failure", status=500, content_type="text/plain")')),
    Step("fails-on-others", "airship: fail / on every host but web-0", {"airship/views.py": Sub((
        "def index(request):\n",
        "def index(request):\n"
        '    if socket.gethostname().split(".")[0] != "web-0":  # fails-on-others\n'
        '        log.error("simulated failure: / only works on web-0")\n'
        '        return HttpResponse("only works on web-0", status=500, content_type="text/plain")\n'))}),
    # Issue 12: expand, then contract. /flights reads Flight.gate from expand-column on,
    # so an old host fails the moment the column is dropped under it.
    Step("expand-column", "airship: add a nullable Flight.gate (migration 0003, expand)", {
        "flights/models.py": Sub(("    created =", "    gate = models.CharField(max_length=8, null=True)\n"
                                                "    created =")),
        "flights/migrations/0003_flight_gate.py": MIGRATION_0003,
        "airship/views.py": Sub(('        "with_destination": Flight.objects.exclude(destination="").count(),\n',
                                 '        "with_destination": Flight.objects.exclude(destination="").count(),\n'
                                 '        "with_gate": Flight.objects.filter(gate__isnull=False).count(),\n')),
    }, base="v5"),
    Step("drop-column", "airship: drop Flight.gate (migration 0004, a contract, not marked)",
         drop_gate(post_deploy=False), base="expand-column"),
    Step("drop-column-post", "airship: drop Flight.gate (migration 0004, marked post_deploy)",
         drop_gate(post_deploy=True), base="expand-column"),
])

SKIFF = Sample("skiff", master=[
    Step("v1", "skiff: Flask app with /healthz, / and /version"),
    Step("v2", "skiff: report the Python version on /", add_python_key("skiff/app.py", "pid=os.getpid(),\n", "python=")),
    Step("v3", "skiff: depend on six", {
        "requirements.txt": Sub(("gunicorn>=21\n", "gunicorn>=21\nsix>=1.16\n")),
        "skiff/app.py": Sub(("from flask import Flask, jsonify\n", "import six  # noqa: F401  v3 needs a new requirement\n"
                                                                  "from flask import Flask, jsonify\n")),
    }),
], branches=[
    Step("broken-import", "skiff: import a module that does not exist", {
        "skiff/app.py": Sub(("from flask import Flask, jsonify\n", BROKEN + "from flask import Flask, jsonify\n")),
    }),
    Step("errors-20", "skiff: fail every 5th request to /", every_fifth_fails(
        "skiff/app.py", '@app.get("/")\ndef index():\n',
        '"simulated failure", 500, {"Content-Type": "text/plain"}')),
])

DORY = Sample("dory", master=[
    Step("v1", "dory: plain WSGI app with /healthz, / and /version"),
    Step("v2", "dory: report the Python version on /", add_python_key("dory/wsgi.py", '"pid": os.getpid(),\n', '"python": ')),
    Step("v3", "dory: say which host served each response", {"dory/wsgi.py": Sub((
        '[("Content-Type", ctype), ("Content-Length", str(len(data)))]',
        '[\n        ("Content-Type", ctype),\n        ("Content-Length", str(len(data))),\n'
        '        ("X-Served-By", socket.gethostname()),\n    ]'))}),
], branches=[
    Step("broken-import", "dory: import a module that does not exist", {
        "dory/wsgi.py": Sub(("from pathlib import Path\n", "from pathlib import Path\n\n" + BROKEN)),
    }),
    Step("errors-20", "dory: fail every 5th request to /", every_fifth_fails(
        "dory/wsgi.py", "def index():\n", '"500 Internal Server Error", "text/plain", "simulated failure"')),
])

HARBOR_MAIN = "src/harbor/Main.java"

HARBOR = Sample("harbor", version_file=HARBOR_MAIN,
                version_line=r'^    static final String VERSION = "(.*)";$', master=[
    Step("v1", "harbor: JDK-only Java HTTP server with /healthz, / and /version, built by build.sh"),
    Step("v2", "harbor: report the Java version on /", {HARBOR_MAIN: Sub((
        '                + ", \\"pid\\": " + ProcessHandle.current().pid()\n',
        '                + ", \\"pid\\": " + ProcessHandle.current().pid()\n'
        '                + ", \\"java\\": " + json(System.getProperty("java.version"))\n'))}),
    # Only the build changes (plus the VERSION bump): a deploy has to rebuild, not just restart.
    Step("v3", "harbor: compile with -Xlint:all so warnings show up in the staging log", {
        "build.sh": Sub((" --release 17 ", " -Xlint:all --release 17 ")),
    }),
], branches=[
    Step("errors-20", "harbor: fail every 5th request to /", {HARBOR_MAIN: Sub(
        ("import java.util.concurrent.Executors;\n",
         "import java.util.concurrent.Executors;\nimport java.util.concurrent.atomic.AtomicLong;\n"),
        ("    private Main() {\n",
         "    private static final AtomicLong REQUESTS = new AtomicLong(); // requests to /, per process\n\n"
         "    private Main() {\n"),
        ('            } else if (path.equals("/")) {\n',
         '            } else if (path.equals("/") && REQUESTS.incrementAndGet() % 5 == 0) {\n'
         "                // errors-20: every 5th request to / fails\n"
         '                log("simulated failure: every 5th request to / fails");\n'
         "                status = 500;\n"
         '                body = "simulated failure";\n'
         '            } else if (path.equals("/")) {\n'),
    )}),
    Step("broken-build", "harbor: import a package that does not exist, so the build fails", {HARBOR_MAIN: Sub((
        "import java.util.concurrent.Executors;\n",
        "import java.util.concurrent.Executors;\n"
        "import does.not.Exist; // broken-build: this release does not compile\n"))}),
    Step("fails-to-start", "harbor: exit with status 1 at startup", {HARBOR_MAIN: Sub(
        ('        int port = Integer.parseInt(env("PORT", "8080"));\n',
         '        int port = Integer.parseInt(env("PORT", "8080"));\n'
         "        startupCheck();\n"),
        ("    private static void handle(",
         "    /** fails-to-start: a startup check that never passes, so `java -jar` exits with status 1. */\n"
         "    private static void startupCheck() {\n"
         '        throw new IllegalStateException("fails-to-start: startup check failed, refusing to serve");\n'
         "    }\n\n"
         "    private static void handle("),
    )}),
])

KETCH = Sample("ketch", master=[
    Step("v1", "ketch: Flask app factory, dependencies in pyproject.toml, no requirements file"),
    Step("v2", "ketch: report the Python version on /", add_python_key(
        "ketch/__init__.py", "pid=os.getpid(),\n", "python=")),
    Step("v3", "ketch: depend on six", {
        "pyproject.toml": Sub(('    "Flask>=2.3",\n', '    "Flask>=2.3",\n    "six>=1.16",\n')),
        "ketch/__init__.py": Sub(("import click\n", "import click\n" + SIX)),
    }),
], branches=[])

# Flask's own tutorial app, exactly as Flask 3.1.3's sdist ships it (examples/tutorial,
# with its LICENSE.txt): the bar of issue 16 is that a project nobody here wrote deploys
# unmodified. One commit; nothing of ours (no VERSION) is added to it.
FLASKR = Sample("flaskr", master=[
    Step("v1", "flaskr: the Flask tutorial app, verbatim from the Flask 3.1.3 sdist"),
], branches=[])

TERN_0002 = '''"""posts get tags (a nullable column: the old code keeps working)

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("post", sa.Column("tags", sa.Text(), nullable=True))


def downgrade():
    op.drop_column("post", "tags")
'''
TERN_0003 = '''"""drop the tags column again

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.drop_column("post", "tags")


def downgrade():
    op.add_column("post", sa.Column("tags", sa.Text(), nullable=True))
'''
TERN_POSTS = ('''            rows = db.execute(sa.text("SELECT id, title FROM post ORDER BY id")).all()
        return jsonify(posts=[{"id": r.id, "title": r.title} for r in rows])''',
              '''            rows = db.execute(sa.text("SELECT id, title, tags FROM post ORDER BY id")).all()
        return jsonify(posts=[{"id": r.id, "title": r.title, "tags": r.tags} for r in rows])''')

# A Flask app factory on PostgreSQL whose schema Alembic migrates (migrate_command:
# alembic upgrade head, migrations_path: migrations/versions).
TERN = Sample("tern", base="v4", master=[
    Step("v1", "tern: Flask app factory on PostgreSQL, schema by Alembic (migration 0001)"),
    Step("v2", "tern: report the Python version on /", {"tern/__init__.py": Sub((
        "pid=os.getpid())", "pid=os.getpid(),\n                       python=platform.python_version())"),
        ("import socket\n", "import platform\nimport socket\n"))}),
    Step("v3", "tern: depend on six", {
        "requirements.txt": Sub(("Flask>=2.3\n", "Flask>=2.3\nsix>=1.16\n")),
        "tern/__init__.py": Sub(("import sqlalchemy as sa\n", "import sqlalchemy as sa\n" + SIX)),
    }),
    Step("v4", "tern: posts get tags (migration 0002 adds a nullable column)", {
        "migrations/versions/0002_post_tags.py": TERN_0002,
        "tern/__init__.py": Sub(TERN_POSTS),
    }),
], branches=[
    Step("drop-tags", "tern: drop the tags column (migration 0003) while v4 still reads it", {
        "migrations/versions/0003_drop_tags.py": TERN_0003,
        "tern/__init__.py": Sub((TERN_POSTS[1], TERN_POSTS[0])),
    }),
])

SAMPLES = {s.name: s for s in (AIRSHIP, SKIFF, DORY, HARBOR, KETCH, FLASKR, TERN)}


# --- the repositories ---------------------------------------------------------

def _write(work: Path, edits: Mapping[str, Edit]) -> None:
    for rel, edit in edits.items():
        path = work / rel
        if edit is None:
            path.unlink()
            continue
        content = edit.apply(path) if isinstance(edit, Sub) else edit
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@dataclass
class SampleRepo:
    """A built sample: bare `origin`, working clone `work`, and label -> full sha."""

    name: str
    origin: Path
    work: Path
    commits: dict[str, str]
    _clock: int = field(default=0, repr=False, compare=False)

    def resolve(self, label_or_sha: str) -> str:
        """Full sha of a label ("v3", "errors-20"), a sha (prefix) or any git revision."""
        rev = self.commits.get(label_or_sha, label_or_sha)
        try:
            return git(self.work, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except RuntimeError:
            raise ValueError(f"{self.name}: no label or commit {label_or_sha!r}") from None

    def push(self, label_or_sha: str, branch: str = MASTER) -> str:
        """Force origin's `branch` to that commit (the work clone is left alone). Returns the sha."""
        sha = self.resolve(label_or_sha)
        git(self.work, "push", "--quiet", "--force", "origin", f"{sha}:refs/heads/{branch}")
        return sha

    def commit(self, message: str, files: Mapping[str, Edit], branch: str = MASTER, *,
               base: Optional[str] = None, label: Optional[str] = None) -> str:
        """Commit `files` (relpath -> str/bytes content, Sub edit, or None to delete) on `branch`
        and force-push that branch to origin. Returns the new sha.

        The parent is `base` if given, else the work clone's `branch` if it exists,
        else the work clone's current HEAD. The work clone is left on `branch`.
        """
        if base is not None:
            start = self.resolve(base)
        elif git(self.work, "branch", "--list", branch):
            start = branch
        else:
            start = "HEAD"
        git(self.work, "checkout", "--quiet", "-B", branch, start)
        _write(self.work, files)
        git(self.work, "add", "--all")
        self._clock += 1
        git(self.work, "commit", "--quiet", "--allow-empty", "-m", message, when=EPOCH + 60 * self._clock)
        sha = git(self.work, "rev-parse", "HEAD")
        git(self.work, "push", "--quiet", "--force", "origin", f"{branch}:refs/heads/{branch}")
        if label:
            self.commits[label] = sha
        return sha

    def export(self, label_or_sha: str, dest: Path) -> Path:
        """Write the tree of that commit (no .git) to `dest`, which must not exist yet."""
        sha = self.resolve(label_or_sha)
        data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=self.work, env=git_env(),
                              capture_output=True, check=True).stdout
        dest = Path(dest)
        dest.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        return dest

    def to_json(self) -> dict:
        return {"name": self.name, "origin": str(self.origin), "work": str(self.work), "commits": self.commits}


def build_one(sample: Sample, dest: Path) -> SampleRepo:
    origin = dest / "origin" / f"{sample.name}.git"
    work = dest / "work" / sample.name
    for path in (origin, work):
        if path.exists():
            raise FileExistsError(f"{path} already exists; build into an empty directory")
    origin.parent.mkdir(parents=True, exist_ok=True)
    git(origin.parent, "init", "--quiet", "--bare", origin.name)
    shutil.copytree(EXAMPLES / sample.name, work, ignore=COPY_IGNORE)
    git(work, "init", "--quiet")
    git(work, "remote", "add", "origin", str(origin))

    repo = SampleRepo(sample.name, origin, work, {})

    def commit(step: Step, version: Optional[str]) -> None:
        _write(work, step.edits)
        if version is not None:  # after the edits: a step may edit the file that holds VERSION
            path = sample.version_path
            _write(work, {path: _set_version(work / path, version, sample.version_line)})
        git(work, "add", "--all")
        repo._clock += 1
        git(work, "commit", "--quiet", "-m", step.message, when=EPOCH + 60 * repo._clock)
        repo.commits[step.label] = git(work, "rev-parse", "HEAD")

    for n, step in enumerate(sample.master, start=1):
        commit(step, str(n) if n > 1 else None)  # examples/NAME already says VERSION = "1"
        git(work, "tag", step.label)
    for step in sample.branches:
        git(work, "checkout", "--quiet", "-b", step.label, repo.commits[step.base or sample.base])
        commit(step, None)
    git(work, "checkout", "--quiet", MASTER)
    git(work, "push", "--quiet", "--set-upstream", "origin", "--all")
    git(work, "push", "--quiet", "origin", "--tags")
    return repo


def _set_version(path: Path, version: str, line: str = PY_VERSION_LINE) -> str:
    """The text of `path` with group 1 of its one `line` match replaced by `version`."""
    text = path.read_text()
    matches = list(re.finditer(line, text, flags=re.M))
    if len(matches) != 1:
        raise ValueError(f"{path}: expected exactly one VERSION line matching {line!r}")
    match = matches[0]
    return text[:match.start(1)] + version + text[match.end(1):]


def build(dest: Path, names: Optional[list[str]] = None) -> dict[str, SampleRepo]:
    """Build every sample (or just `names`) under `dest`; returns name -> SampleRepo."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    return {name: build_one(SAMPLES[name], dest) for name in (names or list(SAMPLES))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to build origin/ and work/ in")
    parser.add_argument("--json", action="store_true", help="print name -> {origin, work, commits} as JSON")
    parser.add_argument("--only", nargs="+", choices=sorted(SAMPLES), help="build only these samples")
    args = parser.parse_args(argv)
    repos = build(args.dest, args.only)
    if args.json:
        print(json.dumps({name: repo.to_json() for name, repo in repos.items()}, indent=2))
    else:
        for repo in repos.values():
            print(f"{repo.name}: origin {repo.origin}  work {repo.work}")
            for label, sha in repo.commits.items():
                print(f"  {label:<16} {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
