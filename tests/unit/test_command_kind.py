"""Kind command pieces that need no fleet: the gate reads a program's own access
lines, and staging's build step (run, or reuse the live build) in a real bash."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from deploytools import releases
from deploytools.health import count_window, parse_access_line

UTC = timezone.utc


@pytest.mark.parametrize("line, status, path, when", [
    ('2026-11-26T10:06:52.123Z 127.0.0.1 "GET / HTTP/1.1" 500 17', 500, "/",
     datetime(2026, 11, 26, 10, 6, 52, 123000, UTC)),
    ('2026-11-26T10:06:52Z 10.0.0.5 "GET /healthz?x=1 HTTP/1.1" 200 2 0.004', 200, "/healthz",
     datetime(2026, 11, 26, 10, 6, 52, tzinfo=UTC)),
    ('2026-11-26T12:06:52.5+02:00 ::1 "POST /a HTTP/1.1" 201 -', 201, "/a",
     datetime(2026, 11, 26, 10, 6, 52, 500000, UTC)),
])
def test_iso_access_lines_parse(line, status, path, when):
    rec = parse_access_line(line)
    assert (rec.status, rec.path, rec.time) == (status, path, when)


@pytest.mark.parametrize("line", [
    "2026-11-26T10:06:52.123Z harbor 2: listening on 127.0.0.11:8300 (pid 42)",
    '2026-11-26T10:06:52.123 127.0.0.1 "GET / HTTP/1.1" 200 17',  # no zone: ambiguous
    '2026-13-26T10:06:52Z 127.0.0.1 "GET / HTTP/1.1" 200 17',  # month 13
    'Exception in thread "main" java.lang.IllegalStateException: fails-to-start',
])
def test_other_program_output_is_not_an_access_line(line):
    assert parse_access_line(line) is None


def test_a_program_log_counts_only_its_access_lines():
    log = """\
