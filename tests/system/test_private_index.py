"""pip_env: a private index whose token is a secret reaches pip and uv on the hosts, and
nothing else sees it.

A real index (PEP 503 pages over the test wheelhouse) answers only requests that carry
its token as HTTP basic credentials, and records each one. A service deploys from it
with `pip_args` empty and `PIP_INDEX_URL` / `UV_INDEX_URL` taken `from_env`: the
tools/ venv (pip, supervisor, uv) and the release's venv install through it, while
test_secrets' scanner reads every process's command line every ~10 ms. The token is in
no command line, no output, no history and no file on the hosts, nor in the app's
environment. A rotated token reuses the virtualenv. A wrong token fails the staging
with the installer's own error, its value shown as `<secret>`, and leaves the live
release serving.
"""
from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import os
import re
import threading
import uuid
from pathlib import Path

import pytest
import requests
import yaml

import build_repos
from test_secrets import Scanner, files_holding

pytestmark = pytest.mark.system

SVC = "depot"
PORT = 8025
HOSTS = ["web-0", "web-1"]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Index(http.server.ThreadingHTTPServer):
    """A simple repository API (PEP 503) over `wheels`, behind basic auth with the user
    `__token__` and the password `token` (changeable)."""

    daemon_threads = True

    def __init__(self, wheels: Path, token: str):
        self.wheels, self.token = wheels, token
        self.requests: list[tuple[str, bool]] = []  # (path, authorized)
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, token: str) -> str:
        return f"http://__token__:{token}@127.0.0.1:{self.server_address[1]}/simple/"

    def projects(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for path in sorted(self.wheels.glob("*.whl")):
            found.setdefault(_normalized(path.name.split("-")[0]), []).append(path.name)
        return found


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Index

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"__token__:{self.server.token}".encode()).decode()
        ok = self.headers.get("Authorization") == expected
        self.server.requests.append((self.path, ok))
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="depot"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        projects = self.server.projects()
        body, kind = None, "text/html"
        if parts == ["simple"]:
            body = "".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in projects)
        elif len(parts) == 2 and parts[0] == "simple" and _normalized(parts[1]) in projects:
            body = "".join(f'<a href="/files/{f}">{f}</a>\n'
                           for f in projects[_normalized(parts[1])])
        elif len(parts) == 2 and parts[0] == "files" and (self.server.wheels / parts[1]).is_file():
            body, kind = (self.server.wheels / parts[1]).read_bytes(), "application/octet-stream"
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = body.encode() if isinstance(body, str) else body
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclasses.dataclass
class Depot:
    env: object
    index: Index


