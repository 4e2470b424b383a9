"""services.yaml -> a typed, validated, immutable model.

Every key is declared exactly once below, as a ``Setting`` (name, type,
default, validator, one line of help), grouped by section. The loader, its
error messages and the reference (``python -m deploytools.config --reference``,
committed as docs/services-reference.md) all come from those declarations.

Errors are one paragraph each and point at the line:

    services.yaml:12: services.airship.port: expected an integer from 1 to 65535, got 'eighty'.

Usage::

    cfg = load()                      # $DEPLOYTOOLS_CONFIG or ./services.yaml
    svc = cfg.service("airship")
    for name in cfg.select_hosts("web-0,web-1"):
        print(svc.dir_on(cfg.hosts[name]))
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping, NoReturn, Sequence

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from deploytools.errors import ConfigError, UsageError

ENV_VAR = "DEPLOYTOOLS_CONFIG"
DEFAULT_PATH = "services.yaml"

SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SERVICE_NAME_RULE = ("service names use lowercase letters, digits, '-' and '_', and start with a "
                     "letter (a name becomes a directory, a supervisord program and part of shell "
                     "commands)")
HOST_NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or a digit"


# --------------------------------------------------------------------------- declarations

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a Setting default: the key must be given
_DJANGO_ONLY: Any = type("_DjangoOnly", (), {"__repr__": lambda self: "true for django"})()
_BY_KIND: Any = type("_ByKind", (), {"__repr__": lambda self: "depends on the kind"})()


class Type:
    """A value type: its name in the docs, the phrase used in errors, and a coercion.

    ``coerce(value, raw)`` gets the YAML value and, for scalars, the text as
    written; it returns the typed value or raises ValueError (with a hint, or empty).
    """

    def __init__(self, name: str, expect: str, coerce: Callable[[Any, Any], Any] | None = None):
        self.name = name
        self.expect = expect
        self.coerce = coerce


class ListOf(Type):
    def __init__(self, name: str, item: Setting, *, unique: bool = False):
        super().__init__(name, "a list")
        self.item = item
        self.unique = unique


class MapOf(Type):
    """A mapping with free-form keys (checked by ``key_check``), each value an ``item``."""

    def __init__(self, name: str, key_check: Callable[[str], None], item: Setting):
        super().__init__(name, "a mapping")
        self.key_check = key_check
        self.item = item


class Section(Type):
    """A nested mapping of declared settings (health, gate, ssh)."""

    def __init__(self, name: str, settings: Mapping[str, Setting]):
        super().__init__(name, "a mapping")
        self.settings = settings


@dataclass(frozen=True)
class Setting:
    name: str
    type: Type
    default: Any = None  # REQUIRED, a value, or None (unset; `null` is accepted)
    validator: Callable[[Any], None] | None = None  # raises ValueError naming the bad value
    help: str = ""
    defaultable: bool = False  # may be set under `defaults:` (services only)
    nullable: bool = False  # `null` is accepted even though there is a default
    doc_default: str | None = None  # shown instead of the default in the reference

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def expect(self) -> str:
        return getattr(self.validator, "expect", None) or self.type.expect


def _settings(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


# -- coercions: exact YAML types, so a typo never becomes a surprising value

def _to_str(value: Any, raw: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) and raw is not None:
        return raw  # as written: `branch: 1.10` is "1.10", not "1.1"
    raise ValueError("")


def _to_int(value: Any, raw: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        raise ValueError("write the number without quotes")
    raise ValueError("")


def _to_number(value: Any, raw: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value  # made a float once validated, so that errors show it as written
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:
            raise ValueError("write the number without quotes")
    raise ValueError("")


def _to_bool(value: Any, raw: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        raise ValueError("write true or false without quotes")
    raise ValueError("")


_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def _to_rollout_step(value: Any, raw: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _PERCENT.fullmatch(value)
        if m:
            return f"{m.group(1)}%"
    raise ValueError("")


def _to_status(value: Any, raw: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "2xx":
        return "2xx"
    raise ValueError("")


STR = Type("string", "a string", _to_str)
PATH = Type("path", "a path", _to_str)
INT = Type("integer", "an integer", _to_int)
NUMBER = Type("number", "a number", _to_number)
BOOL = Type("boolean", "true or false", _to_bool)
ROLLOUT_STEP = Type("host count or \"N%\"", "a number of hosts or a percentage like \"50%\"",
                    _to_rollout_step)
STATUS = Type("integer or \"2xx\"", "an HTTP status code or \"2xx\"", _to_status)


# -- validators: tiny, raise ValueError naming the bad value

def _show(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value)


def _rule(expect: str, ok: Callable[[Any], bool]) -> Callable[[Any], None]:
    def validate(value: Any) -> None:
        if not ok(value):
            raise ValueError(f"expected {expect}, got {_show(value)}")

    validate.expect = expect  # type: ignore[attr-defined]
    return validate


def at_least(n: int) -> Callable[[Any], None]:
    return _rule(f"an integer >= {n}", lambda v: v >= n)


def one_of(*choices: str) -> Callable[[Any], None]:
    return _rule("one of " + ", ".join(choices), lambda v: v in choices)


def _matches(expect: str, pattern: str) -> Callable[[Any], None]:
    regex = re.compile(pattern)
    return _rule(expect, lambda v: regex.fullmatch(v) is not None)


port_number = _rule("an integer from 1 to 65535", lambda v: 1 <= v <= 65535)
positive = _rule("a number > 0", lambda v: v > 0)
non_negative = _rule("a number >= 0", lambda v: v >= 0)
probability = _rule("a number between 0 and 1 (exclusive)", lambda v: 0 < v < 1)
rate = _rule("a rate above 0 and at most 1", lambda v: 0 < v <= 1)
small_rate = _rule("a rate from 0 to below 1", lambda v: 0 <= v < 1)
at_least_one = _rule("a number >= 1", lambda v: v >= 1)
nonblank = _rule("a non-empty string", lambda v: v.strip() != "")
absolute_path = _rule("an absolute path", lambda v: v.startswith("/"))
address = _matches("a hostname or an IP address", r"[A-Za-z0-9._:%\[\]-]+")
user_name = _matches("a user name", r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
app_ref = _matches("a module:callable reference such as airship.wsgi:application",
                   r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
tag_prefix = _matches("a tag prefix (letters, digits, '.', '_', '/', '-')", r"[A-Za-z0-9._/-]*")
program = _matches("a program name or path, without spaces", r"\S+")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
branch_name = _rule("a git branch name (letters, digits, '.', '_', '/', '-')",
                    lambda v: _BRANCH.fullmatch(v) is not None and ".." not in v
                    and not v.endswith((".lock", "/", ".")))
relative_path = _rule("a path relative to the repository", lambda v: v.strip() != ""
                      and not v.startswith(("/", "~")) and ".." not in v.split("/"))
single_line = _rule("a single line of text", lambda v: "\n" not in v and "\0" not in v)


def env_value(value: str) -> None:
    if "\n" in value or "\0" in value:
        raise ValueError(f"expected a single line, got {_show(value)}")


def _rollout_step(value: int | str) -> None:
    if isinstance(value, int) and value < 1:
        raise ValueError(f"expected a positive number of hosts, got {value}")
    if isinstance(value, str) and not 0 < float(value[:-1]) <= 100:
        raise ValueError(f"expected a percentage above 0% and at most 100%, got {value!r}")


def _status(value: int | str) -> None:
    if isinstance(value, int) and not 100 <= value <= 599:
        raise ValueError(f"expected an HTTP status code from 100 to 599 or \"2xx\", got {value}")


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"([^@/\s]+@)?[^/:\s]+:")  # git's rule: a colon before any slash
REPO_SCHEMES = ("ssh", "git", "git+ssh", "ssh+git", "http", "https", "file")


def repo_url(value: str) -> None:
    if not value.strip() or value.startswith("-") or any(c in value for c in "\n\r\0"):
        raise ValueError(f"expected a git URL or a path, got {_show(value)}")
    m = _URL.match(value)
    if m and m.group(1).lower() not in REPO_SCHEMES:
        raise ValueError(f"expected a git URL ({', '.join(s + '://' for s in REPO_SCHEMES)}, "
                         f"user@host:path) or a path, got {value!r}")


repo_url.expect = "a git URL or a path"  # type: ignore[attr-defined]


def bind_address(value: str) -> None:
    addr, sep, port = value.rpartition(":")
    if not (sep and addr and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"expected ADDRESS:PORT such as 0.0.0.0:8000, got {value!r}")
    address(addr)


bind_address.expect = "ADDRESS:PORT"  # type: ignore[attr-defined]


def env_name(value: str) -> None:
    if not ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid environment variable name "
                         "(letters, digits and '_', not starting with a digit)")


# -- the declarations

SSH = _settings(
    Setting("known_hosts", PATH, "~/.ssh/known_hosts", nonblank,
            "known_hosts file that every host key is checked against (strict checking is "
            "always on). `~` is expanded; a relative path is resolved against the directory "
            "of services.yaml."),
    Setting("identity_file", PATH, None, nonblank,
            "Private key for hosts that do not set their own (default: your SSH agent and keys)."),
    Setting("connect_timeout", INT, 10, at_least(1), "Seconds to wait for an SSH connection."),
    Setting("config_file", PATH, "~/.ssh/config", nonblank,
            "OpenSSH client config read for every host's `address` and every ProxyJump hop: "
            "Host aliases, HostName, Port, User, IdentityFile, ProxyJump. services.yaml values "
            "win. A missing file is no config."),
    Setting("forward_agent", BOOL, False, None,
            "Forward your SSH agent to the hosts (never done unless this is true, whatever the "
            "ssh config says)."),
)

HOST = _settings(
    Setting("address", STR, None, address,
            "Hostname or IP address: where SSH connects and where health checks reach the "
            "service. Required unless `local`; a local host defaults to 127.0.0.1.",
            doc_default="required; `\"127.0.0.1\"` if local"),
    Setting("port", INT, None, port_number,
            "SSH port (default: the ssh config's Port for this address, else 22)."),
    Setting("user", STR, None, user_name, "SSH user (default: your SSH configuration's)."),
    Setting("local", BOOL, False, None,
            "Run this host's commands on this machine, without SSH (the demo fleet)."),
    Setting("root", PATH, None, nonblank,
            "Overrides the service `root` on this host. Absolute for a remote host; for a local "
            "host a relative path is resolved against the directory of services.yaml (how a "
            "demo fleet gives each host its own directory)."),
    Setting("identity_file", PATH, None, nonblank,
            "Private key for this host (default: `ssh.identity_file`). `~` is expanded."),
)

HEALTH = _settings(
    Setting("path", STR, "/healthz", _rule("a URL path starting with /",
                                           lambda v: v.startswith("/") and " " not in v),
            "Path probed on the host's address and the service's port after every activation."),
    Setting("timeout", NUMBER, 5.0, positive,
            "Seconds until a host must answer the probe after an activation (also the timeout "
            "of each request). Kind command waits longer by default: a JVM starts slowly.",
            doc_default="`5`; `30` for command"),
    Setting("interval", NUMBER, 0.5, positive, "Seconds between probes while waiting."),
    Setting("expect_status", STATUS, 200, _status,
            "Status a ready host answers: a code, or `\"2xx\"` for any 2xx."),
)

GATE = _settings(
    Setting("warmup", NUMBER, 5.0, non_negative,
            "Seconds after activation that are not judged (caches, first connections)."),
    Setting("bake", NUMBER, 30.0, positive,
            "Seconds of traffic on the new hosts judged after the warm-up."),
    Setting("max_error_rate", NUMBER, 0.05, rate,
            "Ceiling C: fail when the error rate of the new hosts is surely above it."),
    Setting("ratio", NUMBER, 1.5, at_least_one,
            "r: how many times the baseline's error rate the new hosts may have."),
    Setting("alpha_interim", NUMBER, 0.001, probability,
            "Significance of the relative test at interim checks (strict: we look often)."),
    Setting("alpha_final", NUMBER, 0.01, probability,
            "Significance of the relative test at the end of the bake."),
    Setting("min_diff", NUMBER, 0.001, small_rate,
            "Smallest difference of error rates that may fail a deploy (0.001 = 0.1 points)."),
    Setting("ceiling_confidence", NUMBER, 0.99, probability,
            "Confidence of the lower bound compared with the ceiling."),
    Setting("pass_confidence", NUMBER, 0.95, probability,
            "Confidence of the upper bound that must be under the limit to pass."),
    Setting("min_requests", INT, 100, at_least(1),
            "Requests the new hosts must serve before they can pass."),
    Setting("max_extensions", INT, 2, at_least(0),
            "Times an inconclusive bake is extended before `on_inconclusive` applies."),
    Setting("on_inconclusive", STR, "rollback", one_of("rollback", "proceed"),
            "What an inconclusive gate does after its extensions."),
    Setting("probe_interval", NUMBER, 0.2, positive,
            "Seconds between the tool's own probes of each new host during the bake."),
)

KINDS = ("django", "flask", "wsgi", "command")
WSGI_KINDS = ("django", "flask", "wsgi")
RELOAD_SIGNALS = ("HUP", "USR1", "USR2", "TERM", "restart")
# Defaults that differ by kind. gunicorn reloads gracefully on HUP; any other
# program is restarted unless it says how it reloads (a JVM, for one, exits on HUP).
# And a program may start slowly (a JVM, a big app): readiness waits longer for it.
RELOAD_DEFAULT = {"command": "restart"}  # else HUP
HEALTH_TIMEOUT_DEFAULT = {"command": 30.0}  # else HEALTH["timeout"].default


def pathspec(value: str) -> None:
    """A build input: a path or glob relative to the repository."""
    if value.strip() == "" or value.startswith(("/", "~", ":")) or ".." in value.split("/"):
        raise ValueError(f"expected a path or glob relative to the repository such as src/ or "
                         f"*.java, got {_show(value)}")


pathspec.expect = "a path or glob relative to the repository"  # type: ignore[attr-defined]


def build_output(value: str) -> None:
    relative_path(value)
    if any(c in value for c in "*?[") or value.strip("/") in ("", ".", ".deploy", "REVISION"):
        raise ValueError(f"expected a file or directory the build writes in the release, such "
                         f"as build/, got {_show(value)}")


build_output.expect = "a path in the release, such as build/"  # type: ignore[attr-defined]

SERVICE = _settings(
    Setting("kind", STR, REQUIRED, one_of(*KINDS),
            "`django`, `flask` or `wsgi` (run by gunicorn), or `command` (any program)."),
    Setting("repo", STR, REQUIRED, repo_url,
            "Git repository: `git@host:path.git`, `ssh://`, `https://`, `file://`, or a local "
            "path (a relative one is resolved against the directory of services.yaml)."),
    Setting("branch", STR, "master", branch_name, "Branch that is deployed."),
    Setting("production_branch", STR, "production", branch_name,
            "Branch that is moved to the deployed commit after a successful deploy."),
    Setting("tag_prefix", STR, "production-", tag_prefix,
            "Prefix of the date tag that marks each successful deploy."),
    Setting("role", STR, None, None,
            "Role whose hosts run the service. Give exactly one of `role` and `hosts`.",
            doc_default="one of role, hosts"),
    Setting("hosts", ListOf("list of host names", Setting("", STR, REQUIRED), unique=True), None,
            None, "Host names that run the service, in this order (instead of `role`).",
            doc_default="one of role, hosts"),
    Setting("app", STR, None, app_ref,
            "WSGI application, `module:callable`. Required for django, flask and wsgi; not "
            "allowed for command.", doc_default="required unless command"),
    Setting("command", STR, None, _rule("a single line of shell", lambda v: v.strip() != ""
                                        and "\n" not in v and "\0" not in v),
            "Command line that runs the service: `/bin/sh` execs it in `<dir>/current` (so the "
            "program itself gets supervisord's signals; put anything more complex in a script "
            "in the repository), with `env` plus `HOST` (the address of `bind`, by default the "
            "host's) and `PORT` in its environment. It must stay in the foreground and listen "
            "on `HOST:PORT`. Its output goes to `log/<service>.log`, where the canary gate "
            "counts access lines "
            "(`<ISO 8601 time> <client> \"<request line>\" <status> <bytes>`, or gunicorn's "
            "format). Required for kind command, not allowed otherwise.",
            doc_default="required for command"),
    Setting("build", STR, None, nonblank,
            "Shell command run in the release directory while staging (kind command only), "
            "with the release's environment; if it fails, the deploy stops before any host "
            "switches, with its output in the error."),
    Setting("build_inputs", ListOf("list of paths and globs",
                                   Setting("", STR, REQUIRED, pathspec), unique=True),
            None, None,
            "Files that affect the build, as git pathspecs: `src/` (or `src`) covers a "
            "directory, `*.java` any Java file (`*` also crosses `/`). A smart deploy reuses "
            "the live release's `build_outputs` when no file between the live commit and the "
            "target matches (kind command only).", doc_default="every file"),
    Setting("build_outputs", ListOf("list of paths", Setting("", PATH, REQUIRED, build_output),
                                    unique=True),
            None, None,
            "What `build` makes in the release, e.g. `[build/]`: what a smart deploy hard-links "
            "(`cp -al`) from the live release instead of building, when the build inputs, the "
            "`build` command and the environment are unchanged. Unset: always build. The build "
            "must replace these files, not edit them in place (the links are shared).",
            doc_default="unset: always build"),
    Setting("port", INT, REQUIRED, port_number,
            "Port the service listens on; health checks connect to the host's address and "
            "this port."),
    Setting("bind", STR, None, bind_address,
            "Listen address `ADDRESS:PORT`, e.g. `0.0.0.0:8000`; its port must be `port`.",
            doc_default="host `address`:`port`"),
    Setting("requirements", PATH, "requirements.txt", relative_path,
            "Requirements file in the repository; `null` for none. A change builds a new "
            "virtualenv.", nullable=True),
    Setting("env", MapOf("mapping NAME: string", env_name, Setting("", STR, REQUIRED, env_value)),
            None, None,
            "Environment variables. Scalars are taken as written (`010` stays `010`, `yes` "
            "stays `yes`); an empty value must be written `\"\"`.", doc_default="`{}`"),
    Setting("workers", INT, 2, at_least(1), "gunicorn worker processes (not for kind command)."),
    Setting("graceful_timeout", INT, 30, at_least(1),
            "Seconds a worker gets to finish its requests on a reload or a stop."),
    Setting("reload_signal", STR, _BY_KIND, one_of(*RELOAD_SIGNALS),
            "Signal sent to the service's main process to load a new release, or `restart` to "
            "stop and start it instead. gunicorn reloads gracefully on `HUP`; a `command` "
            "program is restarted unless you name the signal it reloads on (a JVM exits on "
            "HUP). A restart is always used when the virtualenv or environment changed.",
            doc_default="`\"HUP\"`; `\"restart\"` for command"),
    Setting("migrate", BOOL, _DJANGO_ONLY, None,
            "Run `manage.py migrate` once per deploy, before the canary (django only).",
            doc_default="true for django"),
    Setting("collectstatic", BOOL, _DJANGO_ONLY, None,
            "Run `manage.py collectstatic` while staging each release (django only).",
            doc_default="true for django"),
    Setting("health", Section("mapping (see health)", HEALTH), None, None,
            "Readiness probe, see below; merged key by key with `defaults.health`.",
            defaultable=True, doc_default="see below"),
    Setting("gate", Section("mapping (see gate)", GATE), None, None,
            "Canary gate, see below; merged key by key with `defaults.gate`.",
            defaultable=True, doc_default="see below"),
    Setting("root", PATH, "/srv", absolute_path,
            "Directory that holds `<root>/<service>` on every host (a host's `root` wins).",
            defaultable=True),
    Setting("keep_releases", INT, 5, at_least(2),
            "Releases kept on each host; the live one and the one before are never pruned.",
            defaultable=True),
    Setting("rollout", ListOf("list of host counts and \"N%\"",
                              Setting("", ROLLOUT_STEP, REQUIRED, _rollout_step)),
            (1, "50%", "100%"), None,
            "Waves, as cumulative targets: a number of hosts or a share of them. The first "
            "wave is the canary.", defaultable=True),
    Setting("python", STR, "python3", program,
            "Interpreter that creates the virtualenv.", defaultable=True),
    Setting("pip_args", STR, "", single_line,
            "Extra arguments for `pip install`, e.g. `--index-url https://...`.",
            defaultable=True),
    Setting("parallel", INT, 8, at_least(1), "Most hosts worked on at once.", defaultable=True),
    Setting("templates", PATH, None, nonblank,
            "Directory of your own templates (relative to services.yaml): a file there replaces "
            "the packaged template of the same name, e.g. `supervisord.conf.j2`.",
            defaultable=True),
)

DEFAULTABLE = {name: s for name, s in SERVICE.items() if s.defaultable}

TOP = _settings(
    Setting("ssh", Section("mapping (see ssh)", SSH), None, None, "SSH settings for every host.",
            doc_default="see below"),
    Setting("hosts", Type("mapping name: host", "a mapping"), REQUIRED, None,
            "The machines, by name (see below)."),
    Setting("roles", Type("mapping role: list of host names", "a mapping"), None, None,
            "Named groups of declared hosts; role names follow the host name rule and must "
            "differ from host names.", doc_default="`{}`"),
    Setting("defaults", Section("mapping (see defaults)", DEFAULTABLE), None, None,
            "Values every service inherits: any service key marked *defaultable*.",
            doc_default="`{}`"),
    Setting("services", Type("mapping name: service", "a mapping"), REQUIRED, None,
            "The services, by name (see below)."),
)


# --------------------------------------------------------------------------- the model

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


@dataclass(frozen=True)
class Ssh:
    known_hosts: str  # expanded, absolute
    identity_file: str | None
    connect_timeout: int
    config_file: str  # expanded, absolute; may not exist
    forward_agent: bool


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int | None  # None: the ssh config's Port, else 22
    user: str | None
    local: bool
    root: str | None  # absolute; overrides Service.root on this host
    identity_file: str | None  # the host's own, else ssh.identity_file; expanded


@dataclass(frozen=True)
class Health:
    path: str
    timeout: float
    interval: float
    expect_status: int | str  # a status code, or "2xx"

    def accepts(self, status: int) -> bool:
        if self.expect_status == "2xx":
            return 200 <= status <= 299
        return status == self.expect_status


@dataclass(frozen=True)
class Gate:
    """The canary gate's numbers; field for field health.GateSettings."""

    warmup: float
    bake: float
    max_error_rate: float
    ratio: float
    alpha_interim: float
    alpha_final: float
    min_diff: float
    ceiling_confidence: float
    pass_confidence: float
    min_requests: int
    max_extensions: int
    on_inconclusive: str
    probe_interval: float


