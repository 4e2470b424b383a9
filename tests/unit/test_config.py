"""services.yaml -> model: good configs load with the right values, broken ones fail
with the exact line and a message that says what to do."""
from __future__ import annotations

import dataclasses
import os
import runpy
import textwrap
from pathlib import Path

import pytest

from deploytools import config
from deploytools.config import Gate, Health, load, parse
from deploytools.config.__main__ import main as check_main
from deploytools.errors import ConfigError, UsageError

ROOT = Path(__file__).resolve().parents[2]
# The generator is a script outside the package (like gunicorn's docs/gunicorn_ext.py).
GEN_REFERENCE = runpy.run_path(str(ROOT / "docs/gen_reference.py"))
reference_markdown = GEN_REFERENCE["reference_markdown"]


def write(tmp_path: Path, text: str, name: str = "services.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


FULL = """\
ssh:
  known_hosts: keys/known_hosts
  identity_file: ~/.ssh/deploy
  connect_timeout: 7
hosts:
  web-0: {address: 10.0.0.10, user: deploy}
  web-1: {address: web-1.example.com, port: 2222, identity_file: /keys/web1}
  demo: {local: true, root: .demo/srv}
roles:
  web: [web-1, web-0]
defaults:
  root: /opt/apps
  rollout: [1, "100%"]
  parallel: 3
  health: {timeout: 9}
  gate: {bake: 60, on_inconclusive: proceed}
services:
  airship:
    kind: django
    repo: git@git.example.com:ops/airship.git
    role: web
    app: airship.wsgi:application
    port: 8000
    env:
      DJANGO_SETTINGS_MODULE: airship.settings
      LEADING_ZERO: 010
      DEBUG: yes
      VERSION: 1.10
      EMPTY: ""
    health: {path: /ready, expect_status: 2xx}
    gate: {bake: 45, min_requests: 50}
  worker:
    kind: command
    repo: ../repos/worker.git
    hosts: [demo, web-0]
    command: bin/worker --port 9000
    build: make
    port: 9000
    bind: 0.0.0.0:9000
    requirements: null
    reload_signal: restart
    root: /srv
    keep_releases: 2
"""


def test_full_config_values_and_defaults(tmp_path):
    cfg = load(write(tmp_path, FULL))
    home = os.path.expanduser("~")

    assert cfg.ssh == config.Ssh(known_hosts=str(tmp_path / "keys/known_hosts"),
                                 identity_file=f"{home}/.ssh/deploy", connect_timeout=7,
                                 config_file=f"{home}/.ssh/config", forward_agent=False)
    assert list(cfg.hosts) == ["web-0", "web-1", "demo"]
    assert cfg.hosts["web-0"] == config.Host("web-0", "10.0.0.10", None, "deploy", False, None,
                                             f"{home}/.ssh/deploy")
    assert cfg.hosts["web-1"].port == 2222
    assert cfg.hosts["web-1"].identity_file == "/keys/web1"
    demo = cfg.hosts["demo"]
    assert (demo.address, demo.local, demo.root) == ("127.0.0.1", True, str(tmp_path / ".demo/srv"))
    assert cfg.roles == {"web": ("web-1", "web-0")}

    a = cfg.service("airship")
    assert a.hosts == ("web-1", "web-0") and a.role == "web"
    assert (a.kind, a.repo, a.app, a.port, a.bind) == (
        "django", "git@git.example.com:ops/airship.git", "airship.wsgi:application", 8000, None)
    assert (a.branch, a.production_branch, a.tag_prefix) == ("master", "production", "production-")
    assert (a.requirements, a.workers, a.graceful_timeout, a.reload_signal) == (
        "requirements.txt", 2, 30, "HUP")
    assert (a.migrate, a.collectstatic, a.command, a.build) == (True, True, None, None)
    # Scalars in env are kept exactly as written.
    assert dict(a.env) == {"DJANGO_SETTINGS_MODULE": "airship.settings", "LEADING_ZERO": "010",
                           "DEBUG": "yes", "VERSION": "1.10", "EMPTY": ""}
    # defaults.health / defaults.gate merge key by key with the service's own.
    assert a.health == Health(path="/ready", timeout=9.0, interval=0.5, expect_status="2xx")
    assert a.health.accepts(204) and not a.health.accepts(301)
    assert (a.gate.bake, a.gate.min_requests, a.gate.on_inconclusive, a.gate.warmup) == (
        45.0, 50, "proceed", 5.0)
    assert (a.root, a.keep_releases, a.rollout, a.python, a.pip_args, a.parallel) == (
        "/opt/apps", 5, (1, "100%"), "python3", "", 3)
    assert a.dir_on(cfg.hosts["web-0"]) == "/opt/apps/airship"
    assert a.bind_on(cfg.hosts["web-0"]) == "10.0.0.10:8000"

    w = cfg.service("worker")
    assert w.hosts == ("demo", "web-0") and w.role is None
    assert w.repo == os.path.normpath(tmp_path / "../repos/worker.git")
    assert (w.command, w.build, w.app, w.bind, w.requirements) == (
        "bin/worker --port 9000", "make", None, "0.0.0.0:9000", None)
    assert (w.migrate, w.collectstatic, w.reload_signal, w.keep_releases) == (
        False, False, "restart", 2)
    assert w.gate == Gate(5.0, 60.0, 0.05, 1.5, 0.001, 0.01, 0.001, 0.99, 0.95, 100, 2,
                          "proceed", 0.2)
    assert w.health == Health("/healthz", 9.0, 0.5, 200)
    assert w.dir_on(demo) == str(tmp_path / ".demo/srv/worker")  # the host's root wins
    assert w.dir_on(cfg.hosts["web-0"]) == "/srv/worker"


def test_model_is_immutable(tmp_path):
    cfg = load(write(tmp_path, FULL))
    svc = cfg.service("airship")
    with pytest.raises(dataclasses.FrozenInstanceError):
        svc.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        svc.env["X"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.services["x"] = svc  # type: ignore[index]
    hash(cfg)


MINIMAL = """\
hosts:
  web-0: {local: true}
services:
  skiff: {kind: flask, repo: /r.git, hosts: [web-0], app: skiff.app:app, port: 8001}
"""


def test_templates_directory_is_relative_to_services_yaml_and_must_exist(tmp_path):
    text = MINIMAL + "defaults: {templates: ops/templates}\n"
    with pytest.raises(ConfigError, match=r"services.skiff.templates: .*ops/templates is not a "
                                          r"directory"):
        load(write(tmp_path, text))
    (tmp_path / "ops/templates").mkdir(parents=True)
    assert load(write(tmp_path, text)).service("skiff").templates == str(tmp_path / "ops/templates")


def test_minimal_config_defaults(tmp_path):
    cfg = load(write(tmp_path, MINIMAL))
    host = cfg.hosts["web-0"]
    assert (host.address, host.port, host.user, host.root, host.identity_file) == (
        "127.0.0.1", None, None, None, None)  # port None: the ssh config's, else 22
    assert cfg.ssh == config.Ssh(os.path.expanduser("~/.ssh/known_hosts"), None, 10,
                                 os.path.expanduser("~/.ssh/config"), False)
    assert cfg.service("skiff").templates is None
    assert cfg.roles == {}
    s = cfg.service("skiff")
    assert (s.migrate, s.collectstatic, s.root, s.rollout, s.env) == (
        False, False, "/srv", (1, "50%", "100%"), {})
    assert s.health == Health("/healthz", 5.0, 0.5, 200)
    assert s.gate == Gate(5.0, 30.0, 0.05, 1.5, 0.001, 0.01, 0.001, 0.99, 0.95, 100, 2,
                          "rollback", 0.2)
    assert s.dir_on(host) == "/srv/skiff"


def test_migration_keys(tmp_path):
    cfg = parse(svc(GOOD + "post_deploy_migrations: [flights.0004_remove_flight_gate]\n",
                    head=HOSTS + "defaults:\n  migrations: {strict: true}\n"),
                "services.yaml", str(tmp_path))
    s = cfg.service("airship")
    assert s.post_deploy_migrations == ("flights.0004_remove_flight_gate",)
    assert s.migrations == config.model.Migrations(strict=True)
    plain = parse(svc(GOOD), "services.yaml", str(tmp_path)).service("airship")
    assert (plain.post_deploy_migrations, plain.migrations.strict) == ((), False)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    cfg = load(write(tmp_path, """\
        hosts:
          web-0: &h {local: true, port: 22}
          web-1: {<<: *h, address: 127.0.0.2}
        services:
          skiff: {kind: flask, repo: /r.git, hosts: [web-0, web-1], app: a:b, port: 8001}
        """))
    assert cfg.hosts["web-1"].address == "127.0.0.2" and cfg.hosts["web-1"].local


def test_sample_services_yaml_loads():
    cfg = load(ROOT / "services.yaml")
    assert list(cfg.hosts) == ["web-0", "web-1", "web-2"]
    for i, host in enumerate(cfg.hosts.values()):
        assert host.local and host.address == f"127.0.0.{11 + i}"
        assert host.root == str(ROOT / f".demo/web-{i}/srv")
    assert cfg.roles == {"web": ("web-0", "web-1", "web-2")}
    airship, skiff = cfg.service("airship"), cfg.service("skiff")
    assert (airship.kind, airship.app, airship.port, airship.hosts) == (
        "django", "airship.wsgi:application", 8000, ("web-0", "web-1", "web-2"))
    assert airship.repo == str(ROOT / ".demo/origin/airship.git")
    assert dict(airship.env) == {"DJANGO_SETTINGS_MODULE": "airship.settings"}
    assert airship.health.path == "/healthz"
    assert (skiff.kind, skiff.app, skiff.port, skiff.repo) == (
        "flask", "skiff.app:app", 8001, str(ROOT / ".demo/origin/skiff.git"))
    assert airship.dir_on(cfg.hosts["web-1"]) == str(ROOT / ".demo/web-1/srv/airship")


def test_reference_doc_is_generated_from_the_declarations():
    text = reference_markdown()
    for section in (config.TOP, config.SSH, config.HOST, config.SERVICE, config.HEALTH,
                    config.GATE):
        for name in section:
            assert f"| `{name}` |" in text
    assert (ROOT / "docs/services-reference.md").read_text() == text, \
        "regenerate: python docs/gen_reference.py"


# --------------------------------------------------------------------------- broken configs

HOSTS = """\
hosts:
  web-0: {address: 10.0.0.10}
  web-1: {address: 10.0.0.11}
roles:
  web: [web-0, web-1]
"""  # 5 lines: services start on line 6


def svc(body: str, head: str = HOSTS) -> str:
    """HOSTS, then `services: airship:` (lines 6-7), then `body` from line 8."""
    return head + "services:\n  airship:\n" + textwrap.indent(textwrap.dedent(body), "    ")


GOOD = """\
kind: django
repo: git@example.com:airship.git
role: web
app: airship.wsgi:application
port: 8000
"""

# (id, yaml, expected line, fragment of the message)
BROKEN = [
    ("yaml-syntax", "hosts:\n  web-0:\n    address: 10.0.0.10\n   port: 22\n", 4,
     "invalid YAML, column 4"),
    ("yaml-unclosed-flow", "hosts:\n  web-0: {address: 10.0.0.10\nservices: {}\n", 3,
     "while parsing a flow mapping at line 2"),
    ("yaml-tab", "hosts:\n\tweb-0: {}\n", 2, "'\\t' that cannot start any token"),
    ("yaml-python-tag", "hosts: !!python/object/apply:os.system [ls]\n", 1, "no tags"),
    ("empty-file", "", None, "the file is empty"),
    ("only-comments", "# nothing yet\n", None, "the file is empty"),
    ("top-level-list", "- hosts\n- services\n", 1, "the top level must be a mapping"),
    ("unknown-top-level", HOSTS + "servces:\n  airship: {}\n", 6,
     "top level: unknown key 'servces'. Did you mean 'services'?"),
    ("no-services", HOSTS, None, "no services: section"),
    ("duplicate-top-level", HOSTS + "hosts: {}\n", 6,
     "top level: duplicate key 'hosts' (first on line 1)"),
    ("duplicate-service-key", svc(GOOD + "workers: 3\nport: 8001\n"), 14,
     "services.airship: duplicate key 'port' (first on line 12)"),
    ("duplicate-env-key", svc(GOOD + "env:\n  A: 1\n  B: 2\n  A: 3\n"), 16,
     "services.airship.env: duplicate key 'A' (first on line 14)"),
    ("unknown-service-key", svc(GOOD + "prot: 8001\n"), 13,
     "services.airship: unknown key 'prot'. Did you mean 'port'?"),
    ("gate-key-in-service", svc(GOOD + "bake: 60\n"), 13, "'bake' belongs in the gate: mapping"),
    ("unknown-health-key", svc(GOOD + "health:\n  path: /h\n  timout: 3\n"), 15,
     "services.airship.health: unknown key 'timout'. Did you mean 'timeout'?"),
    ("port-not-int", svc(GOOD.replace("port: 8000", "port: eighty")), 12,
     "services.airship.port: expected an integer from 1 to 65535, got 'eighty'."),
    ("port-quoted", svc(GOOD.replace("port: 8000", 'port: "8000"')), 12,
     "got '8000'; write the number without quotes"),
    ("port-out-of-range", svc(GOOD.replace("port: 8000", "port: 70000")), 12,
     "services.airship.port: expected an integer from 1 to 65535, got 70000."),
    ("workers-bool", svc(GOOD + "workers: true\n"), 13,
     "services.airship.workers: expected an integer >= 1, got true."),
    ("keep-releases-too-few", svc(GOOD + "keep_releases: 1\n"), 13,
     "expected an integer >= 2, got 1"),
    ("kind-unknown", svc(GOOD.replace("kind: django", "kind: rails")), 8,
     "expected one of django, flask, wsgi, command, got 'rails'"),
    ("missing-repo", svc(GOOD.replace("repo: git@example.com:airship.git\n", "")), 7,
     "services.airship: missing required key 'repo'"),
    ("repo-bad-scheme", svc(GOOD.replace("git@example.com:airship.git", "ftp://x/a.git")), 9,
     "expected a git URL"),
    ("repo-option-injection", svc(GOOD.replace("git@example.com:airship.git", "--upload-pack=x")),
     9, "expected a git URL or a path, got '--upload-pack=x'"),
    ("app-bad", svc(GOOD.replace("airship.wsgi:application", "airship.wsgi:app.wsgi_app")), 11,
     "services.airship.app: expected a gunicorn app reference"),
    ("app-factory-not-literal",
     svc(GOOD.replace("airship.wsgi:application", "'airship.wsgi:create_app(os.environ)'")), 11,
     "the arguments in 'create_app(os.environ)' must be Python literals"),
    ("app-missing", svc(GOOD.replace("app: airship.wsgi:application\n", "")), 7,
     "missing 'app', the WSGI application of a django service"),
    ("command-on-django", svc(GOOD + "command: ./run\n"), 13,
     "services.airship.command: not allowed for kind django"),
    ("build-on-flask", svc(GOOD.replace("django", "flask") + "build: make\n"), 13,
     "services.airship.build: not allowed for kind flask"),
    ("command-kind-without-command",
     svc(GOOD.replace("django", "command").replace("app: airship.wsgi:application\n", "")), 7,
     "missing 'command'"),
    ("app-on-command-kind", svc(GOOD.replace("django", "command") + "command: ./run\n"), 11,
     "services.airship.app: not allowed for kind command"),
    ("migrate-on-flask", svc(GOOD.replace("django", "flask") + "migrate: true\n"), 13,
     "only django services can migrate"),
    ("role-and-hosts", svc(GOOD + "hosts: [web-0]\n"), 13, "has both 'role' and 'hosts'"),
    ("neither-role-nor-hosts", svc(GOOD.replace("role: web\n", "")), 7, "no 'role' or 'hosts'"),
    ("unknown-role", svc(GOOD.replace("role: web", "role: wbe")), 10,
     "services.airship.role: unknown role 'wbe'; roles: web. Did you mean 'web'?"),
    ("unknown-host-in-hosts", svc(GOOD.replace("role: web", "hosts:\n  - web-0\n  - web-9")), 12,
     "services.airship.hosts: unknown host 'web-9'"),
    ("host-listed-twice", svc(GOOD.replace("role: web", "hosts: [web-0, web-0]")), 10,
     "'web-0' is listed twice"),
    ("service-name-shell", svc(GOOD).replace("  airship:", "  'air;ship $(rm)':"), 7,
     "invalid service name 'air;ship $(rm)': service names use lowercase letters"),
    ("service-name-space", svc(GOOD).replace("  airship:", "  air ship:"), 7,
     "invalid service name 'air ship'"),
    ("service-not-mapping", HOSTS + "services:\n  airship: django\n", 7,
     "services.airship: expected a mapping of service settings, got 'django'"),
    ("service-null", HOSTS + "services:\n  airship:\n", 7, "got nothing"),
    ("rollout-bad-item", svc(GOOD + "rollout:\n  - 1\n  - 150%\n  - 100%\n"), 15,
     "services.airship.rollout[1]: expected a percentage above 0% and at most 100%, got '150%'"),
    ("rollout-zero", svc(GOOD + "rollout: [0, '100%']\n"), 13,
     "expected a positive number of hosts, got 0"),
    ("rollout-word", svc(GOOD + "rollout: [1, half]\n"), 13,
     "expected a number of hosts or a percentage like \"50%\", got 'half'"),
    ("env-non-scalar", svc(GOOD + "env:\n  A: ok\n  B: [1, 2]\n"), 15,
     "services.airship.env.B: expected a string, {from_env: NAME} or {from_file: PATH}, "
     "got a list"),
    ("env-secret-two-keys", svc(GOOD + "env:\n  A: {from_env: X, from_file: y}\n"), 14,
     "a secret is a mapping of one key, from_env or from_file (got from_env, from_file)"),
    ("env-secret-typo", svc(GOOD + "env:\n  A: ok\n  B: {form_env: X}\n"), 15,
     "(got form_env)"),
    ("env-secret-bad-name", svc(GOOD + "env:\n  A: {from_env: 'X Y'}\n"), 14,
     "'X Y' is not an environment variable name"),
    ("env-secret-empty-path", svc(GOOD + "env:\n  A: {from_file: ''}\n"), 14,
     "from_file takes a path"),
    ("shared-absolute", svc(GOOD + "shared: [media/, /etc/passwd]\n"), 13,
     "services.airship.shared[1]: expected a path relative to the release"),
    ("shared-dotdot", svc(GOOD + "shared:\n  - media/\n  - ../up/\n"), 15,
     "without '.', '..' or empty parts"),
    ("shared-shell", svc(GOOD + "shared:\n  - 'a;b'\n"), 14, "use letters, digits"),
    ("shared-reserved", svc(GOOD + "shared:\n  - .deploy/env\n"), 14,
     "written by deploytools in every release"),
    ("shared-nested", svc(GOOD + "shared:\n  - media/\n  - media/thumbs/\n"), 15,
     "'media/thumbs/' is inside 'media/', which is shared already"),
    ("shared-dir-and-file", svc(GOOD + "shared:\n  - data/\n  - data\n"), 15,
     "listed twice (once as a directory"),
    ("env-null", svc(GOOD + "env:\n  A:\n"), 14, "write \"\" for an empty string"),
    ("env-bad-name", svc(GOOD + "env:\n  1BAD: x\n"), 14, "'1BAD' is not a valid environment"),
    ("health-path", svc(GOOD + "health: {path: healthz}\n"), 13,
     "services.airship.health.path: expected a URL path starting with /, got 'healthz'"),
    ("gate-choice", svc(GOOD + "gate:\n  on_inconclusive: maybe\n"), 14,
     "expected one of rollback, proceed, got 'maybe'"),
    ("gate-rate", svc(GOOD + "gate:\n  alpha_final: 2\n"), 14,
     "services.airship.gate.alpha_final: expected a number between 0 and 1"),
    ("bind-port-differs", svc(GOOD + "bind: 0.0.0.0:9000\n"), 13,
     "the port of '0.0.0.0:9000' must be the service's port 8000"),
    ("bind-malformed", svc(GOOD + "bind: localhost\n"), 13, "expected ADDRESS:PORT"),
    ("root-relative", svc(GOOD + "root: srv\n"), 13, "expected an absolute path, got 'srv'"),
    ("defaults-not-defaultable",
     HOSTS + "defaults:\n  root: /srv\n  port: 8000\n" + svc(GOOD, head=""), 8,
     "defaults: unknown key 'port'. 'port' cannot be set under defaults"),
    ("defaults-bad-value", HOSTS + "defaults:\n  parallel: 0\n" + svc(GOOD, head=""), 7,
     "defaults.parallel: expected an integer >= 1, got 0"),
    ("defaults-health-nested", HOSTS + "defaults:\n  health:\n    timeout: -1\n"
     + svc(GOOD, head=""), 8, "defaults.health.timeout: expected a number > 0, got -1"),
    ("port-conflict", svc(GOOD) + "  skiff:\n    kind: flask\n    repo: /s.git\n"
     "    hosts: [web-1]\n    app: s:app\n    port: 8000\n", 18,
     "services.skiff.port: port 8000 is already used by service 'airship' on host 'web-1'"),
    ("port-conflict-local-hosts", "hosts:\n  w: {local: true}\n  v: {local: true}\nservices:\n"
     "  a: {kind: flask, repo: /r, hosts: [w, v], app: a:b, port: 80}\n", 5,
     "local hosts 'w' and 'v' share the address 127.0.0.1"),
    ("unknown-host-in-role", "hosts:\n  web-0: {address: a}\nroles:\n  web:\n    - web-0\n"
     "    - web-9\n", 6, "roles.web: unknown host 'web-9'; declared hosts: web-0"),
    ("role-empty", "hosts:\n  web-0: {address: a}\nroles:\n  web: []\n", 4, "lists no hosts"),
    ("role-named-like-host", "hosts:\n  web-0: {address: a}\nroles:\n  web-0: [web-0]\n", 4,
     "'web-0' is the name of a host too"),
    ("host-without-address", "hosts:\n  web-0: {port: 22}\n", 2,
     "hosts.web-0: no address. Give its hostname or IP address"),
    ("host-bad-name", "hosts:\n  web_0!: {address: a}\n", 2, "invalid host name 'web_0!'"),
    ("host-unknown-key", "hosts:\n  web-0:\n    adress: a\n", 3,
     "hosts.web-0: unknown key 'adress'. Did you mean 'address'?"),
    ("host-local-not-bool", "hosts:\n  web-0: {local: 'true'}\n", 2,
     "hosts.web-0.local: expected true or false, got 'true'; write true or false without quotes"),
    ("remote-host-relative-root", "hosts:\n  web-0:\n    address: a\n    root: srv\n", 4,
     "expected an absolute path on a remote host"),
    ("ssh-timeout", "ssh:\n  connect_timeout: soon\n", 2,
     "ssh.connect_timeout: expected an integer >= 1, got 'soon'"),
    ("key-not-a-name", "hosts:\n  ? [a, b]\n  : {}\n", 2, "a key must be a plain name"),
    # Hostile values (issue 14): each a clean error, never a traceback or a broken host.
    ("yaml-nested-3000-flow", HOSTS + "x: " + "[" * 3000 + "]" * 3000 + "\n", 6,
     "invalid YAML, column 53: nested more than 50 levels deep, where a services.yaml needs 5"),
    ("yaml-nested-3000-block", "".join(" " * i + f"k{i}:\n" for i in range(3000)), 50,
     "nested more than 50 levels deep"),
    ("ssh-timeout-huge", "ssh:\n  connect_timeout: 100000000000000000000\n", 2,
     "ssh.connect_timeout: expected at most 600 seconds, got 100000000000000000000"),
    ("ssh-timeout-1e20", "ssh:\n  connect_timeout: 1e20\n", 2,
     "ssh.connect_timeout: expected an integer >= 1, got '1e20'"),
    ("ssh-timeout-float", "ssh:\n  connect_timeout: 1.0e+20\n", 2,
     "ssh.connect_timeout: expected an integer >= 1, got 1e+20"),
    ("health-timeout-huge", svc(GOOD + "health: {timeout: 1.0e+20}\n"), 13,
     "services.airship.health.timeout: expected at most 3600 seconds, got 1e+20"),
    ("gate-bake-huge", HOSTS + "defaults:\n  gate: {bake: 1.0e+300}\n" + svc(GOOD, head=""), 7,
     "defaults.gate.bake: expected at most 86400 seconds, got 1e+300"),
    ("root-space", svc(GOOD + "root: /srv/my apps\n"), 13,
     "services.airship.root: expected a path of letters, digits, '/', '.', '_', '+' and '-' "
     "(it is written into supervisord's config, systemd units and shell commands), "
     "got '/srv/my apps'."),
    ("root-percent", svc(GOOD + "root: /srv/%(here)s\n"), 13, "got '/srv/%(here)s'"),
    ("root-quote", svc(GOOD + "root: \"/srv/it's\"\n"), 13, "got \"/srv/it's\""),
    ("root-double-quote", svc(GOOD + "root: '/srv/a\"b'\n"), 13, "got '/srv/a\"b'"),
    ("root-shell", svc(GOOD + "root: /srv/$(reboot)\n"), 13, "got '/srv/$(reboot)'"),
    ("root-semicolon", svc(GOOD + "root: /srv/a;b\n"), 13, "got '/srv/a;b'"),
    ("post-deploy-name", svc(GOOD + "post_deploy_migrations: [0004_drop]\n"), 13,
     "expected a migration as app.name, e.g. flights.0004_remove_flight_gate, got '0004_drop'"),
    ("post-deploy-flask", svc(GOOD.replace("django", "flask")
                              + "post_deploy_migrations: [flights.0004_drop]\n"), 13,
     "only django services have migrations"),
    ("migrations-strict-type", svc(GOOD + "migrations: {strict: sometimes}\n"), 13,
     "services.airship.migrations.strict: expected"),
    ("defaults-root-space", HOSTS + "defaults:\n  root: /srv/a b\n" + svc(GOOD, head=""), 7,
     "defaults.root: expected a path of letters"),
    ("host-root-space", "hosts:\n  web-0:\n    address: a\n    root: /srv/a b\n", 4,
     "hosts.web-0.root: expected a path of letters, digits, '/', '.', '_', '+' and '-'"),
    ("host-root-percent", "hosts:\n  web-0: {address: a, root: /srv/100%}\n", 2,
     "hosts.web-0.root: expected a path of letters"),
]


@pytest.mark.parametrize("text,line,fragment", [c[1:] for c in BROKEN],
                         ids=[c[0] for c in BROKEN])
def test_broken_config(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.line == line, str(err)
    assert fragment in err.message, str(err)
    assert err.path == str(path)
    assert "\n" not in str(err)  # one paragraph
    assert str(err).startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_local_host_root_is_checked_where_it_resolves(tmp_path):
    # A relative root is safe as written, but lands under a directory with a space in it.
    base = tmp_path / "my fleet"
    base.mkdir()
    with pytest.raises(ConfigError) as info:
        load(write(base, "hosts:\n  w: {local: true, root: .demo/srv}\n"))
    assert info.value.line == 2
    assert ("hosts.w.root: expected a path of letters, digits, '/', '.', '_', '+' and '-' "
            in info.value.message)
    assert f"got '{base}/.demo/srv' (from '.demo/srv')." in info.value.message


@pytest.mark.parametrize("outputs", ["[./.deploy]", "[./.deploy/]", "[.deploy/env]",
                                     "['./.deploy/venv']", "[./REVISION]", "[./]", "[.]",
                                     "[build/./../.deploy]"])
def test_build_outputs_never_name_what_the_tool_writes(tmp_path, outputs):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, svc(HARBOR + f"build_outputs: {outputs}\n")))
    assert info.value.line == 14
    assert "services.airship.build_outputs[0]: expected " in info.value.message


def test_build_outputs_may_start_with_dot_slash(tmp_path):
    h = load(write(tmp_path, svc(HARBOR + "build_outputs: [./build/, dist/.deploy-notes]\n")))
    assert h.service("airship").build_outputs == ("./build/", "dist/.deploy-notes")


def test_the_model_checks_itself_outside_the_loader():
    # What health.judge and the rest get is always valid, however it was built.
    assert Gate(bake=2).bake == 2.0 and isinstance(Gate(bake=2).bake, float)
    for kwargs, message in [
        ({"bake": 1e20}, "gate.bake: expected at most 86400 seconds, got 1e+20"),
        ({"min_requests": True}, "gate.min_requests: expected an integer >= 1, got true"),
        ({"min_requests": "5"}, "gate.min_requests: expected an integer >= 1, got '5'; "
                                "write the number without quotes"),
    ]:
        with pytest.raises(ValueError) as info:
            Gate(**kwargs)
        assert str(info.value) == message
    with pytest.raises(ValueError, match=r"health.expect_status: expected an HTTP status"):
        Health(expect_status=700)
    with pytest.raises(ValueError, match=r"hosts.web-0.root: expected a path of letters"):
        config.Host("web-0", "10.0.0.1", root="/srv/a b")
    with pytest.raises(ValueError, match=r"services.x.kind: missing \(expected one of django"):
        config.Service("x")


def test_each_key_is_declared_once_as_a_model_field():
    # The tables the loader and the reference read are the models' declared fields.
    for table, model, derived in [(config.SSH, config.Ssh, set()),
                                  (config.HOST, config.Host, {"name"}),
                                  (config.HEALTH, Health, set()), (config.GATE, Gate, set()),
                                  (config.SERVICE, config.Service, {"name"}),
                                  (config.HOOK, config.Hook, set()),
                                  (config.STAGE, config.Stage, {"name"}),
                                  (config.TOP, config.Config, {"path", "stage"})]:
        names = [f.name for f in dataclasses.fields(model)]
        assert [n for n in names if n not in derived] == list(table)
        assert all(s.name == n and s.help for n, s in table.items())
    assert config.DEFAULTABLE == {n: s for n, s in config.SERVICE.items() if s.defaultable}


def test_check_command(tmp_path, capsys):
    assert check_main(["--check", str(write(tmp_path, MINIMAL))]) == 0
    assert capsys.readouterr().out.endswith(": ok: hosts web-0; roles -; services skiff\n")
    assert check_main(["--check", str(write(tmp_path, "hosts: [\n"))]) == 2
    assert capsys.readouterr().err.startswith(f"Error: {tmp_path}/services.yaml:")
    assert check_main(["--reference"]) == 2  # moved to docs/gen_reference.py


def test_the_good_service_of_the_broken_cases_loads(tmp_path):
    # Guards the table: each broken case breaks exactly what it says.
    assert load(write(tmp_path, svc(GOOD))).service("airship").hosts == ("web-0", "web-1")


def test_local_host_needs_no_address(tmp_path):
    cfg = load(write(tmp_path, "hosts:\n  web-0: {local: true}\n"
                               "services:\n  s: {kind: wsgi, repo: /r, hosts: [web-0], "
                               "app: m:app, port: 80}\n"))
    assert cfg.hosts["web-0"].address == "127.0.0.1"


def test_message_format(tmp_path):
    path = write(tmp_path, svc(GOOD.replace("port: 8000", "port: eighty")))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (f"{path}:12: services.airship.port: expected an integer "
                               "from 1 to 65535, got 'eighty'.")


# --------------------------------------------------------------------------- finding the file

def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml")
    assert info.value.path == str(tmp_path / "nope.yaml")
    assert "no such file" in info.value.message and "DEPLOYTOOLS_CONFIG=" in info.value.message


def test_path_from_environment_then_cwd(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL, name="fleet.yaml")
    monkeypatch.setenv("DEPLOYTOOLS_CONFIG", str(tmp_path / "fleet.yaml"))
    assert list(load().services) == ["skiff"]
    monkeypatch.delenv("DEPLOYTOOLS_CONFIG")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load()
    assert info.value.path == "services.yaml"
    write(tmp_path, MINIMAL)
    assert load().path == "services.yaml"


# --------------------------------------------------------------------------- lookups

@pytest.fixture
def fleet():
    return parse(textwrap.dedent("""\
        hosts:
          web-0: {local: true, address: 127.0.0.11}
          web-1: {local: true, address: 127.0.0.12}
          web-2: {local: true, address: 127.0.0.13}
          db-0: {local: true, address: 127.0.0.14}
        roles:
          web: [web-0, web-1, web-2]
          db: [db-0]
        services:
          airship: {kind: django, repo: /a.git, role: web, app: a.wsgi:application, port: 8000}
          skiff: {kind: flask, repo: /s.git, role: web, app: s:app, port: 8001}
        """), base_dir="/tmp")


@pytest.mark.parametrize("spec,expected", [
    ("web-1", ["web-1"]),
    ("web", ["web-0", "web-1", "web-2"]),
    ("web-2,web", ["web-2", "web-0", "web-1"]),
    ("db;web-0", ["db-0", "web-0"]),
    (" web-0 , web-0 ;", ["web-0"]),
    (["web-1", "db,web-1"], ["web-1", "db-0"]),
])
def test_select_hosts(fleet, spec, expected):
    assert fleet.select_hosts(spec) == expected


@pytest.mark.parametrize("spec,fragment", [
    ("web-9", "unknown host or role 'web-9' (hosts: web-0, web-1, web-2, db-0; roles: web, db)."),
    ("web,wbe", "unknown host or role 'wbe'"),
    ("wbe", "Did you mean 'web'?"),
    ("web-0;$(reboot)", "unknown host or role '$(reboot)'"),
    ("", "no host or role given"),
    (" ,; ", "no host or role given"),
])
def test_select_hosts_errors(fleet, spec, fragment):
    with pytest.raises(UsageError) as info:
        fleet.select_hosts(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name,fragment", [
    ("dinghy", "unknown service 'dinghy' (services.yaml defines: airship, skiff)."),
    ("skif", "Did you mean 'skiff'?"),
    ("a;rm -rf /", "invalid service name 'a;rm -rf /': service names use lowercase letters"),
    ("Airship", "invalid service name 'Airship'"),
    ("", "invalid service name ''"),
])
def test_service_errors(fleet, name, fragment):
    with pytest.raises(UsageError) as info:
        fleet.service(name)
    assert fragment in str(info.value)


