"""The model of services.yaml: immutable, typed, and the one place each key is declared.

Each field whose default is a ``setting(...)`` is a key of services.yaml, in the
order the reference lists them; fields without one (a host's or a service's
``name``, the config's ``path``) come from elsewhere in the file. To add a key:
add a field here, then regenerate the reference (``python docs/gen_reference.py``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from deploytools.errors import UsageError

from .declare import (
    BOOL, BY_KIND, DJANGO_ONLY, INT, NUMBER, PATH, REQUIRED, ROLLOUT_STEP, STATUS, STR,
    Declared, ListOf, MapOf, Section, Setting, Type, absolute_path, address, all_of, app_ref,
    at_least, at_least_one, at_most, bind_address, branch_name, build_output, did_you_mean,
    env_name, env_value, host_root, installer_env_name, migration_name, non_negative, nonblank, one_of, pathspec, port_number,
    positive, probability, program, rate, relative_path, repo_url, rollout_step, safe_path,
    shared_path,
    setting, settings_of, shell_line, single_line, small_rate, status, tag_prefix, url_path,
    user_name,
)
from .secrets import EXPECT as SECRET_EXPECT, Secret, coerce as coerce_env_value

SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

SERVICE_NAME_RULE = ("service names use lowercase letters, digits, '-' and '_', and start with a "
                     "letter (a name becomes a directory, a supervisord program and part of shell "
                     "commands)")
HOST_NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or a digit"

KINDS = ("django", "flask", "wsgi", "command")
WSGI_KINDS = ("django", "flask", "wsgi")
RELOAD_SIGNALS = ("HUP", "USR1", "USR2", "TERM", "restart")
SOCKET_MODES = ("inherit", "bind")  # see deploytools/handoff.py
_HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:{}-]+")


def haproxy_name(value: str) -> None:
    if not _HAPROXY_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an HAProxy name: use letters, digits, '-', '_', "
                         "'.' and ':' ({host} stands for the host's name)")


haproxy_name.expect = "an HAProxy name"  # type: ignore[attr-defined]
# Defaults that differ by kind. gunicorn reloads gracefully on HUP; any other
# program is restarted unless it says how it reloads (a JVM, for one, exits on HUP).
# And a program may start slowly (a JVM, a big app): readiness waits longer for it.
RELOAD_DEFAULT = {"command": "restart"}  # else HUP
HEALTH_TIMEOUT_DEFAULT = {"command": 30.0}  # else Health.timeout's default
INCONCLUSIVE_ACTIONS = ("rollback", "proceed")
INSTALL_METHODS = ("auto", "requirements", "uv", "poetry", "pipenv", "project", "none")


class FrozenMap(Mapping):
    """A read-only, hashable mapping that keeps its order."""

    def __init__(self, data: Any = ()):
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


_DAY = 86400


@dataclass(frozen=True)
class Ssh(Declared):
    """`ssh:`: how every host is reached."""

    known_hosts: str = setting(  # expanded, absolute once loaded
        PATH, "~/.ssh/known_hosts", nonblank,
        "known_hosts file that every host key is checked against (strict checking is "
        "always on). `~` is expanded; a relative path is resolved against the directory "
        "of services.yaml.")
    identity_file: str | None = setting(
        PATH, None, nonblank,
        "Private key for hosts that do not set their own (default: your SSH agent and keys).")
    connect_timeout: int = setting(
        INT, 10, all_of(at_least(1), at_most(600, "seconds")),
        "Seconds to wait for an SSH connection.")
    config_file: str = setting(
        PATH, "~/.ssh/config", nonblank,
        "OpenSSH client config read for every host's `address` and every ProxyJump hop: "
        "Host aliases, HostName, Port, User, IdentityFile, ProxyJump. services.yaml values "
        "win. A missing file is no config.")
    forward_agent: bool = setting(
        BOOL, False, None,
        "Forward your SSH agent to the hosts (never done unless this is true, whatever the "
        "ssh config says).")
    command_timeout: float = setting(
        NUMBER, 900.0, all_of(positive, at_most(_DAY, "seconds")),
        "Seconds one remote step (staging a host, an activation, a history write) may "
        "take. A host that does not finish in time counts as not answering: its wave "
        "fails and the deploy rolls back, instead of hanging.")
    keepalive: int = setting(
        INT, 10, all_of(at_least(0), at_most(3600, "seconds")),
        "Seconds between SSH keepalive messages (0: none), so a dead link is noticed.")


@dataclass(frozen=True)
class Host(Declared):
    """`hosts.<name>:`: one machine."""

    name: str
    address: str = setting(
        STR, None, address,
        "Hostname or IP address: where SSH connects and where health checks reach the "
        "service. Required unless `local`; a local host defaults to 127.0.0.1.",
        doc_default="required; `\"127.0.0.1\"` if local")
    port: int | None = setting(INT, None, port_number,
                               "SSH port (default: the ssh config's Port for this address, "
                               "else 22).")
    user: str | None = setting(STR, None, user_name,
                               "SSH user (default: your SSH configuration's).")
    local: bool = setting(
        BOOL, False, None,
        "Run this host's commands on this machine, without SSH (the demo fleet).")
    root: str | None = setting(  # absolute once loaded; overrides Service.root on this host
        PATH, None, host_root,
        "Overrides the service `root` on this host. Absolute for a remote host; for a local "
        "host a relative path is resolved against the directory of services.yaml (how a "
        "demo fleet gives each host its own directory). Like the service `root`, it may "
        "hold only letters, digits, '/', '.', '_', '+' and '-'.")
    identity_file: str | None = setting(  # the host's own, else ssh.identity_file; expanded
        PATH, None, nonblank,
        "Private key for this host (default: `ssh.identity_file`). `~` is expanded.")

    def _where(self) -> str:
        return f"hosts.{self.name}"


@dataclass(frozen=True)
class Health(Declared):
    """`health:`: the readiness probe after every activation."""

    path: str = setting(
        STR, "/healthz", url_path,
        "Path probed on the host's address and the service's port after every activation.")
    timeout: float = setting(
        NUMBER, 5.0, all_of(positive, at_most(3600, "seconds")),
        "Seconds until a host must answer the probe after an activation (also the timeout "
        "of each request). Kind command waits longer by default: a JVM starts slowly.",
        doc_default="`5`; `30` for command")
    interval: float = setting(NUMBER, 0.5, all_of(positive, at_most(3600, "seconds")),
                              "Seconds between probes while waiting.")
    expect_status: int | str = setting(  # a status code, or "2xx"
        STATUS, 200, status,
        "Status a ready host answers: a code, or `\"2xx\"` for any 2xx.")

    def accepts(self, status: int) -> bool:
        if self.expect_status == "2xx":
            return 200 <= status <= 299
        return status == self.expect_status




@dataclass(frozen=True)
class Gate(Declared):
    """`gate:`: every number of the canary decision (health.judge reads them as they are)."""

    warmup: float = setting(
        NUMBER, 5.0, all_of(non_negative, at_most(_DAY, "seconds")),
        "Seconds after activation that are not judged (caches, first connections).")
    bake: float = setting(
        NUMBER, 30.0, all_of(positive, at_most(_DAY, "seconds")),
        "Seconds of traffic on the new hosts judged after the warm-up.")
    max_error_rate: float = setting(
        NUMBER, 0.05, rate,
        "Ceiling C: fail when the error rate of the new hosts is surely above it.")
    ratio: float = setting(
        NUMBER, 1.5, at_least_one,
        "r: how many times the baseline's error rate the new hosts may have.")
    alpha_interim: float = setting(
        NUMBER, 0.001, probability,
        "Significance of the relative test at interim checks (strict: we look often).")
    alpha_final: float = setting(
        NUMBER, 0.01, probability,
        "Significance of the relative test at the end of the bake.")
    min_diff: float = setting(
        NUMBER, 0.001, small_rate,
        "Smallest difference of error rates that may fail a deploy (0.001 = 0.1 points).")
    ceiling_confidence: float = setting(
        NUMBER, 0.99, probability,
        "Confidence of the lower bound compared with the ceiling.")
    pass_confidence: float = setting(
        NUMBER, 0.95, probability,
        "Confidence of the upper bound that must be under the limit to pass.")
    # 100 because the tool's own probes (every 0.2 s over a 25-30 s window)
    # reach it on an idle service, and with 0 errors in 100 requests the 95%
    # upper bound is 3.6%: enough to tell a working release from the 5% ceiling.
    min_requests: int = setting(
        INT, 100, at_least(1),
        "Requests the new hosts must serve before they can pass.")
    max_extensions: int = setting(
        INT, 2, at_least(0),
        "Times an inconclusive bake is extended before `on_inconclusive` applies.")
    on_inconclusive: str = setting(
        STR, "rollback", one_of(*INCONCLUSIVE_ACTIONS),
        "What an inconclusive gate does after its extensions.")
    probe_interval: float = setting(
        NUMBER, 0.2, all_of(positive, at_most(3600, "seconds")),
        "Seconds between the tool's own probes of each new host during the bake.")
    source: str = setting(
        STR, "logs", one_of("logs", "haproxy"),
        "Where the gate counts requests and errors besides its own probes: `logs`, each "
        "host's access log; `haproxy`, HAProxy's per-server counters (`lb:` required): "
        "responses 5xx, connection and response errors, as the load balancer saw them.")


@dataclass(frozen=True)
class Lb(Declared):
    """`lb:`: HAProxy in front of the service, driven through its admin socket."""

    host: str = setting(
        STR, REQUIRED, nonblank,
        "Host (from `hosts:`) that runs HAProxy; reached over SSH like any host.")
    socket: str = setting(
        PATH, REQUIRED, absolute_path,
        "Path of HAProxy's admin socket on that host (`stats socket PATH level admin`).")
    backend: str = setting(STR, REQUIRED, haproxy_name, "HAProxy backend that holds the service's hosts.")
    server: str = setting(
        STR, "{host}", haproxy_name,
        "HAProxy server name of each host; `{host}` stands for the host's name.")
    drain_timeout: float = setting(
        NUMBER, 30.0, all_of(non_negative, at_most(3600, "seconds")),
        "Seconds to wait for a drained host's sessions to reach 0 before its restart.")



def no_nul(value: str) -> None:
    if "\0" in value:
        raise ValueError("expected text without NUL bytes")


no_nul.expect = "text without NUL bytes"  # type: ignore[attr-defined]

# Where a deploy can run your commands (deploytools/hooks.py runs them).
HOOK_POINTS = ("before_stage", "after_stage", "before_wave", "after_wave", "after_deploy",
               "after_rollback", "on_failure")
HOOK_PLACES = ("controller", "hosts")


def hook_point(value: str) -> None:
    if value not in HOOK_POINTS:
        raise ValueError(f"unknown hook point {value!r} (hook points: {', '.join(HOOK_POINTS)})"
                         f"{did_you_mean(value, HOOK_POINTS)}")


@dataclass(frozen=True)
class Hook(Declared):
    """`hooks.<point>[i]:`: one shell command at a hook point."""

    run: str = setting(
        STR, REQUIRED, all_of(nonblank, no_nul),
        "Shell command (`/bin/sh -c`). The deploy's facts are in its environment as "
        "`DEPLOYTOOLS_*` variables (SERVICE, STAGE, RELEASE, COMMIT, HOSTS, WAVE, OUTCOME, "
        "...), never pasted into the command.")
    where: str = setting(
        STR, "controller", one_of(*HOOK_PLACES),
        "`controller`: once, on the machine running deploytools, in the directory of "
        "services.yaml. `hosts`: on each host of the point (the wave's hosts for "
        "`before_wave`/`after_wave`), in the release directory with the release's `env` "
        "and virtualenv.")
    timeout: float = setting(
        NUMBER, 300.0, all_of(positive, at_most(_DAY, "seconds")),
        "Seconds the hook may run; then it is killed and counts as failed.")
    waves: tuple[int, ...] | None = setting(
        ListOf("list of wave numbers", Setting("", INT, REQUIRED, at_least(1)), unique=True),
        None, None,
        "Only after (or before) these waves, e.g. `[1]`: a smoke test of the canary "
        "(`before_wave` and `after_wave` only).", doc_default="every wave")

    def _where(self) -> str:
        return "hook"
@dataclass(frozen=True)
class Migrations(Declared):
    """`migrations:`: how a deploy judges the migrations it applies (django only)."""

    strict: bool = setting(
        BOOL, False, None,
        "Refuse a deploy with a migration operation of unknown effect on the old code "
        "(`RunSQL`, `RunPython`, a custom operation) unless it is post-deploy or the deploy "
        "says force=true. Default: a warning.")


SSH = settings_of(Ssh)
HOST = settings_of(Host)
LB = settings_of(Lb)
HEALTH = settings_of(Health)
GATE = settings_of(Gate)
HOOK = settings_of(Hook)
MIGRATIONS = settings_of(Migrations)


ENV_VALUE = Type("string or secret", SECRET_EXPECT, coerce_env_value)


def _item(type_: Type, validator: Any = None) -> Setting:
    return Setting("", type_, REQUIRED, validator)


def _env_map(name_rule) -> MapOf:
    """`env`, a stage's `env`, `pip_env`: NAME: a string or a secret."""
    return MapOf("mapping NAME: string or secret", name_rule, _item(ENV_VALUE, env_value))