@dataclass(frozen=True)
class Service:
    name: str
    kind: str
    repo: str  # a URL, or an absolute local path
    branch: str
    production_branch: str
    tag_prefix: str
    hosts: tuple[str, ...]  # from `role` or `hosts`, in declared order
    role: str | None
    app: str | None
    command: str | None
    build: str | None
    build_inputs: tuple[str, ...] | None  # None: every file is a build input
    build_outputs: tuple[str, ...] | None  # None: a build is never reused
    port: int
    bind: str | None  # None: <host address>:<port>, see bind_on()
    requirements: str | None
    env: Mapping[str, str]
    workers: int
    graceful_timeout: int
    reload_signal: str
    migrate: bool
    collectstatic: bool
    health: Health
    gate: Gate
    root: str
    keep_releases: int
    rollout: tuple[int | str, ...]  # host counts (int) and shares ("50%")
    python: str
    pip_args: str
    parallel: int
    templates: str | None  # absolute; the user's templates, searched before ours

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


@dataclass(frozen=True)
class Config:
    path: str
    hosts: Mapping[str, Host]
    roles: Mapping[str, tuple[str, ...]]
    services: Mapping[str, Service]
    ssh: Ssh

    def service(self, name: str) -> Service:
        """The service called `name`, or a UsageError that lists the ones defined."""
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            raise UsageError(f"invalid service name {name!r}: {SERVICE_NAME_RULE}.")
        if name not in self.services:
            defined = ", ".join(self.services) or "no services"
            raise UsageError(f"unknown service {name!r} ({os.path.basename(self.path)} defines: "
                             f"{defined}).{_did_you_mean(name, self.services)}")
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
                        f"{', '.join(self.roles) or 'none'}).{_did_you_mean(entry, known)}")
                names += [n for n in found if n not in names]
        if not names:
            raise UsageError(f"no host or role given in {spec!r}.")
        return names


