"""Secrets out of services.yaml: an `env` (or `pip_env`) value read at deploy time from
the controller.

    env:
      DJANGO_SETTINGS_MODULE: airship.settings        # a plain value, as written
      SECRET_KEY: {from_env: AIRSHIP_SECRET_KEY}      # the controller's environment
      DATABASE_URL: {from_file: ~/.secrets/airship.db}  # a file (~ and services.yaml's dir)

Loading services.yaml makes such a value a `Secret` that says where the value is,
not what it is: listing, `plan`, `status` and `config --check` never read it.
`resolve(service)` reads every secret of a service, once, at the start of a deploy,
before any host is touched; a missing variable or an unreadable file is one
ConfigError (exit 2) naming services.yaml's line and what to set.

A resolved Secret still prints as `<secret>` (str, repr, f-strings, JSON through
`masked`): its value comes out only through `reveal()`, which `render` calls for
the env file (0600, written inside the staging program that reaches the host on
stdin) and `venv.pip_environment` for `pip_env` (exported inside that program to
pip and uv only). Nothing else of the library calls it. What hosts print goes
through `report.redact` before it is shown or recorded: a tool that echoes a value it was
given (a hook, an installer's error) does not leak it either.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from deploytools.errors import ConfigError
from deploytools.report import REDACTED, hide

SHOWN = REDACTED
SOURCES = ("from_env", "from_file")
EXPECT = "a string, {from_env: NAME} or {from_file: PATH}"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRAILING_NEWLINES = re.compile(r"(\r?\n)+\Z")


@dataclass(frozen=True)
class Secret:
    """An env value kept out of services.yaml. `source` is from_env or from_file; `ref`
    the variable's name or the file's path (absolute once loaded). The value, once
    resolved, is in no repr, comparison or str."""

    source: str
    ref: str
    path: str | None = field(default=None, compare=False)  # services.yaml, for errors
    line: int | None = field(default=None, compare=False)
    value: str | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return SHOWN

    def __format__(self, spec: str) -> str:
        return format(SHOWN, spec)

    @property
    def origin(self) -> str:
        """Where the value comes from, as services.yaml says it: `from_env NAME`."""
        return f"{self.source} {self.ref}"

    def placed(self, path: str, line: int | None, base: Any) -> "Secret":
        """This secret with its services.yaml line, a file's path made absolute by
        `base` (the loader's: `~` expanded, relative to services.yaml's directory)."""
        ref = base(self.ref) if self.source == "from_file" else self.ref
        return dataclasses.replace(self, ref=ref, path=path, line=line)

    def reveal(self) -> str:
        """The value, for the env file only. Resolving is a deploy's first step."""
        if self.value is None:
            raise RuntimeError(f"secret {self.origin} was not resolved before rendering "
                               "(call deploytools.config.secrets.resolve first)")
        return self.value


def coerce(value: Any, raw: Any) -> str | Secret:
    """An `env` value as written: a scalar (as a string), or a one-key mapping
    `{from_env: NAME}` / `{from_file: PATH}` (a Secret, not yet placed)."""
    if isinstance(value, dict):
        keys = list(value)
        if len(keys) != 1 or keys[0] not in SOURCES:
            given = ", ".join(map(str, keys)) or "no key"
            raise ValueError(f"a secret is a mapping of one key, from_env or from_file "
                             f"(got {given})")
        source, ref = keys[0], value[keys[0]]
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError(f"{source} takes " + ("the name of an environment variable"
                                                    if source == "from_env" else "a path"))
        if source == "from_env" and not _ENV_NAME.fullmatch(ref):
            raise ValueError(f"{ref!r} is not an environment variable name (letters, "
                             "digits and '_', not starting with a digit)")
        if any(c in ref for c in "\n\r\0"):
            raise ValueError(f"{source} takes one line")
        return Secret(source, ref)
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) and raw is not None:
        return raw  # as written: `010` stays `010`, `yes` stays `yes`
    raise ValueError("")


def is_secret(value: Any) -> bool:
    return isinstance(value, Secret)


# The settings of a service whose values may be secrets.
SECRET_SETTINGS = ("env", "pip_env")


def secrets_of(service) -> dict[tuple[str, str], Secret]:
    """Every secret of a service, by (setting, name): ("env", "API_TOKEN")."""
    return {(setting, k): v for setting in SECRET_SETTINGS
            for k, v in getattr(service, setting).items() if isinstance(v, Secret)}