@pytest.fixture(scope="module")
def depot(deployenv, wheelhouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("depot")
    samples = build_repos.build(tmp / "samples", names=["skiff"])
    index = Index(Path(wheelhouse), "first-" + uuid.uuid4().hex)
    data = yaml.safe_load(deployenv.config.read_text())
    data["services"] = {SVC: {
        "kind": "flask", "repo": str(samples["skiff"].origin), "hosts": HOSTS,
        "app": "skiff.app:app", "port": PORT, "graceful_timeout": 5,
        "pip_args": "",  # not the fleet's --no-index: the private index
        # This machine's pip.conf adds indexes of its own: only this one, here.
        "pip_env": {"PIP_INDEX_URL": {"from_env": "DEPOT_INDEX"},
                    "UV_INDEX_URL": {"from_env": "DEPOT_INDEX"},
                    "PIP_CONFIG_FILE": os.devnull}}}
    config = tmp / "services.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        yield Depot(dataclasses.replace(deployenv, config=config, samples=samples), index)
    finally:
        index.shutdown()


def test_the_index_refuses_a_request_without_its_token(depot):
    base = f"http://127.0.0.1:{depot.index.server_address[1]}/simple/flask/"
    assert requests.get(base, timeout=5).status_code == 401
    assert requests.get(base, auth=("__token__", "wrong"), timeout=5).status_code == 401
    ok = requests.get(base, auth=("__token__", depot.index.token), timeout=5)
    assert ok.status_code == 200 and "flask-" in ok.text


def test_a_private_index_token_reaches_only_the_installers(depot):
    env, index = depot.env, depot.index
    first, second = index.token, "second-" + uuid.uuid4().hex
    outputs = []
    with Scanner(first.encode(), second.encode()) as scan:
        proc = env.fab("setup:depot", "--json", env={"DEPOT_INDEX": index.url(first)})
        outputs.append(proc.stdout + proc.stderr)
        index.requests.clear()
        proc = env.fab("deploy:depot,ref=v1", "--json", env={"DEPOT_INDEX": index.url(first)})
        outputs.append(proc.stdout + proc.stderr)
        v1_requests = list(index.requests)
        plan = env.fab("plan:depot,ref=v2", env={"DEPOT_INDEX": index.url(first)}).stdout
        outputs.append(plan)
        assert ("  pip_env: PIP_INDEX_URL=<secret> (from_env DEPOT_INDEX) UV_INDEX_URL=<secret> "
                f"(from_env DEPOT_INDEX) PIP_CONFIG_FILE={os.devnull}") in plan, plan
        # The token rotated: same requirements, the same virtualenv.
        index.token = second
        proc = env.fab("deploy:depot,ref=v2", "--json", env={"DEPOT_INDEX": index.url(second)})
        outputs.append(proc.stdout + proc.stderr)
    assert scan.scans > 100
    assert scan.sightings == [], [(pid, cmd[:200]) for pid, cmd in scan.sightings]

    # Installed through the index, with the token, by the installers on the hosts.
    paths = {p for p, ok in v1_requests if ok}
    assert any(p.startswith("/simple/flask/") for p in paths), v1_requests
    # (a wheel already in the hosts' uv or pip cache is not downloaded again)
    assert any(p.startswith("/files/") for p in paths), v1_requests
    for h in HOSTS:
        assert (env.served(h, PORT) or {}).get("revision") == env.samples["skiff"].resolve("v2")
        steps = env.history(h, SVC)[-1]["steps"]
        assert "venv_reused" in steps, steps
        assert (env.srv(h, SVC) / "tools" / "bin" / "uv").exists()  # uv came from the index too

    # In no output, history or host file, and not in the app's environment.
    assert not [o for o in outputs for t in (first, second) if t in o]
    for h in HOSTS:
        srv = env.srv(h, SVC)
        assert files_holding(srv, [first, second]) == []
        assert "PIP_INDEX_URL" not in (srv / "current" / ".deploy" / "env").read_text()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"DEPLOYTOOLS_SERVICE={SVC}".encode() in environ:
            assert b"PIP_INDEX_URL" not in environ and b"UV_INDEX_URL" not in environ


def test_a_wrong_token_fails_the_staging_and_is_shown_as_secret(depot):
    env, index = depot.env, depot.index
    wrong = "wrong-" + uuid.uuid4().hex
    live = {h: env.current(h, SVC) for h in HOSTS}
    # A new requirement, so that the virtualenv must be built from the index.
    proc = env.fab("deploy:depot,ref=v3", "--json", env={"DEPOT_INDEX": index.url(wrong)},
                   check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert wrong not in out
    # The installers' own words: the index refused the credentials (they print the
    # index's URL without them).
    assert "401" in proc.stderr and "installing the dependencies" in proc.stderr, proc.stderr
    assert "staging" in proc.stderr and "no host was switched" in proc.stderr, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events, proc.stdout
    for h in HOSTS:
        assert env.current(h, SVC) == live[h]
        assert (env.served(h, PORT) or {}).get("revision") == env.samples["skiff"].resolve("v2")
        assert env.history(h, SVC)[-1]["outcome"] == "failed"
        assert wrong not in (env.srv(h, SVC) / "history.jsonl").read_text()
        assert files_holding(env.srv(h, SVC), [wrong]) == []