def _check_model(model: type, settings: Mapping[str, Setting], extra: Sequence[str] = ()) -> None:
    # The dataclasses repeat the declared names for static typing: keep them in step.
    declared = set(settings) | set(extra)
    got = {f.name for f in fields(model)}
    if got != declared:
        raise TypeError(f"{model.__name__} fields differ from the declarations: {got ^ declared}")


_check_model(Ssh, SSH)
_check_model(Host, HOST, ["name"])
_check_model(Health, HEALTH)
_check_model(Gate, GATE)
_check_model(Service, SERVICE, ["name"])


# --------------------------------------------------------------------------- YAML with lines

class _Map(dict):
    """A YAML mapping that remembers the line of each key and the text of scalar values."""

    line: int
    key_lines: dict
    raw: dict


class _Seq(list):
    line: int
    item_lines: list
    raw: list


def _raw(node: Node) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry 1-based line numbers.

    Keys are always the text as written (`on:` stays "on", `8000:` "8000").
    """


def _construct_map(loader: _LineLoader, node: MappingNode) -> Iterator[_Map]:
    data = _Map()
    data.line, data.key_lines, data.raw = node.start_mark.line + 1, {}, {}
    yield data
    loader.flatten_mapping(node)  # `<<: *anchor` merges; explicit keys come last and win
    for key_node, value_node in node.value:
        key = key_node.value
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = key_node.start_mark.line + 1
        data.raw[key] = _raw(value_node)


def _construct_seq(loader: _LineLoader, node: SequenceNode) -> Iterator[_Seq]:
    data = _Seq()
    data.line = node.start_mark.line + 1
    data.item_lines = [n.start_mark.line + 1 for n in node.value]
    data.raw = [_raw(n) for n in node.value]
    yield data
    data.extend(loader.construct_object(n) for n in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _check_keys(node: Node, where: str, path: str, seen: set) -> None:
    """Duplicate and non-scalar keys, found on the node tree: YAML would keep the last one."""
    if id(node) in seen:  # an alias: checked where it was defined
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                raise ConfigError(f"{where or 'top level'}: a key must be a plain name, "
                                  "not a list or a mapping.", path=path, line=line)
            if key_node.tag == "tag:yaml.org,2002:merge":
                _check_keys(value_node, where, path, seen)
                continue
            key = key_node.value
            if key in first:
                raise ConfigError(
                    f"{where or 'top level'}: duplicate key {key!r} (first on line {first[key]}); "
                    "YAML would silently keep only the last one. Remove or merge one of them.",
                    path=path, line=line)
            first[key] = line
            _check_keys(value_node, f"{where}.{key}" if where else key, path, seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_keys(item, f"{where}[{i}]", path, seen)


def _parse_yaml(text: str, path: str) -> Any:
    try:
        loader = _LineLoader(text)
    except yaml.reader.ReaderError as e:  # a control character: no mark, only a position
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(f"invalid YAML: character {e.character:#x} is not allowed in a YAML "
                          "file; remove it.", path=path, line=line) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_keys(node, "", path, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "cannot parse"
        context = ""
        if e.context and e.context_mark and e.problem_mark:
            context = f" ({e.context} at line {e.context_mark.line + 1})"
        col = f", column {mark.column + 1}" if mark else ""
        if isinstance(e, yaml.constructor.ConstructorError):
            hint = " services.yaml takes plain YAML: no tags such as !!python."
        elif isinstance(e, yaml.composer.ComposerError):
            hint = ""
        else:
            hint = " Check the indentation, colons, brackets and quotes here and just above."
        raise ConfigError(f"invalid YAML{col}: {problem}{context}.{hint}",
                          path=path, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {' '.join(str(e).split())}.", path=path) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- validation

def _did_you_mean(word: str, known: Any) -> str:
    # Swapped letters first (`prot` is `port`, not `root`), then difflib's closest.
    close = [k for k in known if sorted(k) == sorted(word)] or \
        difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class _Reader:
    """Turns the YAML tree into checked values; every failure is a ConfigError with a line."""

    def __init__(self, path: str, base: str):
        self.path = path
        self.base = base

    def fail(self, where: str, message: str, line: int | None) -> NoReturn:
        raise ConfigError(f"{where}: {message}" if where else message, path=self.path, line=line)

    def mapping(self, value: Any, where: str, line: int | None, what: str,
                empty_ok: bool = True) -> _Map:
        if value is None and empty_ok:
            value = _Map()
            value.line, value.key_lines, value.raw = line, {}, {}
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping of {what}, got {_show(value)}.", line)
        return value

    def unknown_keys(self, m: _Map, known: Mapping[str, Setting], where: str,
                     hint: Callable[[str], str] | None = None) -> None:
        for key in m:
            if key not in known:
                extra = (hint(key) if hint else "") or _did_you_mean(key, known) or \
                    f" Known keys: {', '.join(known)}."
                self.fail(where, f"unknown key {key!r}.{extra}", m.key_lines[key])

    def read(self, m: _Map, settings: Mapping[str, Setting], where: str,
             hint: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The given keys of `m`, checked and typed (defaults are not filled in)."""
        self.unknown_keys(m, settings, where, hint)
        out = {}
        for key, value in m.items():
            v = self.value(settings[key], value, m.raw[key], f"{where}.{key}", m.key_lines[key])
            if v is not None or settings[key].nullable:  # `key: null` leaves it unset
                out[key] = v
        return out

    def value(self, s: Setting, value: Any, raw: str | None, where: str, line: int | None) -> Any:
        t = s.type
        if isinstance(t, Section):
            return self.read(self.mapping(value, where, line, f"{s.name} settings"),
                             t.settings, where)
        if isinstance(t, MapOf):
            m = self.mapping(value, where, line, t.name.replace("mapping ", ""))
            out = {}
            for key, item in m.items():
                try:
                    t.key_check(key)
                except ValueError as e:
                    self.fail(where, f"{e}.", m.key_lines[key])
                out[key] = self.value(t.item, item, m.raw[key], f"{where}.{key}",
                                      m.key_lines[key])
            return FrozenMap(out)
        if value is None:
            if s.nullable or not (s.required or isinstance(t, (ListOf, MapOf)) or
                                  s.default is not None):
                return None
            null = " (write \"\" for an empty string)" if t in (STR, PATH) else ""
            self.fail(where, f"expected {s.expect}, got nothing{null}.", line)
        if isinstance(t, ListOf):
            if not isinstance(value, list):
                self.fail(where, f"expected a list ({t.name}), got {_show(value)}.", line)
            if not value:
                self.fail(where, "expected a list with at least one item, got an empty list.",
                          line)
            items = []
            for i, item in enumerate(value):
                v = self.value(t.item, item, value.raw[i], f"{where}[{i}]", value.item_lines[i])
                if t.unique and v in items:
                    self.fail(where, f"{v!r} is listed twice.", value.item_lines[i])
                items.append(v)
            return tuple(items)
        try:
            typed = t.coerce(value, raw)
        except ValueError as e:
            hint = f"; {e}" if str(e) else ""
            self.fail(where, f"expected {s.expect}, got {_show(value)}{hint}.", line)
        if s.validator:
            try:
                s.validator(typed)
            except ValueError as e:
                self.fail(where, f"{e}.", line)
        return float(typed) if t is NUMBER else typed

    def local_path(self, value: str) -> str:
        """A path on this machine: `~` expanded, relative to the directory of services.yaml."""
        return os.path.normpath(os.path.join(self.base, os.path.expanduser(value)))