@dataclass(frozen=True)
class Service(Declared):
    """`services.<name>:`: one service; keys marked defaultable may come from `defaults:`."""

    name: str
    kind: str = setting(
        STR, REQUIRED, one_of(*KINDS),
        "`django`, `flask` or `wsgi` (run by gunicorn), or `command` (any program).")
    repo: str = setting(  # a URL, or an absolute local path once loaded
        STR, REQUIRED, repo_url,
        "Git repository: `git@host:path.git`, `ssh://`, `https://`, `file://`, or a local "
        "path (a relative one is resolved against the directory of services.yaml).")
    branch: str = setting(STR, "master", branch_name, "Branch that is deployed.")
    production_branch: str = setting(
        STR, "production", branch_name,
        "Branch that is moved to the deployed commit after a successful deploy.")
    tag_prefix: str = setting(
        STR, "production-", tag_prefix,
        "Prefix of the date tag that marks each successful deploy.")
    role: str | None = setting(
        STR, None, None,
        "Role whose hosts run the service. Give exactly one of `role` and `hosts`.",
        doc_default="one of role, hosts")
    hosts: tuple[str, ...] = setting(  # once loaded: from `role` or `hosts`, in declared order
        ListOf("list of host names", _item(STR), unique=True), None, None,
        "Host names that run the service, in this order (instead of `role`).",
        doc_default="one of role, hosts")
    app: str | None = setting(
        STR, None, app_ref,
        "WSGI application as gunicorn takes it: `module:name`, an app factory "
        "`module:create_app()` or `module:create_app(\"prod\", debug=False)` (literal "
        "arguments only), or `module` for `module:application`. Checked by gunicorn's own "
        "rule, without importing the app. Required for django, flask and wsgi; not allowed "
        "for command.", doc_default="required unless command")
    command: str | None = setting(
        STR, None, shell_line,
        "Command line that runs the service: `/bin/sh` execs it in `<dir>/current` (so the "
        "program itself gets supervisord's signals; put anything more complex in a script "
        "in the repository), with `env` plus `HOST` (the address of `bind`, by default the "
        "host's) and `PORT` in its environment. It must stay in the foreground and listen "
        "on `HOST:PORT`. Its output goes to `log/<service>.log`, where the canary gate "
        "counts access lines "
        "(`<ISO 8601 time> <client> \"<request line>\" <status> <bytes>`, or gunicorn's "
        "format). Required for kind command, not allowed otherwise.",
        doc_default="required for command")
    build: str | None = setting(
        STR, None, nonblank,
        "Shell command run in the release directory while staging (kind command only), "
        "with the release's environment; if it fails, the deploy stops before any host "
        "switches, with its output in the error.")
    build_inputs: tuple[str, ...] | None = setting(  # None: every file is a build input
        ListOf("list of paths and globs", _item(STR, pathspec), unique=True), None, None,
        "Files that affect the build, as git pathspecs: `src/` (or `src`) covers a "
        "directory, `*.java` any Java file (`*` also crosses `/`). A smart deploy reuses "
        "the live release's `build_outputs` when no file between the live commit and the "
        "target matches (kind command only).", doc_default="every file")
    build_outputs: tuple[str, ...] | None = setting(  # None: a build is never reused
        ListOf("list of paths", _item(PATH, build_output), unique=True), None, None,
        "What `build` makes in the release, e.g. `[build/]`: what a smart deploy hard-links "
        "(`cp -al`) from the live release instead of building, when the build inputs, the "
        "`build` command and the environment are unchanged. Unset: always build. The build "
        "must replace these files, not edit them in place (the links are shared).",
        doc_default="unset: always build")
    port: int = setting(
        INT, REQUIRED, port_number,
        "Port the service listens on; health checks connect to the host's address and "
        "this port.")
    bind: str | None = setting(  # None: <host address>:<port>, see bind_on()
        STR, None, bind_address,
        "Listen address `ADDRESS:PORT`, e.g. `0.0.0.0:8000`; its port must be `port`.",
        doc_default="host `address`:`port`")
    requirements: str | None = setting(
        PATH, "requirements.txt", relative_path,
        "Requirements file in the repository; `null` for none. A change builds a new "
        "virtualenv. With `install: auto`, a requirements file other than the default "
        "that is missing from a release is an error.", nullable=True)
    installer: str = setting(
        STR, "uv", one_of("pip", "uv"),
        "What installs into the virtualenv: `uv` (installed once from your index, through "
        "`pip_args`, into the service's `tools/` next to supervisor; `uv pip install` with "
        "uv's wheel cache, which every service of the same user on a host shares; a "
        "uv-built virtualenv has no pip in it), or `pip`. Where uv cannot be installed, "
        "pip builds the virtualenv, with a warning. A change builds a new virtualenv.",
        defaultable=True)
    install: str = setting(
        STR, "auto", one_of(*INSTALL_METHODS),
        "How the virtualenv gets the project's dependencies. `auto` looks in the release, "
        "in this order: the `requirements` file; `uv.lock` (`uv sync --frozen`, with the "
        "`tools/` uv, else a `uv` on the host's PATH); `poetry.lock`, then `Pipfile.lock` "
        "(their runtime packages, read on the controller into a pinned list installed with "
        "`--require-hashes`, then the project itself without dependencies if it has a "
        "pyproject.toml or setup.py; neither Poetry nor Pipenv is needed on the hosts); "
        "`pyproject.toml`, `setup.py` or `setup.cfg` (`pip install` of the project itself, "
        "non-editable); else nothing, with a warning. `requirements`, `uv`, `poetry`, "
        "`pipenv`, `project` or `none` choose one, and a missing file is an error. The "
        "virtualenv is rebuilt exactly when the chosen method's inputs change.",
        defaultable=True)
    env: Mapping[str, str | Secret] = setting(
        _env_map(env_name),
        None, None,
        "Environment variables. Scalars are taken as written (`010` stays `010`, `yes` "
        "stays `yes`); an empty value must be written `\"\"`. A secret stays out of this "
        "file: `{from_env: NAME}` takes the value of the variable NAME in the environment "
        "of the deploy (your shell, your CI's secrets), `{from_file: PATH}` the content of "
        "a file on the machine that deploys (`~` expanded, relative to services.yaml's "
        "directory, trailing newlines dropped). Read when a deploy starts: a missing or "
        "empty one stops it before any host is touched. Written only into the release's "
        "env file (0600); shown as `<secret>`. A changed value restarts the service at the "
        "next deploy.", doc_default="`{}`")
    workers: int = setting(INT, 2, at_least(1),
                           "gunicorn worker processes (not for kind command).")
    graceful_timeout: int = setting(
        INT, 30, all_of(at_least(1), at_most(_DAY, "seconds")),
        "Seconds a worker gets to finish its requests on a reload or a stop.")
    reload_signal: str = setting(
        STR, BY_KIND, one_of(*RELOAD_SIGNALS),
        "Signal sent to the service's main process to load a new release, or `restart` to "
        "stop and start it instead. gunicorn reloads gracefully on `HUP`; a `command` "
        "program is restarted unless you name the signal it reloads on (a JVM exits on "
        "HUP). A restart is always used when the virtualenv or environment changed.",
        doc_default="`\"HUP\"`; `\"restart\"` for command")
    socket: str = setting(
        STR, BY_KIND, one_of(*SOCKET_MODES),
        "Who owns the listening socket. `inherit`: supervisord holds it and hands it to the "
        "program as fd 0, in two slots restarted one at a time, so a restart (new "
        "virtualenv, changed env, `hard=true`) refuses no connection; gunicorn binds "
        "`fd://0`. `bind`: the program binds `HOST:PORT` itself and a restart drops "
        "connections until it listens again. A `command` program may inherit if it serves "
        "the listening socket it finds on fd 0 and two copies of it may run side by side.",
        doc_default="`inherit`; `bind` for command")
    lb: Lb | None = setting(
        Section("mapping (see lb)", LB), None, None,
        "HAProxy in front of the service, see below: each host is drained before a "
        "restart and put back once it serves.", defaultable=True,
        doc_default="unset: no load balancer")
    migrate: bool = setting(
        BOOL, DJANGO_ONLY, None,
        "Run `manage.py migrate` once per deploy, before the canary (django only).",
        doc_default="true for django")
    post_deploy_migrations: tuple[str, ...] | None = setting(
        ListOf("list of app.migration names", _item(STR, migration_name), unique=True),
        None, None,
        "Migrations that run once, on the first host, after the last wave passed and before "
        "the tag (like `post_deploy = True` on the Migration class): the ones that contract "
        "the schema (drop or rename a column or table) while the old code still serves "
        "during the waves (django only).", doc_default="none")
    migrations: Migrations = setting(
        Section("mapping (see migrations)", MIGRATIONS), None, None,
        "How pending migrations are judged, see below; merged key by key with "
        "`defaults.migrations`.", defaultable=True, doc_default="see below")
    migrate_command: str | None = setting(
        STR, None, shell_line,
        "Command that migrates the database for a non-Django service, e.g. `flask db "
        "upgrade` or `alembic upgrade head`: run once per deploy on the first host, in the "
        "new release with its environment and virtualenv, before the canary (the old code "
        "still serves meanwhile, so a migration must be compatible with it). A failure "
        "stops the deploy with no host switched. Not for django (it has `migrate`).",
        doc_default="unset")
    migrations_path: str | None = setting(
        PATH, None, relative_path,
        "Directory of the migrations in the repository, e.g. `migrations/versions`: a smart "
        "deploy runs `migrate_command` only when a file under it changed, and a plain one "
        "classifies the changed Alembic migrations' upgrade() operations (a column or table "
        "dropped or renamed, a column made NOT NULL without a server default: refused "
        "unless force=true; raw SQL: a warning). Unset: the command always runs, unchecked.",
        doc_default="unset")
    collectstatic: bool = setting(
        BOOL, DJANGO_ONLY, None,
        "Run `manage.py collectstatic` while staging each release (django only).",
        doc_default="true for django")
    shared: tuple[str, ...] = setting(  # once loaded: as written, `[]` for none
        ListOf("list of paths", _item(PATH, shared_path), unique=True, empty_ok=True),
        BY_KIND, None,
        "Files and directories that survive releases: each lives in `<dir>/shared/` and is "
        "linked into every release at the same path, replacing what the repository has "
        "there (staging warns). `media/` (a trailing `/`) is a directory, created on the "
        "first deploy; `config/local.py` is a file, which you create on each host: a "
        "missing one stops staging, before any host switches. A Flask app keeps its SQLite "
        "database in `instance/`. A list given here replaces the default (django: keep "
        "`media/` in it); `[]` shares nothing.",
        doc_default="`[media/]` for django, else `[]`")
    health: Health = setting(
        Section("mapping (see health)", HEALTH), None, None,
        "Readiness probe, see below; merged key by key with `defaults.health`.",
        defaultable=True, doc_default="see below")
    gate: Gate = setting(
        Section("mapping (see gate)", GATE), None, None,
        "Canary gate, see below; merged key by key with `defaults.gate`.",
        defaultable=True, doc_default="see below")
    root: str = setting(
        PATH, "/srv", all_of(absolute_path, safe_path),
        "Directory that holds `<root>/<service>` on every host (a host's `root` wins). "
        "Only letters, digits, '/', '.', '_', '+' and '-': it is written into supervisord's "
        "config, systemd units and shell commands.", defaultable=True)
    keep_releases: int = setting(
        INT, 5, at_least(2),
        "Releases kept on each host; the live one and the one before are never pruned.",
        defaultable=True)
    rollout: tuple[int | str, ...] = setting(  # host counts (int) and shares ("50%")
        ListOf("list of host counts and \"N%\"", _item(ROLLOUT_STEP, rollout_step)),
        (1, "50%", "100%"), None,
        "Waves, as cumulative targets: a number of hosts or a share of them. The first "
        "wave is the canary.", defaultable=True)
    python: str = setting(STR, "python3", program,
                          "Interpreter that creates the virtualenv.", defaultable=True)
    pip_args: str = setting(
        STR, "", single_line,
        "Extra arguments for `pip install`, e.g. `--index-url https://...`. They are on "
        "the installers' command lines on the hosts: put an index's credentials in "
        "`pip_env` instead.", defaultable=True)
    pip_env: Mapping[str, str | Secret] = setting(
        _env_map(installer_env_name),
        None, None,
        "Environment of pip and uv while they install into the service's virtualenvs and "
        "`tools/` on the hosts, and of nothing else: a private index with its token, e.g. "
        "`PIP_INDEX_URL: {from_env: INDEX_URL}` for pip and `UV_INDEX_URL: {from_env: "
        "INDEX_URL}` for uv. Values are written as in `env`, and may be secrets "
        "(`from_env`/`from_file`), read when a deploy starts. They reach the hosts inside "
        "the staging program, on its standard input: never on a command line, in the "
        "release or its env file; shown as `<secret>`, and a secret's value is replaced "
        "by `<secret>` in what hosts print. The virtualenv's key covers the names and "
        "the plain values, not a secret's value: a rotated token reuses it.",
        defaultable=True, doc_default="`{}`")
    parallel: int = setting(INT, 32, at_least(1), "Most hosts worked on at once (a thread "
                            "and an SSH connection each, on the controller).", defaultable=True)
    templates: str | None = setting(  # absolute once loaded; searched before ours
        PATH, None, nonblank,
        "Directory of your own templates (relative to services.yaml): a file there replaces "
        "the packaged template of the same name, e.g. `supervisord.conf.j2`.",
        defaultable=True)
    hooks: Mapping[str, tuple[Hook, ...]] = setting(
        MapOf("mapping point: list of hooks", hook_point,
              Setting("", ListOf("list of hooks", Setting("", Section("mapping (see hooks)",
                                                                      HOOK), REQUIRED)),
                      REQUIRED)), None, None,
        "Commands run at the deploy's hook points, see below. From `defaults:` as a whole "
        "(a service's `hooks` replaces it).", defaultable=True, doc_default="`{}`")
    production_requires: str | None = setting(
        STR, None, nonblank,
        "A stage (see `stages:`) where a commit must have been deployed successfully before "
        "the production stage takes it; any other commit is refused before anything is "
        "touched (exit 2).", defaultable=True)

    def _where(self) -> str:
        return f"services.{self.name}"

    def dir_on(self, host: Host) -> str:
        """The service's directory on `host`: <root>/<service>."""
        return (host.root or self.root).rstrip("/") + "/" + self.name

    def bind_on(self, host: Host) -> str:
        """The ADDRESS:PORT the service listens on, on `host`."""
        return self.bind or f"{host.address}:{self.port}"

    @property
    def access_log(self) -> str:
        """Where its access lines are, relative to its directory: gunicorn's access log,
        or for kind command the program's own output (supervisord's capture of it)."""
        return f"log/{self.name}.log" if self.kind == "command" else "log/access.log"


