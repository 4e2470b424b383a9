"""Issue 15 and issue 9 item 4, the parts that need no host: the SSH route from an
ssh config, templates overridden by name, our tasks next to a user's fabfile,
and the session that travels in invoke's context."""
from __future__ import annotations

import textwrap
import time
from types import SimpleNamespace as NS

import paramiko
import pytest
from invoke import Collection, Context, task

from deploytools import render, tasks
from deploytools.cli import DeployProgram, merge_collections
from deploytools.config import load
from deploytools.errors import ConnectionFailed
from deploytools.inventory import Hop, SSHTarget, ssh_route
from deploytools.session import Session, attach, of

SSH_CONFIG = paramiko.SSHConfig.from_text(textwrap.dedent("""\
    Host bastion
        HostName 10.9.0.1
        Port 2200
        User jump
    Host web-*
        HostName %h.internal
        ProxyJump bastion
        ForwardAgent yes
    Host 10.0.0.*
        ProxyJump ops@gw.example.com:2022,bastion
    Host *
        User deploy
        Port 2222
    """))
SSH = NS(config_file="~/.ssh/config", identity_file=None)


def host(address, port=None, user=None, identity_file=None):
    return NS(name="h", address=address, port=port, user=user, identity_file=identity_file)


@pytest.mark.parametrize("h, expected", [
    # An alias: HostName from the config, Port and User from `Host *`, through the bastion.
    (host("web-0"), [Hop("bastion", "10.9.0.1", 2200, "jump", ()),
                     Hop("web-0", "web-0.internal", 2222, "deploy", ())]),
    # services.yaml's port, user and key win over the ssh config.
    (host("web-0", 22, "root", "/k"), [Hop("bastion", "10.9.0.1", 2200, "jump", ()),
                                       Hop("web-0", "web-0.internal", 22, "root", ("/k",))]),
    # Two jumps, the first with its own user and port.
    (host("10.0.0.5"), [Hop("gw.example.com", "gw.example.com", 2022, "ops", ()),
                        Hop("bastion", "10.9.0.1", 2200, "jump", ()),
                        Hop("10.0.0.5", "10.0.0.5", 2222, "deploy", ())]),
    # No config for it but `Host *`: direct, the config's port.
    (host("db.example.com"), [Hop("db.example.com", "db.example.com", 2222, "deploy", ())]),
])
def test_ssh_route_follows_the_ssh_config(h, expected):
    assert ssh_route(h, SSH, SSH_CONFIG) == expected


def test_without_an_ssh_config_the_port_is_22():
    assert ssh_route(host("10.0.0.5"), SSH, paramiko.SSHConfig()) == [
        Hop("10.0.0.5", "10.0.0.5", 22, None, ())]


def test_proxycommand_is_refused_since_its_host_key_could_not_be_checked():
    cfg = paramiko.SSHConfig.from_text("Host x\n    ProxyCommand nc %h %p\n")
    with pytest.raises(ConnectionFailed, match="ProxyCommand.*use ProxyJump"):
        ssh_route(host("x"), SSH, cfg)


def test_agent_forwarding_stays_off_whatever_the_ssh_config_says(tmp_path, monkeypatch):
    from fabric import Connection
    seen = []

    def fake_open(self):
        seen.append((self.host, self.forward_agent, type(self.client._policy).__name__))
        raise OSError("no network in unit tests")
    monkeypatch.setattr(Connection, "open", fake_open)
    (tmp_path / "ssh_config").write_text("Host *\n    ForwardAgent yes\n")
    ssh = NS(config_file=str(tmp_path / "ssh_config"), identity_file=None,
             known_hosts=str(tmp_path / "known_hosts"), connect_timeout=1, forward_agent=False,
             command_timeout=60, keepalive=0)
    target = SSHTarget(NS(name="h", address="10.0.0.1", port=None, user=None,
                          identity_file=None, local=False), ssh)
    with pytest.raises(ConnectionFailed, match="could not connect to h"):
        target._open()
    assert seen == [("10.0.0.1", False, "RejectPolicy")]
    ssh.forward_agent = True  # only services.yaml turns it on
    with pytest.raises(ConnectionFailed):
        SSHTarget(target.host, ssh)._open()
    assert seen[-1] == ("10.0.0.1", True, "RejectPolicy")


def test_a_services_templates_directory_overrides_ours_by_name(tmp_path):
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops/env.j2").write_text("# ours, from the ops repo\nX={{ env.X | shquote }}\n")
    (tmp_path / "services.yaml").write_text(textwrap.dedent("""\
        hosts: {h: {local: true}}
        services:
          a: {kind: flask, repo: /r.git, hosts: [h], app: a:app, port: 8001, templates: ops,
              env: {X: "it's"}}
          b: {kind: flask, repo: /r.git, hosts: [h], app: a:app, port: 8002, env: {X: "1"}}
        """))
    cfg = load(tmp_path / "services.yaml")
    files = {f.path: f.content for f in render.release_files(
        cfg.service("a"), cfg.hosts["h"], "/srv/a", "r1", "abc")}
    assert files[".deploy/env"] == "# ours, from the ops repo\nX='it'\"'\"'s'\n"
    # The other templates still come from the package; service b has no override.
    a, h = cfg.service("a"), cfg.hosts["h"]
    assert files[".deploy/start"] == render.render(
        "start.j2", service=a, dir="/srv/a", release="r1", bind=render.bind_for(a, h))
    other = {f.path: f.content for f in render.release_files(
        cfg.service("b"), cfg.hosts["h"], "/srv/b", "r1", "abc")}
    assert other[".deploy/env"].startswith("# Environment of b")