def test_service_found(fleet):
    assert fleet.service("skiff").app == "s:app"


# --------------------------------------------------------------------------- kind command

HARBOR = """\
kind: command
repo: git@example.com:harbor.git
role: web
build: sh build.sh
command: java -jar build/harbor.jar
port: 8300
"""


def test_command_kind_defaults(tmp_path):
    h = load(write(tmp_path, svc(HARBOR))).service("airship")
    assert (h.command, h.build, h.build_inputs, h.build_outputs) == (
        "java -jar build/harbor.jar", "sh build.sh", None, None)
    assert h.reload_signal == "restart"  # a JVM exits on HUP: restart unless told otherwise
    assert h.health.timeout == 30.0  # a JVM starts slowly
    assert h.access_log == "log/airship.log"  # its own output
    w = load(write(tmp_path, svc(GOOD))).service("airship")
    assert (w.reload_signal, w.health.timeout, w.access_log) == ("HUP", 5.0, "log/access.log")


def test_command_kind_keys(tmp_path):
    h = load(write(tmp_path, svc(HARBOR + "build_inputs: [src/, build.sh, '*.gradle']\n"
                                          "build_outputs: [build/, dist/app.jar]\n"
                                          "reload_signal: USR2\nhealth: {timeout: 4}\n"))
             ).service("airship")
    assert h.build_inputs == ("src/", "build.sh", "*.gradle")
    assert h.build_outputs == ("build/", "dist/app.jar")
    assert (h.reload_signal, h.health.timeout) == ("USR2", 4.0)