SERVICE = settings_of(Service)
DEFAULTABLE = {name: s for name, s in SERVICE.items() if s.defaultable}


@dataclass(frozen=True)
class Stage(Declared):
    """`stages.<name>:`: what selecting this stage changes in the rest of the file."""

    name: str
    hosts: Mapping[str, Host] = setting(
        Type("mapping name: host", "a mapping"), None, None,
        "Hosts while this stage is selected: added to `hosts:`, or replacing the host of the "
        "same name (another address, root, ...).", doc_default="`{}`")
    roles: Mapping[str, tuple[str, ...]] = setting(
        Type("mapping role: list of host names", "a mapping"), None, None,
        "Roles replaced while this stage is selected, e.g. `web: [stg-0, stg-1]`.",
        doc_default="`{}`")
    env: Mapping[str, str | Secret] = setting(
        _env_map(env_name),
        None, None, "Merged over every service's `env`, key by key (the stage wins); a "
        "value may be a secret (`from_env`/`from_file`) like a service's.",
        doc_default="`{}`")
    gate: Mapping[str, Any] = setting(
        Section("mapping (see gate)", GATE), None, None,
        "Merged over every service's `gate`, key by key (the stage wins).", doc_default="`{}`")
    rollout: tuple[int | str, ...] | None = setting(
        ListOf("list of host counts and \"N%\"", Setting("", ROLLOUT_STEP, REQUIRED,
                                                          rollout_step)), None, None,
        "Replaces every service's `rollout`.", doc_default="the service's")
    publish: bool | None = setting(
        BOOL, None, None,
        "Move `production_branch` and push a date tag after a successful deploy. Only the "
        "`production` stage does by default; another stage that publishes must name its "
        "own `production_branch` and `tag_prefix`.", doc_default="true for production")
    production_branch: str | None = setting(
        STR, None, branch_name, "The branch this stage publishes to (with `publish`).",
        doc_default="the service's")
    tag_prefix: str | None = setting(
        STR, None, tag_prefix, "Prefix of this stage's date tags (with `publish`).",
        doc_default="the service's")

    def _where(self) -> str:
        return f"stages.{self.name}"