HIDDEN = "<hidden>"
# A plain value under such a name, or a URL's password, is most likely a secret written
# in services.yaml before from_env/from_file existed: plan and status do not print it.
_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE|AUTH", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]+(?=@)")


_URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+@")


def pip_args_warning(service) -> str | None:
    """What to say when `pip_args` holds a URL's credentials (a token as its user, or a
    password): they are on the installers' command lines on the hosts, in `ps`."""
    if not _URL_USERINFO.search(service.pip_args or ""):
        return None
    return (f"services.{service.name}.pip_args holds a URL's credentials: they are on pip's "
            "and uv's command lines on every host while they run (ps shows them to every "
            "user there). Move the index URL to pip_env (PIP_INDEX_URL / UV_INDEX_URL, "
            "{from_env: NAME}).")


def shown(name: str, value: Any) -> str:
    """How plan and status show one env value: a secret `<secret>`, a plain value as
    written, except a likely secret written in plain text (a name like SECRET_KEY or
    DB_PASSWORD, a URL's password): `<hidden>`."""
    if isinstance(value, Secret):
        return SHOWN
    if _SECRET_NAME.search(name):
        return HIDDEN
    return _URL_PASSWORD.sub(lambda m: m.group("head") + HIDDEN, value)


def masked(env: Mapping[str, Any]) -> dict[str, str]:
    """The env as plan/status show it (`shown`)."""
    return {k: shown(k, v) for k, v in env.items()}


def described(env: Mapping[str, Any]) -> str:
    """One line for a human: `A=1 SECRET_KEY=<secret> (from_env AIRSHIP_SECRET_KEY)`."""
    return " ".join(f"{k}={SHOWN} ({v.origin})" if isinstance(v, Secret) else f"{k}={shown(k, v)}"
                    for k, v in env.items()) or "(none)"


def _read(secret: Secret, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(value, "") or (None, what is wrong and what to do)."""
    if secret.source == "from_env":
        value = environ.get(secret.ref)
        if value is None:
            return None, (f"the environment variable {secret.ref} is not set here: export it "
                          f"before deploying (export {secret.ref}=..., or your CI's secret "
                          "variables)")
        what = f"the environment variable {secret.ref}"
    else:
        try:
            with open(secret.ref, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, (f"the file {secret.ref} does not exist: create it on this machine "
                          "(mode 0600), or point from_file at the file that holds it")
        except IsADirectoryError:
            return None, f"{secret.ref} is a directory: from_file takes a file"
        except OSError as e:
            return None, (f"cannot read the file {secret.ref}: {e.strerror}; make it readable "
                          "by the user who deploys")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"the file {secret.ref} is not UTF-8 text"
        # As `$(cat file)`: the newline(s) an editor or `echo` adds at the end are not
        # part of the value.
        value = _TRAILING_NEWLINES.sub("", value)
        what = f"the file {secret.ref}"
    if value == "":
        # An unset CI variable often arrives as an empty one: never deploy that.
        return None, f"{what} is empty; give it the value"
    if any(c in value for c in "\n\r\0"):
        return None, (f"{what} holds more than one line (or a NUL byte); an env value is "
                      "one line")
    return value, ""


def resolve(service, environ: Mapping[str, str] | None = None, *,
            settings: tuple[str, ...] = SECRET_SETTINGS):
    """`service` with every secret's value read (the service itself if it has none),
    of `settings` only if given (`setup` needs `pip_env`'s, not the app's `env`).
    Raises one ConfigError listing every secret that cannot be read, with its line."""
    found = {k: v for k, v in secrets_of(service).items() if k[0] in settings}
    if not found:
        return service
    environ = os.environ if environ is None else environ
    resolved = {setting: dict(getattr(service, setting)) for setting in SECRET_SETTINGS}
    problems: list[tuple[Secret, str, str]] = []
    for (setting, key), secret in found.items():
        value, why = _read(secret, environ)
        if value is None:
            problems.append((secret, f"services.{service.name}.{setting}.{key}", why))
        else:
            hide(value)
            resolved[setting][key] = dataclasses.replace(secret, value=value)
    if problems:
        first, where, why = problems[0]
        message = (f"{where}: {why}. Secrets are read when a deploy starts; nothing was "
                   "touched.")
        for secret, where, why in problems[1:]:
            at = f" (line {secret.line})" if secret.line else ""
            message += f" Also {where}{at}: {why}."
        raise ConfigError(message, path=first.path, line=first.line)
    return dataclasses.replace(service, **{setting: type(getattr(service, setting))(values)
                                           for setting, values in resolved.items()})