def test_packaged_templates_are_found():
    assert (render.TEMPLATES / "supervisord.conf.j2").is_file()


@task
def hello(c):
    """The user's own task."""


@task
def status(c, service):
    """The user's status, which wins over ours."""


def test_user_fabfile_tasks_next_to_ours_and_theirs_win_a_clash():
    ours = Collection.from_module(tasks)
    theirs = Collection(hello, status, tasks.deploy)  # and one of ours, imported
    merged, replaced = merge_collections(ours, theirs)
    assert replaced == ["status"]  # deploy is the same task: no clash
    assert merged["hello"] is hello and merged["status"] is status
    assert merged["deploy"] is tasks.deploy and merged["smart-deploy"] is tasks.smart_deploy
    assert set(ours.task_names) | {"hello"} == set(merged.task_names)


def test_the_session_travels_in_the_context_and_is_not_shared_between_programs(tmp_path):
    from fabric import Config
    one, two = Config(), Config()
    s1 = attach(one, Session(json_mode=True))
    # What invoke does between tasks: reload levels and merge (copying values).
    one.load_collection({})
    one.load_shell_env()
    c = Context(config=one)
    assert of(c) is s1 and of(Context(config=one.clone())) is s1
    s2 = of(Context(config=two))  # another program: its own, made from the environment
    assert s2 is not s1 and of(Context(config=two)) is s2


def test_a_user_task_calling_ours_runs_in_the_programs_session(tmp_path, monkeypatch, capsys):
    (tmp_path / "fabfile.py").write_text(textwrap.dedent("""\
        from invoke import task
        from deploytools.tasks import host
        from deploytools.session import of

        @task
        def pick(c):
            host(c, "b")
            print("selected", of(c).selected, "json", of(c).json_mode)
        """))
    (tmp_path / "services.yaml").write_text(textwrap.dedent("""\
        hosts: {a: {local: true, address: 127.0.0.2}, b: {local: true, address: 127.0.0.3}}
        services: {s: {kind: flask, repo: /r.git, hosts: [a, b], app: s:app, port: 8001}}
        """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEPLOYTOOLS_CONFIG", str(tmp_path / "services.yaml"))
    monkeypatch.delenv("DEPLOYTOOLS_JSON", raising=False)
    program = DeployProgram()
    seen = {}
    real_execute = program.execute

    def execute():
        real_execute()
        seen["session"] = program.config.deploytools.session
    program.execute = execute
    program.run(["deploytools", "--json", "host:a", "pick"])
    assert seen["session"].selected == ["a", "b"] and seen["session"].json_mode
    assert "selected ['a', 'b'] json True" in capsys.readouterr().out


def test_a_broken_user_fabfile_is_a_usage_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "fabfile.py").write_text("import no_such_module_here\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        DeployProgram().run(["deploytools", "--list"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("Error: the fabfile found from "), err
    assert "no_such_module_here" in err and "Traceback" not in err


def test_an_early_connection_failure_is_kept_for_the_first_step_not_waited_for_twice(
        monkeypatch, tmp_path):
    """Rollout connects the hosts while the controller fetches (inventory.connect_early):
    a host that could not be reached then fails the first step with that error, without
    a second connect_timeout; a host that was reached is not connected again."""
    from deploytools.inventory import connect_early
    opened = []

    def fake_open(self):
        opened.append(self.name)
        if self.name == "down":
            raise ConnectionFailed("could not connect to down: refused", host=self.name)
        return NS(close=lambda: None)
    monkeypatch.setattr(SSHTarget, "_open", fake_open)
    ssh = NS(config_file=str(tmp_path / "none"), identity_file=None, known_hosts="/dev/null",
             connect_timeout=1, forward_agent=False, command_timeout=60, keepalive=0)
    up, down = (SSHTarget(NS(name=n, address="10.0.0.1", port=None, user=None,
                             identity_file=None, local=False), ssh) for n in ("up", "down"))
    connect_early([up, down], parallel=2)
    deadline = time.monotonic() + 5
    while sorted(opened) != ["down", "up"] and time.monotonic() < deadline:
        time.sleep(0.01)
    up.connect()
    with pytest.raises(ConnectionFailed, match="could not connect to down"):
        down.connect()
    with pytest.raises(ConnectionFailed, match="could not connect to down"):
        down.connect()
    assert sorted(opened) == ["down", "up"]  # each opened once
