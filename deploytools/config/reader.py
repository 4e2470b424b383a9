"""Reading services.yaml into the model: every value checked against its declaration, every
failure a ConfigError that names the file, the line and what to do.

    services.yaml:12: services.airship.port: expected an integer from 1 to 65535, got 'eighty'.

Usage::

    cfg = load()                      # $DEPLOYTOOLS_CONFIG or ./services.yaml
    svc = cfg.service("airship")
    for name in cfg.select_hosts("web-0,web-1"):
        print(svc.dir_on(cfg.hosts[name]))
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NoReturn

from deploytools.errors import ConfigError, UsageError

from .declare import (
    BY_KIND, DJANGO_ONLY, NUMBER, PATH, SCP, STR, URL, ListOf, MapOf, Section, Setting,
    did_you_mean, safe_path, show,
)
from .model import (
    DEFAULTABLE, ENV_VALUE, GATE, HEALTH, HEALTH_TIMEOUT_DEFAULT, HOST, HOST_NAME, HOST_NAME_RULE,
    LB, Lb, MIGRATIONS,
    RELOAD_DEFAULT, SERVICE, SERVICE_NAME, SERVICE_NAME_RULE, SSH, TOP, WSGI_KINDS, Config,
    FrozenMap, Gate, Health, Host, Migrations, Service, Ssh,
)
from .model import HOOK, PRODUCTION, STAGE, STAGE_NAME, Hook, Stage
from .secrets import Secret
from .yamllines import Map, parse_yaml

ENV_VAR = "DEPLOYTOOLS_CONFIG"
DEFAULT_PATH = "services.yaml"


class _Reader:
    """Turns the YAML tree into checked values; every failure is a ConfigError with a line."""

    def __init__(self, path: str, base: str):
        self.path = path
        self.base = base

    def fail(self, where: str, message: str, line: int | None) -> NoReturn:
        raise ConfigError(f"{where}: {message}" if where else message, path=self.path, line=line)

    def mapping(self, value: Any, where: str, line: int | None, what: str,
                empty_ok: bool = True) -> Map:
        if value is None and empty_ok:
            value = Map.empty(line)
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping of {what}, got {show(value)}.", line)
        return value

    def unknown_keys(self, m: Map, known: Mapping[str, Setting], where: str,
                     hint: Callable[[str], str] | None = None) -> None:
        for key in m:
            if key not in known:
                extra = (hint(key) if hint else "") or did_you_mean(key, known) or \
                    f" Known keys: {', '.join(known)}."
                self.fail(where, f"unknown key {key!r}.{extra}", m.key_lines[key])

    def read(self, m: Map, settings: Mapping[str, Setting], where: str,
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
            null = " (write \"\" for an empty string)" if t in (STR, PATH, ENV_VALUE) else ""
            self.fail(where, f"expected {s.expect}, got nothing{null}.", line)
        if isinstance(t, ListOf):
            if not isinstance(value, list):
                self.fail(where, f"expected a list ({t.name}), got {show(value)}.", line)
            if not value and t.empty_ok:
                return ()
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
            self.fail(where, f"expected {s.expect}, got {show(value)}{hint}.", line)
        if s.validator:
            try:
                s.validator(typed)
            except ValueError as e:
                self.fail(where, f"{e}.", line)
        if isinstance(typed, Secret):  # where it is said, for the deploy-time errors
            return typed.placed(self.path, line, self.local_path)
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
    for section, settings in (("health", HEALTH), ("gate", GATE), ("migrations", MIGRATIONS)):
        if key in settings:
            return f" {key!r} belongs in the {section}: mapping."
    return ""


def _build(doc: Any, path: str, base: str, stage: str | None = None) -> Config:
    r = _Reader(path, base)
    if doc is None:
        r.fail("", "the file is empty. It needs at least hosts: and services: "
                   "(see docs/services-reference.md).", None)
    if not isinstance(doc, dict):
        r.fail("", f"the top level must be a mapping of sections ({', '.join(TOP)}), "
                   f"got {show(doc)}.", getattr(doc, "line", 1))
    r.unknown_keys(doc, TOP, "top level")

    def require(key: str) -> None:
        if key not in doc:
            r.fail("", f"no {key}: section. Declare at least one entry "
                       "(see docs/services-reference.md).", None)

    ssh_given = r.value(TOP["ssh"], doc.get("ssh"), None, "ssh", doc.key_lines.get("ssh"))
    s = _fill(SSH, ssh_given)
    ssh = Ssh(**dict(s, known_hosts=r.local_path(s["known_hosts"]),
                     identity_file=s["identity_file"] and r.local_path(s["identity_file"]),
                     config_file=r.local_path(s["config_file"])))

    require("hosts")
    stages, overlay = _stages(r, doc, stage)
    stage = stage or PRODUCTION
    hosts = _hosts(r, doc["hosts"], "hosts", doc.key_lines["hosts"], ssh)
    if "hosts" in overlay:  # the stage's hosts replace those of the same name
        hosts.update(_hosts(r, overlay["hosts"], f"stages.{stage}.hosts",
                            overlay.key_lines["hosts"], ssh))
    roles = _roles(r, doc.get("roles"), "roles", doc.key_lines.get("roles"), hosts)
    if "roles" in overlay:
        roles.update(_roles(r, overlay["roles"], f"stages.{stage}.roles",
                            overlay.key_lines["roles"], hosts))
    staged = r.read(_plain(overlay), STAGE, f"stages.{stage}")
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
        services[name] = _service(r, name, m, line, defaults, hosts, roles, staged,
                                  publishes=_publishes(stage, staged))
        _check_requires(r, services[name], stages, m)
    _check_ports(r, services, hosts, services_map)
    return Config(path=path, ssh=ssh, hosts=FrozenMap(hosts), roles=FrozenMap(roles),
                  defaults=_frozen(defaults), services=FrozenMap(services),
                  stages=FrozenMap(stages), stage=stage)


def _publishes(stage: str, staged: Mapping[str, Any]) -> bool:
    return staged.get("publish", stage == PRODUCTION)


def _stages(r: _Reader, doc: Map, stage: str | None) -> tuple[dict[str, Stage], Map]:
    """The declared stages (their own keys checked), and the raw overlay of `stage`."""
    stages_map = r.mapping(doc.get("stages"), "stages", doc.key_lines.get("stages"),
                           "stage names to stage settings")
    stages: dict[str, Stage] = {}
    for name, m in stages_map.items():
        line = stages_map.key_lines[name]
        where = f"stages.{name}"
        if not STAGE_NAME.fullmatch(name):
            r.fail("stages", f"invalid stage name {name!r}: use lowercase letters, digits, '-' "
                             "and '_', starting with a letter.", line)
        m = r.mapping(m, where, line, "stage settings (hosts, roles, env, gate, rollout, ...)")
        stages_map[name] = m
        r.unknown_keys(m, STAGE, where)
        plain = r.read(_plain(m), STAGE, where)
        for key in ("hosts", "roles"):
            r.mapping(m.get(key), f"{where}.{key}", m.key_lines.get(key), key)
        if _publishes(name, plain) and name != PRODUCTION:
            for key in ("production_branch", "tag_prefix"):
                if key not in plain:
                    r.fail(where, f"publishes (publish: true) but names no {key}: give it its "
                                  f"own (e.g. {key}: {name if key == 'production_branch' else name + '-'}) "
                                  "so it never moves production's.", line)
        stages[name] = Stage(name=name, hosts=FrozenMap(), roles=FrozenMap(),
                             env=FrozenMap(plain.get("env") or {}),
                             gate=_frozen(plain.get("gate") or {}),
                             **{k: v for k, v in plain.items() if k not in ("env", "gate")})
    if stage is None or stage == PRODUCTION and stage not in stages_map:
        return stages, Map.empty(None)
    if stage not in stages_map:
        declared = ", ".join(stages_map) or "none"
        raise UsageError(f"unknown stage {stage!r} ({os.path.basename(r.path)} declares: "
                         f"{declared}; `production` is the file without a stage's changes)."
                         f"{did_you_mean(stage, stages_map)}")
    return stages, stages_map[stage]


def _plain(m: Map) -> Map:
    """A stage's keys but hosts and roles (read as the top level's are)."""
    out = Map.empty(m.line)
    for key, value in m.items():
        if key not in ("hosts", "roles"):
            out[key] = value
            out.key_lines[key] = m.key_lines[key]
            out.raw[key] = m.raw[key]
    return out


def _check_requires(r: _Reader, svc: Service, stages: Mapping[str, Stage], m: Map) -> None:
    need = svc.production_requires
    if need is None:
        return
    where = f"services.{svc.name}.production_requires"
    line = m.key_lines.get("production_requires", m.line)
    if need == PRODUCTION:
        r.fail(where, "production cannot require itself: name the stage a commit must pass "
                      "first (e.g. staging).", line)
    if need not in stages:
        r.fail(where, f"unknown stage {need!r}; declared stages: "
                      f"{', '.join(stages) or 'none (declare it under stages:)'}."
                      f"{did_you_mean(need, stages)}", line)


def _frozen(value: Any) -> Any:
    return FrozenMap({k: _frozen(v) for k, v in value.items()}) if isinstance(value, dict) \
        else value


def _hosts(r: _Reader, value: Any, at: str, at_line: int | None, ssh: Ssh) -> dict[str, Host]:
    hosts_map = r.mapping(value, at, at_line, "host names to host settings", empty_ok=False)
    if not hosts_map:
        r.fail(at, "no hosts are declared.", at_line)
    hosts = {}
    for name, m in hosts_map.items():
        line = hosts_map.key_lines[name]
        where = f"{at}.{name}"
        if not HOST_NAME.fullmatch(name):
            r.fail(at, f"invalid host name {name!r}: {HOST_NAME_RULE}.", line)
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
            given_root = h["root"]
            if h["local"]:
                h["root"] = r.local_path(h["root"])
            elif not h["root"].startswith("/"):
                r.fail(f"{where}.root", f"expected an absolute path on a remote host, got "
                                        f"{h['root']!r}.", m.key_lines["root"])
            h["root"] = h["root"].rstrip("/") or "/"
            try:
                safe_path(h["root"])
            except ValueError as e:
                given = "" if h["root"] == given_root else f" (from {given_root!r})"
                r.fail(f"{where}.root", f"{e}{given}.", m.key_lines["root"])
        identity = h["identity_file"]
        h["identity_file"] = r.local_path(identity) if identity else ssh.identity_file
        hosts[name] = Host(name=name, **h)
    return hosts


def _roles(r: _Reader, value: Any, at: str, at_line: int | None,
           hosts: Mapping[str, Host]) -> dict[str, tuple[str, ...]]:
    roles_map = r.mapping(value, at, at_line, "role names to lists of host names")
    roles = {}
    for role, items in roles_map.items():
        line = roles_map.key_lines[role]
        where = f"{at}.{role}"
        if not HOST_NAME.fullmatch(role):
            r.fail(at, f"invalid role name {role!r}: {HOST_NAME_RULE}.", line)
        if role in hosts:
            r.fail(at, f"{role!r} is the name of a host too; give the role its own name "
                            f"so that `host:{role}` means one thing.", line)
        if items is None or items == []:
            r.fail(where, "lists no hosts. Give a list of host names, e.g. [web-0, web-1].",
                   line)
        if not isinstance(items, list):
            r.fail(where, f"expected a list of host names, got {show(items)}.", line)
        names: list[str] = []
        for i, item in enumerate(items):
            item_line = items.item_lines[i]
            if not isinstance(item, str):
                r.fail(where, f"expected a host name, got {show(item)}.", item_line)
            if item not in hosts:
                r.fail(where, f"unknown host {item!r}; declared hosts: {', '.join(hosts)}."
                       f"{did_you_mean(item, hosts)}", item_line)
            if item in names:
                r.fail(where, f"{item!r} is listed twice.", item_line)
            names.append(item)
        roles[role] = tuple(names)
    return roles


def _service(r: _Reader, name: str, m: Map, line: int, defaults: Mapping[str, Any],
             hosts: Mapping[str, Host], roles: Mapping[str, tuple[str, ...]],
             staged: Mapping[str, Any], *, publishes: bool = True) -> Service:
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
    if v["reload_signal"] is BY_KIND:
        v["reload_signal"] = RELOAD_DEFAULT.get(kind, "HUP")
    if v["socket"] is BY_KIND:
        v["socket"] = "bind" if kind == "command" else "inherit"
    if v["shared"] is BY_KIND:
        v["shared"] = ("media/",) if kind == "django" else ()
    _check_shared(r, where, v["shared"], m.get("shared"))
    if v["lb"] is not None:
        lb_line = lines.get("lb", line)
        for key, s in LB.items():
            if s.required and key not in v["lb"]:
                r.fail(f"{where}.lb", f"missing required key {key!r}: expected {s.expect}.",
                       lb_line)
        if v["lb"]["host"] not in hosts:
            r.fail(f"{where}.lb.host", f"unknown host {v['lb']['host']!r}; declared hosts: "
                   f"{', '.join(hosts)}.{did_you_mean(v['lb']['host'], hosts)}", lb_line)
        v["lb"] = Lb(**_fill(LB, v["lb"]))
    if given.get("gate", {}).get("source", defaults.get("gate", {}).get("source")) == "haproxy" \
            and v["lb"] is None:
        r.fail(f"{where}.gate.source", "haproxy needs an lb: block (which HAProxy, which "
                                       "backend) for this service.", lines.get("gate", line))
    if kind == "django":
        forbid("migrate_command", "for kind django: `migrate` runs manage.py migrate")
    if v["migrations_path"] is not None and v["migrate_command"] is None:
        r.fail(f"{where}.migrations_path", "needs `migrate_command`: it says when that "
                                           "command runs.", lines["migrations_path"])
    for key in ("migrate", "collectstatic"):
        if v[key] is DJANGO_ONLY:
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
                   f"{', '.join(roles) or 'none declared'}.{did_you_mean(v['role'], roles)}",
                   lines["role"])
        service_hosts = roles[v["role"]]
    elif "hosts" in given:
        for i, host in enumerate(v["hosts"]):
            if host not in hosts:
                r.fail(f"{where}.hosts", f"unknown host {host!r}; declared hosts: "
                       f"{', '.join(hosts)}.{did_you_mean(host, hosts)}",
                       m["hosts"].item_lines[i])
        service_hosts = v["hosts"]
    else:
        r.fail(where, "no 'role' or 'hosts': say where it runs, with role: <role> or "
                      "hosts: [<host>, ...].", line)

    if v["bind"] is not None and int(v["bind"].rpartition(":")[2]) != v["port"]:
        r.fail(f"{where}.bind", f"the port of {v['bind']!r} must be the service's port "
                                f"{v['port']} (health checks use it).", lines["bind"])
    if URL.match(v["repo"]) is None and SCP.match(v["repo"]) is None:
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
    v["gate"] = Gate(**_fill(GATE, defaults.get("gate", {}), given.get("gate", {}),
                             staged.get("gate", {})))
    v["migrations"] = Migrations(**_fill(MIGRATIONS, defaults.get("migrations", {}),
                                         given.get("migrations", {})))
    if v["post_deploy_migrations"] and kind != "django":
        r.fail(f"{where}.post_deploy_migrations", "only django services have migrations; "
               "remove it.", lines["post_deploy_migrations"])
    v["post_deploy_migrations"] = v["post_deploy_migrations"] or ()
    v["env"] = FrozenMap({**(v["env"] or {}), **staged.get("env", {})})
    v["pip_env"] = FrozenMap(v["pip_env"] or {})
    if "rollout" in staged:
        v["rollout"] = staged["rollout"]
    for key in ("production_branch", "tag_prefix"):  # a publishing stage's own
        if publishes and key in staged:
            v[key] = staged[key]
    v["hooks"] = _hooks(r, v["hooks"], f"{where}.hooks", lines.get("hooks", line))
    v["hosts"] = tuple(service_hosts)
    return Service(name=name, **v)


def _hooks(r: _Reader, given: Mapping[str, Any] | None, where: str,
           line: int) -> FrozenMap:
    out = {}
    for point, items in (given or {}).items():
        hooks = []
        for i, item in enumerate(items):
            at = f"{where}.{point}[{i}]"
            if "run" not in item:
                r.fail(at, "missing required key 'run': the shell command to run.", line)
            if "waves" in item and point not in ("before_wave", "after_wave"):
                r.fail(f"{at}.waves", f"only for before_wave and after_wave (not {point}).",
                       line)
            hooks.append(Hook(**_fill(HOOK, item)))
        out[point] = tuple(hooks)
    return FrozenMap(out)


def _check_shared(r: _Reader, where: str, shared: tuple[str, ...], given: Any) -> None:
    """No shared path inside another: each is one link in the release."""
    names = [p.rstrip("/") for p in shared]
    for i, name in enumerate(names):
        outer = next((o for o in names if name.startswith(o + "/")), None)
        if outer is not None:
            r.fail(f"{where}.shared", f"{shared[i]!r} is inside {outer + '/'!r}, which is "
                   "shared already: list only the outer one.",
                   given.item_lines[i] if given else None)
        if name in names[:i]:
            r.fail(f"{where}.shared", f"{shared[i]!r} is listed twice (once as a directory "
                   "with '/', once as a file): say which it is.",
                   given.item_lines[i] if given else None)


def _check_ports(r: _Reader, services: Mapping[str, Service], hosts: Mapping[str, Host],
                 services_map: Map) -> None:
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

def parse(text: str, path: str = DEFAULT_PATH, base_dir: str | None = None,
          stage: str | None = None) -> Config:
    """Build a Config from YAML text, as `stage` sees it (default: production). `path`
    names it in errors; relative paths in it are resolved against `base_dir` (default:
    the directory of `path`). Every declared stage is checked, whichever is selected."""
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    doc = parse_yaml(text, path)
    selected = _build(doc, path, base, stage)
    if selected.stages:
        views = {}  # production first: a clash names the other stage
        for name in [PRODUCTION, *selected.stages]:
            views[name] = selected if name == selected.stage else _build(doc, path, base, name)
        _check_stages_apart(views, doc)
    return selected


def _check_stages_apart(views: Mapping[str, Config], doc: Map) -> None:
    """Two stages never deploy a service into the same directory of the same machine:
    each stage's lock, history and `current` live there."""
    seen: dict[tuple[str, str, str], str] = {}
    for stage, cfg in views.items():
        for svc in cfg.services.values():
            for h in svc.hosts:
                host = cfg.hosts[h]
                key = (svc.name, host.address, svc.dir_on(host))
                other = seen.setdefault(key, stage)
                if other != stage:
                    raise ConfigError(
                        f"stages.{stage}: {svc.name} would deploy to {svc.dir_on(host)} on "
                        f"{host.address} ({h}), which stage {other} deploys to as well. Give "
                        f"stage {stage} its own hosts (its roles: or hosts:), or another root "
                        "for that host.", path=cfg.path, line=doc.key_lines.get("stages"))


def load(path: str | os.PathLike | None = None, stage: str | None = None) -> Config:
    """Load services.yaml: `path`, else $DEPLOYTOOLS_CONFIG, else ./services.yaml, as
    `stage` sees it (default: production)."""
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
    return parse(text, shown, stage=stage)

