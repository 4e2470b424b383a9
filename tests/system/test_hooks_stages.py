"""Issue 11, items 1 and 2, on the real fleet: every hook point, and stages.

One module-scoped service `hooked` (skiff, Flask) with its own origin. Production
is web-0 and web-1 (two waves: canary, rest); the `staging` stage puts it on web-2.
Its hooks: a controller hook at every point that logs the facts it was given, a
chat webhook (a tiny HTTP server here) on after_deploy and on_failure, a cache
warm on each host before it is switched (before_wave, in the new release, with
its virtualenv), a smoke test of the canary as a Python callable registered from
a fabfile, and a before_stage host hook that hangs when told to.

Five commands, in order: staging deploy of v1; production deploy of v2 refused
(staging never had it); production deploy of v1; a hung before_stage hook;
staging v2, then production v2 whose smoke test fails after the canary.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import build_repos

pytestmark = pytest.mark.system

SVC, PORT = "hooked", 8740
PROD, STAGING = ["web-0", "web-1"], ["web-2"]
ALL = PROD + STAGING

LOG_FACTS = ('echo "$DEPLOYTOOLS_HOOK stage=$DEPLOYTOOLS_STAGE wave=${DEPLOYTOOLS_WAVE:-} '
             'hosts=$DEPLOYTOOLS_HOSTS outcome=${DEPLOYTOOLS_OUTCOME:-} '
             'commit=${DEPLOYTOOLS_COMMIT:-}" >> "$HOOK_LOG"')
NOTIFY = """\
import json, os, urllib.request
facts = {k: v for k, v in os.environ.items() if k.startswith("DEPLOYTOOLS_")}
req = urllib.request.Request(os.environ["CHAT_URL"], data=json.dumps(facts).encode(),
                             headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
print("notified", facts["DEPLOYTOOLS_HOOK"], facts.get("DEPLOYTOOLS_OUTCOME"))
"""
WARM = ("python -c \"import flask, os; c = '../../current'; open('warmed', 'w').write("
        "'wave=%s live=%s' % (os.environ['DEPLOYTOOLS_WAVE'], os.path.basename(os.readlink(c)) "
        "if os.path.islink(c) else 'none'))\" && echo warmed")
FABFILE = """\
import json, os, urllib.request
from deploytools.hooks import hook

ADDRESSES = {addresses!r}


@hook("after_wave", service="hooked", waves=[1], timeout=30)
def smoke(ctx):
    key = os.environ.get("SMOKE_KEY", "revision")
    for h in ctx.hosts:
        body = json.load(urllib.request.urlopen(f"http://{{ADDRESSES[h]}}:{port}/", timeout=5))
        if body.get("revision") != ctx.commit:
            raise RuntimeError(f"{{h}} serves {{body.get('revision')}}, not {{ctx.commit}}")
        if key not in body:
            raise RuntimeError(f"canary {{h}} does not report {{key!r}}")
        ctx.say(f"{{h}} serves {{ctx.commit[:7]}} and reports {{key}}")
"""


class Chat:
    """A chat webhook: records every JSON body POSTed to it."""

    def __init__(self):
        self.messages: list[dict] = []
        chat = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                chat.messages.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/chat"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Hooked:
    def __init__(self, deployenv, tmp: Path, chat: Chat):
        self.env, self.dir, self.chat = deployenv, tmp, chat
        self.sample = build_repos.build(tmp / "samples", names=["skiff"])["skiff"]
        self.log = tmp / "hooks.log"
        (tmp / "notify.py").write_text(NOTIFY)
        fleet = deployenv.fleet
        addresses = {h: fleet.host(h).address for h in ALL}
        (tmp / "fabfile.py").write_text(FABFILE.format(addresses=addresses, port=PORT))
        data = yaml.safe_load(deployenv.config.read_text())
        every = {p: [{"run": LOG_FACTS}] for p in (
            "before_stage", "after_stage", "before_wave", "after_wave", "after_deploy",
            "after_rollback", "on_failure")}
        every["before_stage"].append({"run": "[ ! -e ../../hang ] || sleep 613",
                                      "where": "hosts", "timeout": 2})
        every["before_wave"].append({"run": WARM, "where": "hosts"})
        for point in ("after_deploy", "on_failure"):
            every[point].append({"run": 'python3 notify.py'})
        data["roles"]["hooked"] = PROD
        data["services"] = {SVC: {
            "kind": "flask", "repo": str(self.sample.origin), "role": "hooked",
            "app": "skiff.app:app", "port": PORT, "graceful_timeout": 5,
            "rollout": [1, "100%"], "production_requires": "staging", "hooks": every}}
        data["stages"] = {"staging": {"roles": {"hooked": STAGING},
                                      "env": {"SKIFF_STAGE": "staging"}}}
        self.config = tmp / "services.yaml"
        self.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def fab(self, *args, check=True, **environ):
        env = dict(os.environ, DEPLOYTOOLS_CONFIG=str(self.config),
                   DEPLOYTOOLS_CACHE=str(self.dir / "cache"), DEPLOYTOOLS_USER="tester",
                   HOOK_LOG=str(self.log), CHAT_URL=self.chat.url, **environ)
        env.pop("DEPLOYTOOLS_JSON", None)
        env.pop("DEPLOYTOOLS_STAGE", None)
        # From the directory of services.yaml and the fabfile, as an ops repo runs it.
        proc = subprocess.run([sys.executable, "-m", "deploytools", *args], cwd=self.dir,
                              env=env, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"deploytools {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def srv(self, host: str) -> Path:
        return self.env.fleet.host(host).srv / SVC

    def current(self, host: str) -> str | None:
        link = self.srv(host) / "current"
        return os.readlink(link).split("/")[-1] if link.is_symlink() else None

    def releases(self, host: str) -> list[str]:
        d = self.srv(host) / "releases"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def history(self, host: str) -> list[dict]:
        path = self.srv(host) / "history.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] \
            if path.exists() else []

    def logged(self) -> list[str]:
        """The hook log since the last call."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.write_text("")
        return lines


def refs(h: Hooked) -> dict[str, str]:
    out = subprocess.run(["git", "-C", str(h.sample.origin), "for-each-ref",
                          "--format=%(refname) %(objectname)"], capture_output=True, text=True,
                         check=True).stdout
    return {ref: sha for ref, sha in (line.split(" ", 1) for line in out.splitlines())}


@pytest.fixture(scope="module")
def hooked(deployenv, tmp_path_factory):
    chat = Chat()
    h = Hooked(deployenv, tmp_path_factory.mktemp("hooked"), chat)
    try:  # the fleet's teardown stops what the deploys started on its hosts
        yield h
    finally:
        chat.close()


def test_staging_deploy_runs_every_hook_point_and_records_the_stage(hooked):
    h = hooked
    v1 = h.sample.resolve("v1")
    r = h.fab("stage:staging", "deploy:hooked,ref=v1")
    assert h.current("web-2") and h.current("web-2").endswith(v1[:7])
    assert h.current("web-0") is None and h.current("web-1") is None  # production untouched
    # In order, with the facts in the environment.
    assert h.logged() == [
        f"before_stage stage=staging wave= hosts=web-2 outcome= commit={v1}",
        f"after_stage stage=staging wave= hosts=web-2 outcome= commit={v1}",
        f"before_wave stage=staging wave=1 hosts=web-2 outcome= commit={v1}",
        f"after_wave stage=staging wave=1 hosts=web-2 outcome= commit={v1}",
        f"after_deploy stage=staging wave= hosts=web-2 outcome=success commit={v1}"]
    # The cache warm ran on the host, in the new release, with its virtualenv, before
    # the switch (nothing was live yet).
    release = h.current("web-2")
    assert (h.srv("web-2") / "releases" / release / "warmed").read_text() == "wave=1 live=none"
    assert "  hook before_wave: web-2: warmed" in r.stdout
    # The chat was told, with the stage.
    msg, = h.chat.messages
    assert (msg["DEPLOYTOOLS_HOOK"], msg["DEPLOYTOOLS_OUTCOME"], msg["DEPLOYTOOLS_STAGE"],
            msg["DEPLOYTOOLS_COMMIT"]) == ("after_deploy", "success", "staging", v1)
    # Recorded as staging's, in origin; production and its date tags did not move.
    got = refs(h)
    assert got[f"refs/deploytools/staging/{v1}"] == v1
    assert "refs/heads/production" not in got
    assert not [r for r in got if r.startswith("refs/tags/production-")]
    rec = h.history("web-2")[-1]
    assert (rec["stage"], rec["outcome"], rec["commit"]) == ("staging", "success", v1)
    # The stage's env reached the app's environment file.
    env_file = h.srv("web-2") / "releases" / release / ".deploy" / "env"
    assert "SKIFF_STAGE=staging" in env_file.read_text()


def test_production_refuses_a_commit_staging_never_had(hooked):
    h = hooked
    v2 = h.sample.resolve("v2")
    r = h.fab("deploy:hooked,ref=v2", check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("Error: hooked: ")
    assert "was never deployed successfully to staging" in r.stderr
    assert f"deploytools stage:staging deploy:hooked,ref={v2}" in r.stderr
    # Before anything was touched: no lock taken, no history, no hook ran.
    for host in PROD:
        assert h.current(host) is None and h.history(host) == []
        assert not (h.srv(host) / ".lock").exists()
    assert h.logged() == []


def test_production_deploy_of_what_staging_had_publishes(hooked):
    h = hooked
    v1 = h.sample.resolve("v1")
    r = h.fab("deploy:hooked,ref=v1")
    assert all(h.current(x).endswith(v1[:7]) for x in PROD)
    log = h.logged()
    assert log[0] == f"before_stage stage=production wave= hosts=web-0 web-1 outcome= commit={v1}"
    assert [line.split(" hosts=")[0] for line in log] == [
        "before_stage stage=production wave=", "after_stage stage=production wave=",
        "before_wave stage=production wave=1", "after_wave stage=production wave=1",
        "before_wave stage=production wave=2", "after_wave stage=production wave=2",
        "after_deploy stage=production wave="]
    assert f"after_wave stage=production wave=1 hosts=web-0 outcome= commit={v1}" in log
    # The Python smoke test ran after the canary wave only, and said what it saw.
    assert r.stdout.count("smoke() ok") == 1
    assert f"  hook after_wave: web-0 serves {v1[:7]} and reports revision" in r.stdout
    # The cache was warmed on each host while it still served nothing.
    for host, wave in (("web-0", 1), ("web-1", 2)):
        warmed = h.srv(host) / "releases" / h.current(host) / "warmed"
        assert warmed.read_text() == f"wave={wave} live=none"
    got = refs(h)
    assert got["refs/heads/production"] == v1
    assert [t for t in got if t.startswith("refs/tags/production-")]
    assert got[f"refs/deploytools/production/{v1}"] == v1
    assert [m["DEPLOYTOOLS_STAGE"] for m in h.chat.messages][-1] == "production"
    assert h.history("web-0")[-1]["stage"] == "production"


def test_a_hung_before_stage_hook_is_killed_and_stops_the_deploy(hooked):
    h = hooked
    before = {x: (h.current(x), h.releases(x)) for x in PROD}
    hang = h.srv("web-1") / "hang"
    hang.write_text("")
    try:
        t0 = time.monotonic()
        r = h.fab("deploy:hooked,ref=v1", check=False)
        took = time.monotonic() - t0
    finally:
        hang.unlink()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "hook before_stage" in r.stderr and "timed out after 2s" in r.stderr
    assert "web-1" in r.stderr and "nothing was touched" in r.stderr
    assert took < 60
    assert {x: (h.current(x), h.releases(x)) for x in PROD} == before  # nothing staged
    leftover = subprocess.run(["pgrep", "-f", "^sleep 613$"], capture_output=True, text=True)
    assert leftover.stdout == ""  # the hook's process group was killed
    rec = h.history("web-0")[-1]
    assert (rec["outcome"], rec["failed_step"]) == ("failed", "before_stage")
    log = h.logged()
    assert [line.split(" ")[0] for line in log] == ["before_stage", "on_failure"]
    assert "outcome=failed" in log[-1]
    assert (h.chat.messages[-1]["DEPLOYTOOLS_HOOK"],
            h.chat.messages[-1]["DEPLOYTOOLS_OUTCOME"]) == ("on_failure", "failed")


def test_a_failing_smoke_test_after_the_canary_rolls_back(hooked):
    h = hooked
    v1, v2 = h.sample.resolve("v1"), h.sample.resolve("v2")
    h.fab("stage:staging", "deploy:hooked,ref=v2")
    assert h.current("web-2").endswith(v2[:7])
    h.logged()
    live = {x: h.current(x) for x in PROD}
    r = h.fab("deploy:hooked,ref=v2", check=False, SMOKE_KEY="feature_flags")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "wave 1 (web-0) failed, and every host this deploy touched was rolled back" in r.stderr
    assert "canary web-0 does not report 'feature_flags'" in r.stderr
    assert {x: h.current(x) for x in PROD} == live  # web-0 back, web-1 never switched
    log = h.logged()
    assert [line.split(" ")[0] for line in log] == [
        "before_stage", "after_stage", "before_wave", "after_wave", "after_rollback",
        "on_failure"]
    assert "after_rollback stage=production wave= hosts=web-0 outcome=rolled_back" in log[-2]
    assert (h.chat.messages[-1]["DEPLOYTOOLS_HOOK"],
            h.chat.messages[-1]["DEPLOYTOOLS_OUTCOME"]) == ("on_failure", "rolled_back")
    rec = h.history("web-0")[-1]
    assert (rec["outcome"], rec["failed_wave"], rec["rolled_back"]) == ("rolled_back", 1, ["web-0"])
    assert refs(h)["refs/heads/production"] == v1  # production did not move
