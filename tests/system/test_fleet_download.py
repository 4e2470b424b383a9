"""Issue 13 on the real fleet: a new virtualenv's requirements are downloaded once per
deploy and handed to the other hosts, not fetched from the index by every host
(venv.Handover; docs/design.md, "One download per fleet").

The index is an HTTP server on loopback serving the test wheelhouse, whose log counts
the requests for each file: a deploy asks for a requirement as often as one `pip
download` does, not once per host. `--no-cache-dir` keeps pip's per-user cache (which the test hosts share,
as real hosts do not) out of the count. skiff from its own origin on port 8051.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import build_repos
from build_repos import Sub
from sysenv import ServiceEnv

pytestmark = pytest.mark.system

SVC, PORT = "oneget", 8051  # no other test uses it
HOSTS = ["web-0", "web-1", "web-2", "web-3"]


class Index:
    """`python -m http.server` over a directory of wheels: pip's --find-links URL."""

    def __init__(self, directory: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", str(directory)],
            stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(self.url, timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def requests(self, prefix: str) -> int:
        """How many requests asked for a file whose name starts with `prefix`."""
        pattern = re.compile(r'"(GET|HEAD) /' + re.escape(prefix) + r'[^ "]*\.(whl|tar\.gz) ')
        return sum(1 for line in self.log.read_text().splitlines() if pattern.search(line))

    def one_download(self, env, prefix: str, requirement: str) -> int:
        """The requests of one `pip download` of `requirement` by a host's own pip (pip
        asks more than once for a file: its size, the metadata, the file)."""
        before = self.requests(prefix)
        pip = f"/srv/{SVC}/tools/bin/pip"
        r = env.env.fleet.ssh("web-1", f"d=$(mktemp -d) && {pip} download -q --no-cache-dir "
                                       f"--no-index --find-links {self.url} -d $d "
                                       f"'{requirement}' && rm -rf $d", timeout=120)
        assert r.returncode == 0, r.stderr
        return self.requests(prefix) - before

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class OneGet(ServiceEnv):
    SERVICE, PORT = SVC, PORT

    def __init__(self, env, sample, dir: Path, index: Index):
        super().__init__(env, sample, dir, {
            "kind": "flask", "repo": str(sample.origin), "role": "web",
            "app": "skiff.app:app", "port": PORT, "workers": 1, "graceful_timeout": 3,
            "pip_args": f"--no-index --find-links {index.url} --no-cache-dir",
            "production_branch": "oneget-production", "tag_prefix": "oneget-",
            "gate": {"warmup": 0, "bake": 0.2, "max_extensions": 0,
                     "on_inconclusive": "proceed"}})

    def has_six(self, host: str) -> bool:
        py = f"/srv/{SVC}/current/.deploy/venv/bin/python"  # a link that resolves on the host
        return self.env.fleet.ssh(host, f"{py} -c 'import six'", timeout=60).returncode == 0


@pytest.fixture(scope="module")
def oneget(deployenv, wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("oneget")
    index = Index(wheelhouse, tmp / "index.log")
    sample = build_repos.build(tmp / "samples", names=["skiff"])["skiff"]
    env = OneGet(deployenv, sample, tmp, index)
    yield env, index
    env.stop_everywhere()
    index.stop()


def test_the_first_virtualenv_is_downloaded_once_for_the_fleet(oneget):
    env, index = oneget
    env.fab(f"deploy:{SVC},ref=v1")
    assert env.revisions() == {h: env.sha("v1") for h in HOSTS}
    # Flask is in the release's requirements: asked for as often as by one pip, not by
    # every host. (supervisor goes into each host's tools/, by each host.)
    deployed = index.requests("flask-")
    assert deployed > 0 and deployed == index.one_download(env, "flask-", "flask>=2.3")
    steps = {h: env.history(h)[-1]["steps"] for h in HOSTS}
    assert "venv_from_fleet_download" not in steps["web-0"], steps  # it downloaded
    assert all("venv_from_fleet_download" in steps[h] for h in HOSTS[1:]), steps


def test_a_new_requirement_is_downloaded_once_and_handed_to_every_host(oneget):
    env, index = oneget
    assert index.requests("six-") == 0
    r = env.fab(f"deploy:{SVC},ref=v3")
    deployed = index.requests("six-")
    assert deployed > 0 and deployed == index.one_download(env, "six-", "six>=1.16")
    assert "requirements downloaded once on web-0" in r.stdout, r.stdout
    assert env.revisions() == {h: env.sha("v3") for h in HOSTS}
    assert all(env.has_six(h) for h in HOSTS)
    for h in HOSTS[1:]:
        rec = env.history(h)[-1]
        assert rec["outcome"] == "success" and "venv_from_fleet_download" in rec["steps"], rec
    # What was handed over is gone once the deploy is done (the prune empties wheels/).
    assert all(list((env.srv(h) / "wheels").iterdir()) == [] for h in HOSTS)


def test_when_the_first_host_cannot_download_the_others_install_from_the_index(oneget):
    env, index = oneget
    # web-0 (the first to stage) has no pip to download with: it says so at once, and
    # nobody waits for a download that will not come.
    pip = env.srv("web-0") / "tools" / "bin" / "pip"
    pip.rename(pip.with_name("pip.off"))
    try:
        sha = env.sample.commit("skiff: a comment in the requirements", {
            "requirements.txt": Sub(("gunicorn>=21\n", "# pinned by the platform team\n"
                                                       "gunicorn>=21\n"))}, base="v3")
        t0 = time.monotonic()
        r = env.fab(f"deploy:{SVC},ref={sha}", timeout=240)
        assert time.monotonic() - t0 < 120, r.stdout  # no host sat out its 600 s wait
    finally:
        pip.with_name("pip.off").rename(pip)
    assert "downloaded once" not in r.stdout, r.stdout
    assert env.revisions() == {h: sha for h in HOSTS}
    for h in HOSTS:
        rec = env.history(h)[-1]
        assert "venv_built" in rec["steps"] and "venv_from_fleet_download" not in rec["steps"]
