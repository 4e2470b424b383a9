"""The rendered gunicorn.conf.py, run by a real gunicorn on loopback (no fleet).

Its worker_exit hook ends a worker with os._exit once the app's atexit functions
have run, skipping Python's teardown; these tests check what an app can see of that:
its atexit functions, its exit status, and a thread it left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploytools import render
from deploytools.config import parse

CONFIG = """\
hosts:
  web-0: {address: 127.0.0.1}
services:
  app:
    repo: /dev/null
    hosts: [web-0]
    kind: wsgi
    app: probe_app:app
    workers: 1
    socket: bind
    port: %d
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def serve(tmp_path):
    """serve(app_source) -> (gunicorn process, its directory): gunicorn with the
    rendered config, serving probe_app.py written from app_source."""
    procs = []

    def start(app_source: str):
        port = free_port()
        cfg = parse(CONFIG % port)
        files = {f.path: f.content for f in render.release_files(
            cfg.service("app"), cfg.hosts["web-0"], str(tmp_path), "r1", "abc")}
        (tmp_path / "log").mkdir()
        (tmp_path / "gunicorn.conf.py").write_text(files[".deploy/gunicorn.conf.py"])
        (tmp_path / "probe_app.py").write_text(textwrap.dedent(app_source))
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"),
             "--chdir", str(tmp_path), "probe_app:app"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PROBE_DIR": str(tmp_path)})
        procs.append(proc)
        return proc, tmp_path

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def workers(d: Path) -> list[int]:
    return sorted(int(p.name) for p in (d / "run" / "workers").glob("*")) \
        if (d / "run" / "workers").is_dir() else []


APP = """\
import atexit, os, threading, time
DIR = os.environ["PROBE_DIR"]

def wrote(name):
    with open(os.path.join(DIR, name + "." + str(os.getpid())), "w") as f:
        f.write("done")

atexit.register(wrote, "atexit")

class Teardown:
    def __init__(self):
        self.path, self.open = os.path.join(DIR, "teardown." + str(os.getpid())), open

    def __del__(self):
        with self.open(self.path, "w") as f:
            f.write("done")

kept = Teardown()  # Python's teardown of this module finalizes it (with what it holds)

def app(environ, start_response):
    if environ["PATH_INFO"] == "/thread":
        def later():
            time.sleep(0.5)
            wrote("thread")
        threading.Thread(target=later).start()
    if environ["PATH_INFO"] == "/exit":
        os._exit(7)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def get(d: Path, path: str) -> None:
    import urllib.request
    conf = (d / "gunicorn.conf.py").read_text()
    bind = conf.split('bind = "', 1)[1].split('"', 1)[0]
    try:
        urllib.request.urlopen(f"http://{bind}{path}", timeout=5).read()
    except OSError:
        pass


def test_a_worker_ends_after_its_atexit_functions_with_status_0(serve):
    proc, d = serve(APP)
    old = wait_for(lambda: workers(d), what="a worker's readiness marker")[0]
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: workers(d) and workers(d)[0] != old, what="the new worker")
    wait_for(lambda: (d / f"atexit.{old}").exists(), what="the old worker's atexit function")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log = (d / "log" / "error.log").read_text()
    assert f"Worker exiting (pid: {old})" in log
    assert "exited with code" not in log  # gunicorn logs a worker's non-zero status
    assert old not in workers(d)
    # the teardown was skipped (Python's own exit finalizes the module's object)
    assert not (d / f"teardown.{old}").exists()


def test_a_worker_with_a_running_thread_exits_as_python_does(serve):
    proc, d = serve(APP)
    old = wait_for(lambda: workers(d), what="a worker's readiness marker")[0]
    get(d, "/thread")
    proc.send_signal(signal.SIGHUP)
    # Python's exit waits for the non-daemon thread, and only then runs atexit.
    wait_for(lambda: (d / f"atexit.{old}").exists(), what="the old worker's atexit function")
    assert (d / f"thread.{old}").read_text() == "done"
    wait_for(lambda: (d / f"teardown.{old}").exists(), what="Python's own teardown")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_a_worker_that_fails_to_boot_keeps_its_status(serve):
    proc, d = serve("raise ImportError('broken release')\n")
    # gunicorn halts when a worker exits with WORKER_BOOT_ERROR (3) or APP_LOAD_ERROR (4)
    assert proc.wait(timeout=30) in (3, 4)
    assert "broken release" in (d / "log" / "error.log").read_text()


# --- staging's check: templates/remote/check_config.py --------------------------------


def check(tmp_path: Path, app_source: str) -> subprocess.CompletedProcess:
    (tmp_path / "probe_app.py").write_text(textwrap.dedent(app_source))
    (tmp_path / "gunicorn.conf.py").write_text("workers = 1\n")
    return subprocess.run(
        [sys.executable, "-c", render.check_config_program(), "--check-config",
         "-c", str(tmp_path / "gunicorn.conf.py"), "--chdir", str(tmp_path), "probe_app:app"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PROBE_DIR": str(tmp_path)})


def test_the_check_passes_an_app_that_imports_and_ends_at_once(tmp_path):
    started = time.monotonic()
    r = check(tmp_path, APP + "import threading, time\n"
              "threading.Thread(target=time.sleep, args=(30,)).start()\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert time.monotonic() - started < 20  # not held up by the app's thread
    assert not list(tmp_path.glob("atexit.*"))  # nor its atexit functions: a check


def test_the_check_fails_as_gunicorn_does_naming_the_error(tmp_path):
    r = check(tmp_path, "import no_such_module_here\n")
    assert r.returncode == 1
    assert "Error while loading the application" in r.stderr
    assert "No module named 'no_such_module_here'" in r.stderr
    r = check(tmp_path, "application = None\n")  # no `app` in it
    assert r.returncode == 1 and "Failed to find attribute 'app' in 'probe_app'" in r.stderr
