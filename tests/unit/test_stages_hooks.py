"""Stages (services.yaml overlays, production_requires) and hooks (declared, and run on
the controller or as Python callables): the parts that need no fleet."""
from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from deploytools import hooks as hooks_mod
from deploytools.cli import extract_globals, rewrite_classic
from deploytools.config import load
from deploytools.errors import ConfigError, UsageError
from deploytools.hooks import HookContext, HookFailed, Hooks, hook

BASE = """\
hosts:
  web-0: {address: 10.0.0.10}
  web-1: {address: 10.0.0.11}
  stg-0: {address: 10.0.1.10}
roles:
  web: [web-0, web-1]
defaults:
  gate: {bake: 20}
services:
  airship:
    kind: django
    repo: git@example.com:airship.git
    role: web
    app: airship.wsgi:application
    port: 8000
    env: {DJANGO_SETTINGS_MODULE: airship.settings, MODE: prod}
    production_requires: staging
    hooks:
      after_wave:
        - {run: ./smoke.sh, waves: [1], timeout: 30}
      before_wave:
        - {run: python manage.py warm, where: hosts}
stages:
  staging:
    roles: {web: [stg-0]}
    env: {MODE: staging}
    gate: {warmup: 0}
    rollout: ["100%"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_production_is_the_file_as_written(tmp_path):
    cfg = load(write(tmp_path, BASE))
    svc = cfg.service("airship")
    assert cfg.stage == "production" and cfg.publishes
    assert svc.hosts == ("web-0", "web-1") and svc.env["MODE"] == "prod"
    assert svc.rollout == (1, "50%", "100%") and svc.gate.warmup == 5.0
    assert list(cfg.stages) == ["staging"] and svc.production_requires == "staging"


def test_a_stage_overlays_roles_env_gate_and_rollout(tmp_path):
    cfg = load(write(tmp_path, BASE), stage="staging")
    svc = cfg.service("airship")
    assert cfg.stage == "staging" and not cfg.publishes
    assert svc.hosts == ("stg-0",)
    assert dict(svc.env) == {"DJANGO_SETTINGS_MODULE": "airship.settings", "MODE": "staging"}
    assert svc.gate.warmup == 0 and svc.gate.bake == 20  # merged key by key
    assert svc.rollout == ("100%",)


def test_a_stage_replaces_a_host_of_the_same_name(tmp_path):
    text = BASE.replace("    roles: {web: [stg-0]}\n",
                        "    hosts: {web-0: {address: 10.0.2.10}, web-1: {address: 10.0.2.11}}\n")
    cfg = load(write(tmp_path, text), stage="staging")
    assert cfg.hosts["web-0"].address == "10.0.2.10"
    assert cfg.service("airship").hosts == ("web-0", "web-1")


def test_unknown_stage_is_a_usage_error_naming_the_declared_ones(tmp_path):
    with pytest.raises(UsageError, match=r"unknown stage 'stagin'.*declares: staging.*"
                                         r"Did you mean 'staging'"):
        load(write(tmp_path, BASE), stage="stagin")


def test_two_stages_may_not_share_a_directory(tmp_path):
    text = BASE.replace("roles: {web: [stg-0]}", "roles: {web: [web-1, stg-0]}")
    with pytest.raises(ConfigError, match=r"/srv/airship on 10.0.0.11 \(web-1\), which stage "
                                          r"production deploys to as well"):
        load(write(tmp_path, text), stage="staging")
    with pytest.raises(ConfigError):  # whichever stage is selected
        load(write(tmp_path, text))


@pytest.mark.parametrize("old, new, fragment", [
    ("production_requires: staging", "production_requires: qa",
     "production_requires: unknown stage 'qa'; declared stages: staging"),
    ("production_requires: staging", "production_requires: production",
     "production cannot require itself"),
    ("    rollout: [\"100%\"]\n", "    rollout: [\"100%\"]\n    publish: true\n",
     "stages.staging: publishes (publish: true) but names no production_branch"),
    ("    env: {MODE: staging}\n", "    env: {MODE: staging}\n    bake: 3\n",
     "stages.staging: unknown key 'bake'"),
    ("waves: [1], timeout: 30", "waves: [0]", "expected an integer >= 1"),
    ("      before_wave:\n", "      before_wav:\n", "Did you mean 'before_wave'"),
    ("where: hosts", "where: everywhere", "expected one of controller, hosts"),
    ("- {run: ./smoke.sh, waves: [1], timeout: 30}", "- {run: ./smoke.sh, tiemout: 3}",
     "unknown key 'tiemout'"),
])
def test_broken_stages_and_hooks(tmp_path, old, new, fragment):
    assert old in BASE
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, BASE.replace(old, new)))
    assert fragment in str(e.value)


def test_waves_only_for_wave_points(tmp_path):
    text = BASE.replace("      after_wave:\n", "      after_deploy:\n")
    with pytest.raises(ConfigError, match=r"hooks.after_deploy\[0\].waves: only for "
                                          r"before_wave and after_wave"):
        load(write(tmp_path, text))


def test_a_publishing_stage_moves_its_own_branch(tmp_path):
    text = BASE.replace("    rollout: [\"100%\"]\n", "    rollout: [\"100%\"]\n    publish: true\n"
                        "    production_branch: staging\n    tag_prefix: staging-\n")
    cfg = load(write(tmp_path, text), stage="staging")
    svc = cfg.service("airship")
    assert cfg.publishes and svc.production_branch == "staging" and svc.tag_prefix == "staging-"
    assert load(write(tmp_path, text)).service("airship").production_branch == "production"


def test_hooks_are_typed(tmp_path):
    h = load(write(tmp_path, BASE)).service("airship").hooks
    assert list(h) == ["after_wave", "before_wave"]
    smoke, = h["after_wave"]
    assert (smoke.run, smoke.where, smoke.timeout, smoke.waves) == ("./smoke.sh", "controller",
                                                                    30.0, (1,))
    warm, = h["before_wave"]
    assert (warm.where, warm.timeout, warm.waves) == ("hosts", 300.0, None)


@pytest.mark.parametrize("argv, flags, rest", [
    (["--stage", "staging", "deploy:airship"], ["--stage=staging"], ["deploy:airship"]),
    (["deploy:airship", "--stage=qa"], ["--stage=qa"], ["deploy:airship"]),
])
def test_stage_flag_anywhere(argv, flags, rest):
    assert extract_globals(argv) == (flags, [], rest)


def test_classic_stage_task():
    from invoke import Collection
    from deploytools import tasks
    coll = Collection.from_module(tasks)
    assert rewrite_classic(["stage:staging", "deploy:airship"], coll) == [
        "stage", "staging", "deploy", "airship"]


# -- running hooks ----------------------------------------------------------------

class Say:
    def __init__(self):
        self.events = []

    def __call__(self, kind, message, **fields):
        self.events.append((kind, message, fields))

    def text(self):
        return "\n".join(m for _, m, _ in self.events)


class FakeService:
    def __init__(self, hooks=None):
        self.name = "airship"
        self.hooks = hooks or {}
        self.parallel = 4


class H:
    def __init__(self, run, where="controller", timeout=30.0, waves=None):
        self.run, self.where, self.timeout, self.waves = run, where, timeout, waves


@pytest.fixture(autouse=True)
def empty_registry():
    hooks_mod.clear()
    yield
    hooks_mod.clear()


def runner(tmp_path, **points):
    say = Say()
    return Hooks(FakeService(points), stage="staging", say=say, base_dir=str(tmp_path),
                 dir_of=lambda t: "/srv/x"), say


def test_controller_hook_gets_the_facts_in_its_environment_never_in_its_command(tmp_path):
    hostile = "x'$(touch PWNED)`touch PWNED`"
    h, say = runner(tmp_path, after_deploy=(H('echo "$DEPLOYTOOLS_SERVICE $DEPLOYTOOLS_STAGE '
                                              '$DEPLOYTOOLS_HOSTS $DEPLOYTOOLS_OUTCOME"; pwd; '
                                              'printf %s "$DEPLOYTOOLS_ERROR" > err'),))
    assert h.fire("after_deploy", fatal=False, hosts=("web-0", "web-1"), outcome="success",
                  error=hostile) == []
    text = say.text()
    assert "hook after_deploy: airship staging web-0 web-1 success" in text
    assert f"hook after_deploy: {tmp_path}" in text  # runs in services.yaml's directory
    assert (tmp_path / "err").read_text() == hostile and not (tmp_path / "PWNED").exists()


def test_a_fatal_hook_failure_raises_with_its_output_shown(tmp_path):
    h, say = runner(tmp_path, before_stage=(H("echo checking; exit 3"), H("touch second")))
    with pytest.raises(HookFailed, match=r"hook before_stage \(echo checking; exit 3\) failed: "
                                         r"exit 3"):
        h.fire("before_stage", fatal=True)
    assert "hook before_stage: checking" in say.text()
    assert not (tmp_path / "second").exists()  # the first failure stops the point


def test_a_non_fatal_failure_warns_and_the_next_hook_still_runs(tmp_path):
    h, say = runner(tmp_path, on_failure=(H("exit 1"), H("touch second")))
    failures = h.fire("on_failure", fatal=False, outcome="rolled_back")
    assert failures == ["hook on_failure (exit 1) failed: exit 1"]
    assert (tmp_path / "second").exists()
    assert any(kind == "warning" for kind, _, _ in say.events)


def test_a_hung_controller_hook_is_killed_with_its_children(tmp_path):
    h, _ = runner(tmp_path, after_wave=(H("sleep 60 & echo $! > child; wait", timeout=1),))
    t0 = time.monotonic()
    with pytest.raises(HookFailed, match="timed out after 1s"):
        h.fire("after_wave", fatal=True, wave=1)
    assert time.monotonic() - t0 < 10
    child = int((tmp_path / "child").read_text())
    time.sleep(0.2)
    try:  # gone, or a zombie nobody reaped yet (dead all the same)
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")


def test_wave_hooks_can_be_limited_to_some_waves(tmp_path):
    h, _ = runner(tmp_path, after_wave=(H("echo $DEPLOYTOOLS_WAVE >> waves", waves=(1,)),))
    for wave in (1, 2, 3):
        h.fire("after_wave", fatal=True, wave=wave)
    assert (tmp_path / "waves").read_text() == "1\n"
    assert h.any("after_wave", 1) and not h.any("after_wave", 2)


def test_python_hooks_run_after_the_declared_ones_with_the_context(tmp_path):
    seen: list[HookContext] = []

    @hook("after_wave", service="airship", waves=[2])
    def smoke(ctx):
        seen.append(ctx)
        ctx.say("smoked")

    @hook("after_wave", service="other")
    def not_ours(ctx):
        raise AssertionError("another service's hook ran")

    h, say = runner(tmp_path)
    h.fire("after_wave", fatal=True, wave=1, hosts=("web-0",))
    assert seen == []
    h.fire("after_wave", fatal=True, wave=2, hosts=("web-1",), release="R", commit="c" * 40)
    assert [(c.point, c.wave, c.hosts, c.release, c.stage) for c in seen] == [
        ("after_wave", 2, ("web-1",), "R", "staging")]
    assert "hook after_wave: smoked" in say.text()
    assert "smoke() ok" in say.text()


def test_a_python_hook_fails_by_raising_or_by_hanging(tmp_path):
    @hook("before_wave")
    def broken(ctx):
        raise RuntimeError("cache server down")

    h, _ = runner(tmp_path)
    with pytest.raises(HookFailed, match=r"broken\(\)\) failed: RuntimeError: cache server down"):
        h.fire("before_wave", fatal=True, wave=1)
    hooks_mod.clear()

    @hook("after_deploy", timeout=0.5)
    def hangs(ctx):
        time.sleep(30)

    assert h.fire("after_deploy", fatal=False) == [
        "hook after_deploy (hangs()) failed: did not return within 0.5s (left running)"]


@pytest.mark.parametrize("args, fragment", [
    (("after_stag",), "unknown hook point 'after_stag'"),
    (("after_deploy",), "waves= is only for before_wave and after_wave"),
])
def test_hook_decorator_refuses_mistakes_at_import(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        hook(*args, waves=[1] if args == ("after_deploy",) else None)



def test_hooks_come_from_defaults_unless_the_service_has_its_own(tmp_path):
    own = BASE[BASE.index("    hooks:\n"):BASE.index("stages:\n")]
    text = BASE.replace("defaults:\n", "defaults:\n  hooks:\n    on_failure: [{run: ./page.sh}]\n")
    cfg = load(write(tmp_path, text.replace(own, "")))
    assert [h.run for h in cfg.service("airship").hooks["on_failure"]] == ["./page.sh"]
    assert "on_failure" not in load(write(tmp_path, text)).service("airship").hooks


@pytest.mark.parametrize("argv, environ", [
    (["stage:qa", "status:airship"], {}),            # classic task
    (["stage", "qa", "status", "airship"], {}),      # modern task
    (["status:airship", "--stage", "qa"], {}),       # the flag, anywhere
    (["status:airship"], {"DEPLOYTOOLS_STAGE": "qa"}),
])
def test_every_way_of_selecting_a_stage_reaches_the_config(argv, environ, tmp_path, capsys,
                                                           monkeypatch):
    from deploytools.cli import DeployProgram
    monkeypatch.setenv("DEPLOYTOOLS_CONFIG", str(write(tmp_path, BASE)))
    monkeypatch.delenv("DEPLOYTOOLS_STAGE", raising=False)
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        DeployProgram().run(["deploytools", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.startswith("Error: unknown stage 'qa' (services.yaml declares: staging;"), err