2026-11-26T10:00:00.100Z harbor 3: listening on 127.0.0.11:8300 (pid 7)
2026-11-26T10:00:01.000Z 127.0.0.1 "GET / HTTP/1.1" 200 120
2026-11-26T10:00:01.500Z 127.0.0.1 "GET / HTTP/1.1" 500 17
2026-11-26T10:00:01.600Z 127.0.0.1 "GET /healthz HTTP/1.1" 200 2
2026-11-26T10:00:02.000Z 127.0.0.1 "GET / HTTP/1.1" 500 17
""".splitlines()
    counts = count_window(log, datetime(2026, 11, 26, 10, 0, 1, tzinfo=UTC),
                          datetime(2026, 11, 26, 10, 0, 2, tzinfo=UTC),
                          exclude_paths=("/healthz",))
    assert (counts.errors, counts.requests) == (1, 2)


# --- the build step, run by bash on a scratch layout -------------------------------------

def harbor(**kw):
    base = dict(build="mkdir -p build && echo built-$MARK > build/out && echo compiling >&2",
                build_outputs=("build/",))
    return SimpleNamespace(**{**base, **kw})


def layout(tmp_path, live_build="mkdir -p build && echo built-$MARK > build/out && "
                                "echo compiling >&2", env="MARK=one\n"):
    """<dir>/current -> releases/old (built, with its build command recorded) and a new
    release releases/new with the same env."""
    d = tmp_path / "svc"
    for rel in ("old", "new"):
        (d / "releases" / rel / ".deploy").mkdir(parents=True)
        (d / "releases" / rel / ".deploy" / "env").write_text(env)
    old = d / "releases" / "old"
    (old / "build").mkdir()
    (old / "build" / "out").write_text("built-live\n")
    (old / ".deploy" / "build").write_text(live_build + "\n")
    os.symlink("releases/old", d / "current")
    return d


def stage_build(d, service, *, reuse):
    script = f'set -euo pipefail\nR={d}/releases/new\n' + releases.build_script(
        service, str(d), str(d / "releases" / "new"), reuse=reuse)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_reuse_hard_links_the_live_outputs(tmp_path):
    d = layout(tmp_path)
    r = stage_build(d, harbor(), reuse=True)
    assert r.returncode == 0 and "@@build reused" in r.stdout, r.stderr
    new, old = d / "releases/new/build/out", d / "releases/old/build/out"
    assert new.read_text() == "built-live\n"
    assert os.stat(new).st_ino == os.stat(old).st_ino  # a link, not a copy
    assert (d / "releases/new/.deploy/build").read_text().strip() == harbor().build


@pytest.mark.parametrize("change", ["command", "env", "missing-output", "nothing-live"])
def test_reuse_falls_back_to_building(tmp_path, change):
    d = layout(tmp_path, live_build="make" if change == "command" else harbor().build)
    if change == "env":
        (d / "releases/new/.deploy/env").write_text("MARK=two\n")
    if change == "missing-output":
        (d / "releases/old/build/out").unlink()
        (d / "releases/old/build").rmdir()
    if change == "nothing-live":
        (d / "current").unlink()
    r = stage_build(d, harbor(), reuse=True)
    assert r.returncode == 0 and "@@build ran" in r.stdout, r.stderr
    mark = "two" if change == "env" else "one"
    assert (d / "releases/new/build/out").read_text() == f"built-{mark}\n"  # with .deploy/env
    assert "compiling" in r.stderr  # the build's output goes to stderr (the staging log)


def test_run_mode_always_builds(tmp_path):
    d = layout(tmp_path)
    r = stage_build(d, harbor(), reuse=False)
    assert "@@build ran" in r.stdout and "reused" not in r.stdout
    assert (d / "releases/new/build/out").read_text() == "built-one\n"


def test_a_failed_build_fails_the_step_with_its_output(tmp_path):
    d = layout(tmp_path)
    r = stage_build(d, harbor(build="echo 'Main.java:3: error: cannot find symbol' >&2; exit 2"),
                    reuse=False)
    assert r.returncode == 1
    assert "Main.java:3: error: cannot find symbol" in r.stderr
    assert "the build failed: echo" in r.stderr
    assert "@@build" not in r.stdout


# --- what the launcher runs -------------------------------------------------------------

def test_launcher_execs_the_command_with_host_and_port(tmp_path):
    from deploytools import render
    from deploytools.config import parse
    cfg = parse("hosts:\n  web-0: {address: 10.0.0.10}\nservices:\n"
                "  harbor: {kind: command, repo: /r.git, hosts: [web-0], port: 8300,\n"
                "           command: 'java -jar build/harbor.jar', env: {JAVA_OPTS: -Xmx64m}}\n"
                "  open: {kind: command, repo: /r.git, hosts: [web-0], port: 8301,\n"
                "         command: ./serve, bind: '0.0.0.0:8301'}\n", "s.yaml", str(tmp_path))
    host = cfg.hosts["web-0"]
    files = {f.path: f for f in render.release_files(cfg.service("harbor"), host, "/srv/harbor",
                                                     "R1", "c" * 40)}
    assert ".deploy/gunicorn.conf.py" not in files
    env = files[".deploy/env"].content
    assert "HOST=10.0.0.10" in env and "PORT=8300" in env and "JAVA_OPTS=-Xmx64m" in env
    start = files[".deploy/start"].content
    assert "cd /srv/harbor/current || exit 1\n" in start
    assert start.rstrip().endswith("exec java -jar build/harbor.jar")
    # the launcher really runs: env file sourced, in current, the command exec'd
    d = tmp_path / "srv"
    rel = d / "releases" / "R1"
    (rel / ".deploy").mkdir(parents=True)
    (rel / ".deploy" / "env").write_text(env)
    os.symlink("releases/R1", d / "current")
    script = start.replace("/srv/harbor", str(d)).replace(
        "exec java -jar build/harbor.jar", 'exec sh -c \'echo "$HOST:$PORT $JAVA_OPTS $(pwd -P)"\'')
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert out.stdout.strip() == f"10.0.0.10:8300 -Xmx64m {rel}", out.stderr
    # with `bind`, HOST is its address
    env_open = render.service_env(cfg.service("open"), host, "/srv/open", "R1", "c" * 40)
    assert (env_open["HOST"], env_open["PORT"]) == ("0.0.0.0", "8301")