def test_health_timeout_in_defaults_applies_to_command_too(tmp_path):
    text = HOSTS + "defaults:\n  health: {timeout: 12}\n" + svc(HARBOR, head="")
    assert load(write(tmp_path, text)).service("airship").health.timeout == 12.0


@pytest.mark.parametrize("text,line,fragment", [
    (svc(GOOD + "build_inputs: [src/]\n"), 13,
     "services.airship.build_inputs: not allowed for kind django (only for kind command)"),
    (svc(GOOD.replace("django", "wsgi") + "build_outputs: [build/]\n"), 13,
     "services.airship.build_outputs: not allowed for kind wsgi"),
    (svc(GOOD.replace("django", "flask") + "build: make\n"), 13,
     "services.airship.build: not allowed for kind flask"),
    (svc(HARBOR.replace("build: sh build.sh\n", "") + "build_outputs: [build/]\n"), 13,
     "services.airship.build_outputs: needs `build`"),
    (svc(HARBOR + "workers: 4\n"), 14, "services.airship.workers: not allowed for kind command"),
    (svc(HARBOR + "build_inputs: [/etc/passwd]\n"), 14,
     "expected a path or glob relative to the repository such as src/ or *.java, got "
     "'/etc/passwd'"),
    (svc(HARBOR + "build_inputs: [../x]\n"), 14, "relative to the repository"),
    (svc(HARBOR + "build_inputs: []\n"), 14, "at least one item"),
    (svc(HARBOR + "build_inputs: src/\n"), 14, "expected a list"),
    (svc(HARBOR + "build_inputs: [src/, src/]\n"), 14, "'src/' is listed twice"),
    (svc(HARBOR + "build_outputs: ['build/*.jar']\n"), 14,
     "expected a file or directory the build writes in the release"),
    (svc(HARBOR + "build_outputs: [.deploy]\n"), 14, "got '.deploy'"),
    (svc(HARBOR + "build_outputs: [/opt/out]\n"), 14, "expected a path relative to the repo"),
    (svc(HARBOR + "reload_signal: KILL\n"), 14,
     "expected one of HUP, USR1, USR2, TERM, restart, got 'KILL'"),
    (svc(HARBOR.replace("command: java -jar build/harbor.jar",
                        "command: |\n  java -jar a.jar\n  echo x")), 12,
     "services.airship.command: expected a single line of shell"),
    (svc(HARBOR.replace("command: java -jar build/harbor.jar", "command: ' '")), 12,
     "expected a single line of shell"),
    (svc(HARBOR + "migrate: true\n"), 14, "only django services can migrate"),
], ids=["inputs-on-django", "outputs-on-wsgi", "build-on-flask", "outputs-without-build",
        "workers-on-command", "inputs-absolute", "inputs-dotdot", "inputs-empty",
        "inputs-not-list", "inputs-twice", "outputs-glob", "outputs-deploy-dir",
        "outputs-absolute", "signal-unknown", "command-multiline", "command-blank",
        "migrate-on-command"])