STAGE = settings_of(Stage)
PRODUCTION = "production"  # the stage of a command line that names none
STAGE_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class Config(Declared):
    """The whole of services.yaml, checked."""

    path: str  # as given (named in errors)
    ssh: Ssh = setting(Section("mapping (see ssh)", SSH), None, None,
                       "SSH settings for every host.", doc_default="see below")
    hosts: Mapping[str, Host] = setting(
        Type("mapping name: host", "a mapping"), REQUIRED, None,
        "The machines, by name (see below).")
    roles: Mapping[str, tuple[str, ...]] = setting(
        Type("mapping role: list of host names", "a mapping"), None, None,
        "Named groups of declared hosts; role names follow the host name rule and must "
        "differ from host names.", doc_default="`{}`")
    defaults: Mapping[str, Any] = setting(  # as given; already applied to every service
        Section("mapping (see defaults)", DEFAULTABLE), None, None,
        "Values every service inherits: any service key marked *defaultable*.",
        doc_default="`{}`")
    services: Mapping[str, Service] = setting(
        Type("mapping name: service", "a mapping"), REQUIRED, None,
        "The services, by name (see below).")
    stages: Mapping[str, Stage] = setting(
        Type("mapping name: stage", "a mapping"), None, None,
        "Stages such as `staging` and `production`, each changing hosts, roles, `env`, "
        "`gate` and `rollout` while it is selected (see below).", doc_default="`{}`")
    stage: str = PRODUCTION  # the selected stage (derived: the command line's)

    @property
    def publishes(self) -> bool:
        """Does a successful deploy of the selected stage move the production branch
        and push a date tag? Production's does; another stage's only with `publish`."""
        declared = self.stages.get(self.stage)
        if declared is not None and declared.publish is not None:
            return declared.publish
        return self.stage == PRODUCTION

    def service(self, name: str) -> Service:
        """The service called `name`, or a UsageError that lists the ones defined."""
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            raise UsageError(f"invalid service name {name!r}: {SERVICE_NAME_RULE}.")
        if name not in self.services:
            defined = ", ".join(self.services) or "no services"
            raise UsageError(f"unknown service {name!r} ({os.path.basename(self.path)} defines: "
                             f"{defined}).{did_you_mean(name, self.services)}")
        return self.services[name]

    def select_hosts(self, spec: str | Sequence[str]) -> list[str]:
        """Host names for host and role names separated by ',' or ';', deduplicated, in order."""
        parts = [spec] if isinstance(spec, str) else list(spec)
        names: list[str] = []
        for part in parts:
            for entry in re.split(r"[,;]", part):
                entry = entry.strip()
                if not entry:
                    continue
                if entry in self.hosts:
                    found: Sequence[str] = (entry,)
                elif entry in self.roles:
                    found = self.roles[entry]
                else:
                    known = [*self.hosts, *self.roles]
                    raise UsageError(
                        f"unknown host or role {entry!r} (hosts: {', '.join(self.hosts)}; roles: "
                        f"{', '.join(self.roles) or 'none'}).{did_you_mean(entry, known)}")
                names += [n for n in found if n not in names]
        if not names:
            raise UsageError(f"no host or role given in {spec!r}.")
        return names


TOP = settings_of(Config)