def _fill(settings: Mapping[str, Setting], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Each key from the last layer that has it, else the declared default."""
    out = {}
    for name, s in settings.items():
        out[name] = s.default
        for layer in layers:
            if name in layer:
                out[name] = layer[name]
    return out


def _where_belongs(key: str) -> str:
    for section, settings in (("health", HEALTH), ("gate", GATE)):
        if key in settings:
            return f" {key!r} belongs in the {section}: mapping."
    return ""


def _build(doc: Any, path: str, base: str) -> Config:
    r = _Reader(path, base)
    if doc is None:
        r.fail("", "the file is empty. It needs at least hosts: and services: "
                   "(see docs/services-reference.md).", None)
    if not isinstance(doc, dict):
        r.fail("", f"the top level must be a mapping of sections ({', '.join(TOP)}), "
                   f"got {_show(doc)}.", getattr(doc, "line", 1))
    r.unknown_keys(doc, TOP, "top level")

    def require(key: str) -> None:
        if key not in doc:
            r.fail("", f"no {key}: section. Declare at least one entry "
                       "(see docs/services-reference.md).", None)

    ssh_given = r.value(TOP["ssh"], doc.get("ssh"), None, "ssh", doc.key_lines.get("ssh"))
    s = _fill(SSH, ssh_given)
    ssh = Ssh(known_hosts=r.local_path(s["known_hosts"]),
              identity_file=s["identity_file"] and r.local_path(s["identity_file"]),
              connect_timeout=s["connect_timeout"], config_file=r.local_path(s["config_file"]),
              forward_agent=s["forward_agent"])

    require("hosts")
    hosts = _hosts(r, doc, ssh)
    roles = _roles(r, doc, hosts)
    defaults = r.read(r.mapping(doc.get("defaults"), "defaults", doc.key_lines.get("defaults"),
                                "service settings"), DEFAULTABLE, "defaults",
                      hint=lambda key: (f" {key!r} cannot be set under defaults: give it in each "
                                        "service." if key in SERVICE else _where_belongs(key)))
    require("services")
    services_map = r.mapping(doc["services"], "services", doc.key_lines["services"],
                             "service names to services", empty_ok=False)
    if not services_map:
        r.fail("services", "no services are defined.", doc.key_lines["services"])
    services = {}
    for name, m in services_map.items():
        line = services_map.key_lines[name]
        if not SERVICE_NAME.fullmatch(name):
            r.fail("services", f"invalid service name {name!r}: {SERVICE_NAME_RULE}.", line)
        m = r.mapping(m, f"services.{name}", line, "service settings", empty_ok=False)
        services[name] = _service(r, name, m, line, defaults, hosts, roles)
    _check_ports(r, services, hosts, services_map)
    return Config(path=path, hosts=FrozenMap(hosts), roles=FrozenMap(roles),
                  services=FrozenMap(services), ssh=ssh)


def _hosts(r: _Reader, doc: _Map, ssh: Ssh) -> dict[str, Host]:
    hosts_map = r.mapping(doc["hosts"], "hosts", doc.key_lines["hosts"],
                          "host names to host settings", empty_ok=False)
    if not hosts_map:
        r.fail("hosts", "no hosts are declared.", doc.key_lines["hosts"])
    hosts = {}
    for name, m in hosts_map.items():
        line = hosts_map.key_lines[name]
        where = f"hosts.{name}"
        if not HOST_NAME.fullmatch(name):
            r.fail("hosts", f"invalid host name {name!r}: {HOST_NAME_RULE}.", line)
        m = r.mapping(m, where, line, "host settings (address, port, user, local, ...)",
                      empty_ok=False)
        h = _fill(HOST, r.read(m, HOST, where))
        if h["address"] is None:
            if not h["local"]:
                r.fail(where, "no address. Give its hostname or IP address (address: "
                              "10.0.0.10), or set local: true to run its commands on this "
                              "machine.", line)
            h["address"] = "127.0.0.1"
        if h["root"] is not None:
            if h["local"]:
                h["root"] = r.local_path(h["root"])
            elif not h["root"].startswith("/"):
                r.fail(f"{where}.root", f"expected an absolute path on a remote host, got "
                                        f"{h['root']!r}.", m.key_lines["root"])
            h["root"] = h["root"].rstrip("/") or "/"
        identity = h["identity_file"]
        h["identity_file"] = r.local_path(identity) if identity else ssh.identity_file
        hosts[name] = Host(name=name, **h)
    return hosts


def _roles(r: _Reader, doc: _Map, hosts: Mapping[str, Host]) -> dict[str, tuple[str, ...]]:
    roles_map = r.mapping(doc.get("roles"), "roles", doc.key_lines.get("roles"),
                          "role names to lists of host names")
    roles = {}
    for role, items in roles_map.items():
        line = roles_map.key_lines[role]
        where = f"roles.{role}"
        if not HOST_NAME.fullmatch(role):
            r.fail("roles", f"invalid role name {role!r}: {HOST_NAME_RULE}.", line)
        if role in hosts:
            r.fail("roles", f"{role!r} is the name of a host too; give the role its own name "
                            f"so that `host:{role}` means one thing.", line)
        if items is None or items == []:
            r.fail(where, "lists no hosts. Give a list of host names, e.g. [web-0, web-1].",
                   line)
        if not isinstance(items, list):
            r.fail(where, f"expected a list of host names, got {_show(items)}.", line)
        names: list[str] = []
        for i, item in enumerate(items):
            item_line = items.item_lines[i]
            if not isinstance(item, str):
                r.fail(where, f"expected a host name, got {_show(item)}.", item_line)
            if item not in hosts:
                r.fail(where, f"unknown host {item!r}; declared hosts: {', '.join(hosts)}."
                       f"{_did_you_mean(item, hosts)}", item_line)
            if item in names:
                r.fail(where, f"{item!r} is listed twice.", item_line)
            names.append(item)
        roles[role] = tuple(names)
    return roles


def _service(r: _Reader, name: str, m: _Map, line: int, defaults: Mapping[str, Any],
             hosts: Mapping[str, Host], roles: Mapping[str, tuple[str, ...]]) -> Service:
    where = f"services.{name}"
    given = r.read(m, SERVICE, where, hint=_where_belongs)
    lines = m.key_lines
    for key, s in SERVICE.items():
        if s.required and key not in given:
            r.fail(where, f"missing required key {key!r}: expected {s.expect}.", line)
    v = _fill(SERVICE, defaults, given)
    kind = v["kind"]

    def forbid(key: str, why: str) -> None:
        if v[key] is not None:
            r.fail(f"{where}.{key}", f"not allowed {why}.", lines.get(key, line))

    if kind in WSGI_KINDS:
        if v["app"] is None:
            r.fail(where, f"missing 'app', the WSGI application of a {kind} service "
                          "(e.g. app: myproject.wsgi:application).", line)
        forbid("command", f"for kind {kind}: gunicorn runs `app`; use kind: command to run "
                          "your own program")
        for key in ("build", "build_inputs", "build_outputs"):
            forbid(key, f"for kind {kind} (only for kind command)")
    else:
        if v["command"] is None:
            r.fail(where, "missing 'command', the command line that runs a service of kind "
                          "command.", line)
        forbid("app", "for kind command (it takes `command`)")
        if "workers" in given:
            r.fail(f"{where}.workers", "not allowed for kind command: it is gunicorn's number "
                                       "of workers; your command starts its own.",
                   lines["workers"])
        if v["build"] is None:
            for key in ("build_inputs", "build_outputs"):
                if v[key] is not None:
                    r.fail(f"{where}.{key}", "needs `build`: it describes the build step.",
                           lines[key])
    if v["reload_signal"] is _BY_KIND:
        v["reload_signal"] = RELOAD_DEFAULT.get(kind, "HUP")
    for key in ("migrate", "collectstatic"):
        if v[key] is _DJANGO_ONLY:
            v[key] = kind == "django"
        elif v[key] and kind != "django":
            r.fail(f"{where}.{key}", f"only django services can {key}; remove it or set it "
                                     "to false.", lines[key])

    if "role" in given and "hosts" in given:
        later = max(("role", "hosts"), key=lines.__getitem__)
        r.fail(where, "has both 'role' and 'hosts'; give exactly one.", lines[later])
    if "role" in given:
        if v["role"] not in roles:
            r.fail(f"{where}.role", f"unknown role {v['role']!r}; roles: "
                   f"{', '.join(roles) or 'none declared'}.{_did_you_mean(v['role'], roles)}",
                   lines["role"])
        service_hosts = roles[v["role"]]
    elif "hosts" in given:
        for i, host in enumerate(v["hosts"]):
            if host not in hosts:
                r.fail(f"{where}.hosts", f"unknown host {host!r}; declared hosts: "
                       f"{', '.join(hosts)}.{_did_you_mean(host, hosts)}",
                       m["hosts"].item_lines[i])
        service_hosts = v["hosts"]
    else:
        r.fail(where, "no 'role' or 'hosts': say where it runs, with role: <role> or "
                      "hosts: [<host>, ...].", line)

    if v["bind"] is not None and int(v["bind"].rpartition(":")[2]) != v["port"]:
        r.fail(f"{where}.bind", f"the port of {v['bind']!r} must be the service's port "
                                f"{v['port']} (health checks use it).", lines["bind"])
    if _URL.match(v["repo"]) is None and _SCP.match(v["repo"]) is None:
        v["repo"] = r.local_path(v["repo"])
    if v["templates"] is not None:
        v["templates"] = r.local_path(v["templates"])
        if not os.path.isdir(v["templates"]):
            r.fail(f"{where}.templates", f"{v['templates']} is not a directory. Create it, or "
                   "remove the setting to use the packaged templates.",
                   lines.get("templates", line))
    health = _fill(HEALTH, defaults.get("health", {}), given.get("health", {}))
    if "timeout" not in defaults.get("health", {}) and "timeout" not in given.get("health", {}):
        health["timeout"] = HEALTH_TIMEOUT_DEFAULT.get(kind, health["timeout"])
    v["health"] = Health(**health)
    v["gate"] = Gate(**_fill(GATE, defaults.get("gate", {}), given.get("gate", {})))
    v["env"] = v["env"] if v["env"] is not None else FrozenMap()
    v["hosts"] = tuple(service_hosts)
    return Service(name=name, **v)


def _check_ports(r: _Reader, services: Mapping[str, Service], hosts: Mapping[str, Host],
                 services_map: _Map) -> None:
    # Local hosts share this machine: two of them on one address collide too.
    taken: dict[tuple[str, int], tuple[str, str]] = {}
    for svc in services.values():
        for h in svc.hosts:
            host = hosts[h]
            machine = f"local {host.address}" if host.local else h
            other = taken.setdefault((machine, svc.port), (svc.name, h))
            if other != (svc.name, h):
                shared = (f" (local hosts {other[1]!r} and {h!r} share the address "
                          f"{host.address}; give each its own address)" if other[1] != h else "")
                r.fail(f"services.{svc.name}.port", f"port {svc.port} is already used by "
                       f"service {other[0]!r} on host {other[1]!r}{shared}.",
                       services_map[svc.name].key_lines["port"])


# --------------------------------------------------------------------------- entry points

def parse(text: str, path: str = DEFAULT_PATH, base_dir: str | None = None) -> Config:
    """Build a Config from YAML text. `path` names it in errors; relative paths in it are
    resolved against `base_dir` (default: the directory of `path`)."""
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    return _build(_parse_yaml(text, path), path, base)


def load(path: str | os.PathLike | None = None) -> Config:
    """Load services.yaml: `path`, else $DEPLOYTOOLS_CONFIG, else ./services.yaml."""
    if path is None:
        path = os.environ.get(ENV_VAR) or DEFAULT_PATH
    shown = os.path.normpath(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"no such file (in {os.getcwd()}). Run from the directory that holds "
                          f"services.yaml, or point at it with {ENV_VAR}=/path/to/services.yaml "
                          "(see docs/services-reference.md).", path=shown) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start}); save it as UTF-8.",
                          path=shown) from None
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror}.", path=shown) from None
    return parse(text, shown)


# --------------------------------------------------------------------------- reference

_REFERENCE_INTRO = """\
# services.yaml reference

Generated from the declarations in `deploytools/config.py` by
`python -m deploytools.config --reference > docs/services-reference.md`;
edit the declarations, not this file.

General rules:

- Unknown keys are errors (with a "did you mean"), and so are duplicate keys:
  YAML itself would silently keep the last one.
- Types are exact: `port: "8000"` is a string, not an integer, and
  `local: "true"` is not a boolean. A string setting takes any scalar as
  written (`branch: 1.10` is the branch `1.10`).
- An empty value (`key:` or `null`) is an error, except for settings whose
  default is unset (they stay unset), `requirements` (no requirements file)
  and the `health`, `gate`, `defaults`, `roles`, `ssh` and `env` mappings
  (empty).
- Paths on this machine (a local `repo`, `ssh.known_hosts`, identity
  files, a local host's `root`) expand `~`, and a relative one is resolved
  against the directory of services.yaml.
- Two services may not use the same port on the same host (nor on two local
  hosts that share an address).
- A service's keys come from the service, else from `defaults:`, else from
  the default below; `health` and `gate` are merged key by key.
- The file is `./services.yaml`, or the path in `$DEPLOYTOOLS_CONFIG`.
"""


_KINDS_DOC = """\
## Kinds

Every kind goes through the same pipeline (stage on every host, then canary,
half, rest with a readiness probe and an error-rate gate after each wave, and
an automatic rollback), and runs under the service's own supervisord.

- `django`, `flask`, `wsgi`: gunicorn serves `app` (`wsgi` is any WSGI
  callable, e.g. `dory.wsgi:application`). Staging builds the virtualenv and
  imports the app (`gunicorn --check-config`), so a release that cannot load
  never goes live; a new release is loaded with a graceful HUP.
  `command`, `build`, `build_inputs` and `build_outputs` are not allowed.
- `command`: any program that stays in the foreground and serves HTTP on
  `HOST:PORT`, e.g. a Java server:

      harbor:
        kind: command
        repo: git@git.example.com:ops/harbor.git
        role: web
        build: sh build.sh                    # javac + jar, while staging
        build_inputs: [src/, build.sh]        # what a smart deploy compares
        build_outputs: [build/]               # reused when those did not change
        command: java -jar build/harbor.jar   # from <dir>/current
        port: 8300
        health: {path: /healthz}

  `build` runs in each new release while staging; a failed build stops the
  deploy before any host switches. A new release restarts the program
  (`reload_signal: restart`, the default for this kind), unless you name the
  signal it reloads on. Readiness is the health probe (`health.timeout`, 30
  seconds by default for this kind); the gate counts the access lines the
  program prints (see `command`) plus its own probes. A smart deploy runs
  the build only when a file matching `build_inputs` changed since the live
  commit, and otherwise hard-links the live release's `build_outputs`
  (`build_reused` in the deploy history). `app`, `workers`, `migrate` and
  `collectstatic` are not allowed; `requirements`, if the repository has that
  file, still gets a virtualenv at `.deploy/venv`.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_cell(s: Setting) -> str:
    if s.doc_default is not None:
        return s.doc_default
    if s.required:
        return "**required**"
    if s.default is None:
        return "unset"
    if isinstance(s.default, bool):
        return "`true`" if s.default else "`false`"
    if isinstance(s.default, tuple):
        return f"`{json.dumps(list(s.default))}`"
    return f"`{json.dumps(s.default)}`"


def _table(settings: Mapping[str, Setting], mark_defaultable: bool = False) -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for s in settings.values():
        kind = s.type.name
        expect = re.sub(r"^an? ", "", getattr(s.validator, "expect", "") or "")
        if expect and s.validator is not nonblank:
            kind = expect if kind in expect else f"{kind}: {expect}"
        help_ = s.help + (" *Defaultable.*" if mark_defaultable and s.defaultable else "")
        rows.append(f"| `{s.name}` | {_cell(kind)} | {_cell(_default_cell(s))} | {_cell(help_)} |")
    return "\n".join(rows) + "\n"


def reference_markdown() -> str:
    """The reference tables of every services.yaml key, from the declarations."""
    parts = [
        _REFERENCE_INTRO,
        "## Top level\n", _table(TOP),
        "## `ssh:`\n", _table(SSH),
        "## `hosts.<name>:`\n", f"Host names {HOST_NAME_RULE}.\n", _table(HOST),
        "## `roles:`\n",
        "`<role>: [<host>, ...]`: each item a declared host, listed once. Role and host "
        "names are both accepted wherever hosts are selected (`fab host:web deploy:airship`).\n",
        "## `defaults:`\n",
        "Any service key marked *defaultable* below: "
        + ", ".join(f"`{k}`" for k in DEFAULTABLE) + ".\n",
        "## `services.<name>:`\n", f"{SERVICE_NAME_RULE[0].upper()}{SERVICE_NAME_RULE[1:]}.\n",
        _table(SERVICE, mark_defaultable=True),
        _KINDS_DOC,
        "## `health:` (in a service or in `defaults:`)\n", _table(HEALTH),
        "## `gate:` (in a service or in `defaults:`)\n",
        "After each wave the new hosts' error rate is compared with the old hosts' (the "
        "baseline) and with a ceiling; a fail rolls back every host the deploy touched. "
        "Every number of that decision is here.\n", _table(GATE),
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--reference"]:
        sys.stdout.write(reference_markdown())
        return 0
    if args[:1] == ["--check"] and len(args) <= 2:
        try:
            cfg = load(args[1] if len(args) == 2 else None)
        except ConfigError as e:
            print(f"Error: {e}", file=sys.stderr)
            return e.exit_code
        print(f"{cfg.path}: ok: hosts {', '.join(cfg.hosts)}; roles {', '.join(cfg.roles) or '-'}; "
              f"services {', '.join(cfg.services)}")
        return 0
    print("usage: python -m deploytools.config --reference | --check [services.yaml]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