def test_command_kind_broken(tmp_path, text, line, fragment):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text))
    assert e.value.line == line
    assert fragment in str(e.value)


def test_reference_documents_both_kinds():
    text = reference_markdown()
    assert "## Kinds" in text
    for key in ("build_inputs", "build_outputs", "reload_signal", "command"):
        assert f"| `{key}` |" in text
    assert '`"HUP"`; `"restart"` for command' in text


@pytest.mark.parametrize("kind_and_app,given,expected", [
    ("kind: django\napp: airship.wsgi:application\n", "", ("media/",)),  # as before
    ("kind: flask\napp: skiff.app:app\n", "", ()),
    ("kind: django\napp: airship.wsgi:application\n", "shared: []\n", ()),
    ("kind: django\napp: airship.wsgi:application\n", "shared: [uploads/, .env]\n",
     ("uploads/", ".env")),  # replaces the default
    ("kind: command\ncommand: ./run\n", "shared:\n  - instance/\n  - conf/local.cfg\n",
     ("instance/", "conf/local.cfg")),
])
def test_shared_paths_default_by_kind(tmp_path, kind_and_app, given, expected):
    text = svc(kind_and_app + "repo: git@example.com:airship.git\nrole: web\nport: 8000\n"
               + given)
    assert parse(text, str(tmp_path / "services.yaml")).service("airship").shared == expected
