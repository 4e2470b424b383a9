"""Issue 13 on the real fleet: a code-only release in 3 SSH round trips per host, the
release staged in the lock's round trip (docs/design.md, "Round trips and scale").

skiff (Flask) from its own origin on port 8050. The first deploy plans from nothing
(nothing is live, so no host stages with the lock); a `host:` deploy leaves web-0 on
another commit than the production branch, and the next (code-only) deploy stages web-0
in a round trip of its own and the others with the lock. A new requirement is staged after
the lock, so that the first host downloads it once for all. A commit rejected on the hosts is refused
before anything is staged; a release that does not import fails in the lock's round
trip and again in its own, which names the error, with no host switched.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import build_repos
from build_repos import Sub
from sysenv import ROOT, ServiceEnv

pytestmark = pytest.mark.system

SVC, PORT = "folded", 8050  # no other test uses it
HOSTS = ["web-0", "web-1", "web-2", "web-3"]


class Folded(ServiceEnv):
    SERVICE, PORT = SVC, PORT

    def __init__(self, env, sample, dir: Path):
        super().__init__(env, sample, dir, {
            "kind": "flask", "repo": str(sample.origin), "role": "web",
            "app": "skiff.app:app", "port": PORT, "workers": 2, "graceful_timeout": 3,
            "production_branch": "folded-production", "tag_prefix": "folded-",
            "rollout": [1, "50%", "100%"], "keep_releases": 10,
            "gate": {"warmup": 0, "bake": 0.2, "max_extensions": 0,
                     "on_inconclusive": "proceed"}})

    def counted(self, *args: str) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
        """deploytools ARGS --json, instrumented: (the process, round trips per host and
        phase, the JSON events)."""
        out = self.dir / "roundtrips.json"
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "roundtrips.py"),
                               str(out), *args, "--json"], cwd=ROOT, env=self.environ(),
                              capture_output=True, text=True, timeout=300)
        events = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        counts = json.loads(out.read_text())["counts"] if out.exists() else {}
        return proc, counts, events

    def releases_of(self, host: str, label: str) -> list[str]:
        short = self.sha(label)[:7]
        return sorted(p.name for p in (self.srv(host) / "releases").iterdir()
                      if p.name.endswith("-" + short))


def staged_with_lock(events: list[dict]) -> dict[str, bool]:
    return {e["host"]: e["with_lock"] for e in events if e["event"] == "staged"}


@pytest.fixture(scope="module")
def fold(deployenv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fold")
    # Its own origin: these tests read and move its production branch.
    sample = build_repos.build(tmp / "samples", names=["skiff"])["skiff"]
    env = Folded(deployenv, sample, tmp)
    yield env
    env.stop_everywhere()


def test_first_deploy_stages_in_its_own_round_trip(fold):
    proc, _, events = fold.counted(f"deploy:{SVC},ref=v1")
    assert proc.returncode == 0, proc.stderr
    # Nothing was live: the production branch does not exist yet, so nothing to plan from.
    assert staged_with_lock(events) == {h: False for h in HOSTS}
    assert fold.revisions() == {h: fold.sha("v1") for h in HOSTS}


def test_a_code_only_release_takes_three_round_trips_per_host(fold):
    proc, counts, events = fold.counted(f"deploy:{SVC},ref=v2")
    assert proc.returncode == 0, proc.stderr
    assert staged_with_lock(events) == {h: True for h in HOSTS}
    # lock + inspect + stage, note + activate + ready, history + prune + unlock
    assert {h: counts[h]["release"] for h in HOSTS} == {h: 3 for h in HOSTS}, counts
    assert fold.revisions() == {h: fold.sha("v2") for h in HOSTS}
    for h in HOSTS:
        rec = fold.history(h)[-1]
        assert rec["outcome"] == "success" and "venv_reused" in rec["steps"], rec


def test_a_rejected_commit_is_refused_with_nothing_staged(fold):
    # As an earlier deploy's failed gate leaves it: the release marked on every host.
    # (errors-20 is a branch on v2: deploying it moves production forward.)
    for h in HOSTS:
        mark = (fold.srv(h) / "releases" / f"20200101T000000Z-{fold.sha('errors-20')[:7]}"
                / ".deploy")
        mark.mkdir(parents=True)
        (mark / "rejected").write_text("")
    before = {h: fold.releases_of(h, "errors-20") for h in HOSTS}
    r = fold.fab(f"deploy:{SVC},ref=errors-20", check=False)
    assert r.returncode == 2 and "was rejected by an earlier deploy" in r.stderr, r.stderr
    # Refused under the lock, before anything was staged (each host checked its marks).
    assert {h: fold.releases_of(h, "errors-20") for h in HOSTS} == before
    assert fold.revisions() == {h: fold.sha("v2") for h in HOSTS}
    assert not any((fold.srv(h) / ".lock").exists() for h in HOSTS)


def test_a_release_that_fails_to_stage_says_why_and_switches_nothing(fold):
    r = fold.fab(f"deploy:{SVC},ref=broken-import", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no host was switched" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "ModuleNotFoundError" in r.stderr or "No module named" in r.stderr, r.stderr
    assert fold.revisions() == {h: fold.sha("v2") for h in HOSTS}
    assert not any((fold.srv(h) / ".lock").exists() for h in HOSTS)
    # The staging script removed its half-made release on every host, both times.
    assert all(fold.releases_of(h, "broken-import") == [] for h in HOSTS)
    for h in HOSTS:
        assert fold.history(h)[-1]["outcome"] == "failed"


def test_a_host_on_another_commit_is_staged_in_a_round_trip_of_its_own(fold):
    fold.fab("host:web-0", f"deploy:{SVC},ref=v1,force=true")  # not published: a subset
    assert fold.revisions()["web-0"] == fold.sha("v1")
    # A code-only change from v2, where the production branch is.
    sha = fold.sample.commit("skiff: a comment", {"skiff/app.py": Sub(
        ("from flask import Flask", "# v2.1\nfrom flask import Flask"))}, base="v2",
        branch="v2.1", label="v2.1")
    proc, counts, events = fold.counted(f"deploy:{SVC},ref={sha}")
    assert proc.returncode == 0, proc.stderr
    assert staged_with_lock(events) == {"web-0": False, "web-1": True, "web-2": True,
                                        "web-3": True}
    assert counts["web-0"]["release"] == 4 and counts["web-1"]["release"] == 3, counts
    assert fold.revisions() == {h: sha for h in HOSTS}
    assert all(len(fold.releases_of(h, "v2.1")) == 1 for h in HOSTS)


def test_a_new_requirement_is_staged_after_the_lock_and_downloaded_once(fold):
    # Not in the lock's round trip: the first host downloads for the others first
    # (venv.Handover; tests/system/test_fleet_download.py counts the downloads).
    proc, counts, events = fold.counted(f"deploy:{SVC},ref=v3,force=true")  # not after v2.1
    assert proc.returncode == 0, proc.stderr
    assert staged_with_lock(events) == {h: False for h in HOSTS}
    assert [e["host"] for e in events if e["event"] == "wheels"] == ["web-0"]
    assert fold.revisions() == {h: fold.sha("v3") for h in HOSTS}
    for h in HOSTS[1:]:
        assert "venv_from_fleet_download" in fold.history(h)[-1]["steps"]


def test_a_release_a_failed_deploy_left_staged_is_no_rollback_target(fold):
    # A deploy of v1 stops after staging, before any switch (its after_stage hook fails):
    # v1's new release stays staged on every host, never live. v2 goes live next. Its
    # rollback goes back to v3, which was live before it, not to that v1 release.
    assert fold.revisions() == {h: fold.sha("v3") for h in HOSTS}
    data = json.loads(json.dumps(fold.data))
    data["services"][SVC]["hooks"] = {"after_stage": [{"run": "false"}]}
    fold.write(data)
    try:
        r = fold.fab(f"deploy:{SVC},ref=v1,force=true", check=False)
    finally:
        fold.write()
    assert r.returncode == 1 and "no host was switched" in r.stderr, r.stderr
    left = {h: fold.releases_of(h, "v1")[-1] for h in HOSTS}
    for h in HOSTS:
        assert (fold.srv(h) / "releases" / left[h] / ".deploy" / "never_live").exists()
    fold.fab(f"deploy:{SVC},ref=v2,force=true")
    live = {h: fold.srv(h) / "releases" / fold.releases_of(h, "v2")[-1] for h in HOSTS}
    assert not any((p / ".deploy" / "never_live").exists() for p in live.values())
    r = fold.fab(f"rollback:{SVC}")
    assert fold.revisions() == {h: fold.sha("v3") for h in HOSTS}, r.stdout
    assert all(left[h] not in r.stdout for h in HOSTS), r.stdout


def test_a_deploy_whose_output_nobody_reads_goes_on_to_its_end(fold):
    # `deploytools deploy:x | head -1`, or a CI log shipper that died: no reader for
    # stdout. The deploy is not cut short by it (it failed as an internal error after
    # its first line, with the release staged and never live).
    proc = subprocess.Popen([sys.executable, "-m", "deploytools", f"deploy:{SVC},ref=v2,force=true"],
                            cwd=ROOT, env=fold.environ(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert fold.revisions() == {h: fold.sha("v2") for h in HOSTS}
    assert fold.history("web-0")[-1]["outcome"] == "success"
