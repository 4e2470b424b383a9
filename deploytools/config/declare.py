"""How a services.yaml key is declared: its type, default, validator and help.

A key is declared once, as a field of the model (model.py) whose default is a
``setting(...)``::

    @dataclass(frozen=True)
    class Gate(Declared):
        bake: float = setting(NUMBER, 30.0, positive, "Seconds of traffic judged ...")

The field is the typed attribute (``svc.gate.bake``); its metadata holds the
``Setting`` that the loader, the error messages, the model's own checks and
the reference (docs/gen_reference.py) read. ``settings_of(Gate)`` lists them.

Types coerce exactly (a typo never becomes a surprising value); validators are
tiny functions that raise ValueError naming the bad value, as gunicorn's do.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from deploytools.waves import PERCENT


class _Sentinel:
    def __init__(self, shown: str):
        self.shown = shown

    def __repr__(self) -> str:
        return self.shown


REQUIRED: Any = _Sentinel("REQUIRED")  # a Setting default: the key must be given
DJANGO_ONLY: Any = _Sentinel("true for django")  # resolved by the loader from the kind
BY_KIND: Any = _Sentinel("depends on the kind")  # resolved by the loader from the kind


# --------------------------------------------------------------------------- types

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
    def __init__(self, name: str, item: Setting, *, unique: bool = False,
                 empty_ok: bool = False):
        super().__init__(name, "a list")
        self.item = item
        self.unique = unique
        self.empty_ok = empty_ok  # `[]` means none (else an empty list is an error)


class MapOf(Type):
    """A mapping with free-form keys (checked by ``key_check``), each value an ``item``."""

    def __init__(self, name: str, key_check: Callable[[str], None], item: Setting):
        super().__init__(name, "a mapping")
        self.key_check = key_check
        self.item = item


class Section(Type):
    """A nested mapping of declared settings (health, gate, ssh, defaults)."""

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


def setting(type: Type, default: Any = None, validator: Callable[[Any], None] | None = None,
            help: str = "", **options: Any) -> Any:
    """A model field that is a services.yaml key: the field's name is the key."""
    return dataclasses.field(default=default, metadata={
        "setting": Setting("", type, default, validator, help, **options)})


def settings_of(model: type) -> dict[str, Setting]:
    """The keys a model declares, in order, by name (fields without a setting are derived)."""
    found = model.__dict__.get("_settings")
    if found is None:
        found = {f.name: dataclasses.replace(f.metadata["setting"], name=f.name)
                 for f in dataclasses.fields(model) if "setting" in f.metadata}
        model._settings = found  # type: ignore[attr-defined]
    return found


class Declared:
    """A model of declared settings checks itself: a Gate(bake=0) is never built, even
    outside the loader (which checks first, to say the file and line)."""

    def _where(self) -> str:
        return type(self).__name__.lower()

    def __post_init__(self) -> None:
        for name, s in settings_of(type(self)).items():
            value = getattr(self, name)
            if value is REQUIRED or isinstance(value, _Sentinel):
                raise ValueError(f"{self._where()}.{name}: missing (expected {s.expect})")
            if s.type.coerce is None or isinstance(s.type, (ListOf, MapOf, Section)):
                continue  # containers: built by the loader from checked items
            if value is None and (s.default is None or s.nullable):
                continue
            try:
                typed = s.type.coerce(value, None)
            except ValueError as e:
                hint = f"; {e}" if str(e) else ""
                raise ValueError(f"{self._where()}.{name}: expected {s.expect}, "
                                 f"got {show(value)}{hint}") from None
            try:
                if s.validator:
                    s.validator(typed)
            except ValueError as e:
                raise ValueError(f"{self._where()}.{name}: {e}") from None
            if s.type is NUMBER:
                object.__setattr__(self, name, float(typed))


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


def _to_rollout_step(value: Any, raw: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = PERCENT.match(value)  # the rollout's own rule (waves.py)
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


# --------------------------------------------------------------------------- validators

def show(value: Any) -> str:
    """A value as an error message shows it."""
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


def did_you_mean(word: str, known: Any) -> str:
    # Swapped letters first (`prot` is `port`, not `root`), then difflib's closest.
    close = [k for k in known if sorted(k) == sorted(word)] or \
        difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _rule(expect: str, ok: Callable[[Any], bool]) -> Callable[[Any], None]:
    def validate(value: Any) -> None:
        if not ok(value):
            raise ValueError(f"expected {expect}, got {show(value)}")

    validate.expect = expect  # type: ignore[attr-defined]
    return validate


def all_of(*validators: Callable[[Any], None]) -> Callable[[Any], None]:
    """Each validator in turn; errors of the wrong type say what the first one expects."""
    def validate(value: Any) -> None:
        for v in validators:
            v(value)

    validate.expect = getattr(validators[0], "expect", None)  # type: ignore[attr-defined]
    validate.doc = ", ".join(  # type: ignore[attr-defined]  # for the reference
        e for e in (getattr(v, "expect", None) for v in validators) if e)
    return validate


def at_least(n: int) -> Callable[[Any], None]:
    return _rule(f"an integer >= {n}", lambda v: v >= n)


def at_most(n: float, unit: str) -> Callable[[Any], None]:
    # An upper bound where a huge value would overflow a timer or hang a deploy.
    def validate(value: Any) -> None:
        if value > n:
            raise ValueError(f"expected at most {n:g} {unit}, got {show(value)}")

    validate.expect = f"at most {n:g} {unit}"  # type: ignore[attr-defined]
    return validate


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
tag_prefix = _matches("a tag prefix (letters, digits, '.', '_', '/', '-'; starting with a letter "
                      "or digit: git refuses a tag that starts with '-')",
                      r"([A-Za-z0-9][A-Za-z0-9._/-]*)?")
migration_name = _matches("a migration as app.name, e.g. flights.0004_remove_flight_gate",
                          r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z0-9_]+")
program = _matches("a program name or path, without spaces", r"\S+")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
branch_name = _rule("a git branch name (letters, digits, '.', '_', '/', '-')",
                    lambda v: _BRANCH.fullmatch(v) is not None and ".." not in v
                    and not v.endswith((".lock", "/", ".")))
relative_path = _rule("a path relative to the repository", lambda v: v.strip() != ""
                      and not v.startswith(("/", "~")) and ".." not in v.split("/"))
single_line = _rule("a single line of text", lambda v: "\n" not in v and "\0" not in v)
url_path = _rule("a URL path starting with /", lambda v: v.startswith("/") and " " not in v)
shell_line = _rule("a single line of shell",
                   lambda v: v.strip() != "" and "\n" not in v and "\0" not in v)

# gunicorn's rule for its APP argument (gunicorn.util.import_app), checked without
# importing anything: MODULE[:OBJECT], where the module is a dotted name (the
# default object is `application`) and the object is one Python expression that
# is either a plain name or a call of a plain name whose arguments are all
# literals (`create_app()`, `create_app("production", debug=False)`).
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
APP_REF_EXPECT = ("a gunicorn app reference: module:name, module:factory() or "
                  "module:factory(literal arguments)")


def app_ref(value: str) -> None:
    module, colon, obj = value.partition(":")
    if not colon:
        obj = "application"  # gunicorn's default
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"expected {APP_REF_EXPECT} on one line, got {show(value)}")
    if not _MODULE.fullmatch(module):
        hint = ""
        if module.endswith(".py") and _MODULE.fullmatch(module[:-3].replace("/", ".")):
            hint = f" Did you mean '{module[:-3].replace('/', '.')}:{obj}'?"
        raise ValueError(f"expected {APP_REF_EXPECT}; {module!r} is not a module name such as "
                         f"airship.wsgi, in {value!r}.{hint}")
    try:
        expression = ast.parse(obj, mode="eval").body
    except (SyntaxError, ValueError):
        raise ValueError(f"expected {APP_REF_EXPECT}; gunicorn cannot parse {obj!r} as an "
                         f"attribute name or a function call") from None
    if isinstance(expression, ast.Name):
        return
    if not isinstance(expression, ast.Call):
        raise ValueError(f"expected {APP_REF_EXPECT}; gunicorn cannot use {obj!r}: it must be "
                         "a name in the module or a call of one (no attributes, indexes or "
                         "operators)")
    if not isinstance(expression.func, ast.Name):
        raise ValueError(f"expected {APP_REF_EXPECT}; in {obj!r} the function must be a "
                         "simple name in the module (gunicorn's rule)")
    try:
        for arg in [*expression.args, *(kw.value for kw in expression.keywords)]:
            ast.literal_eval(arg)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"expected {APP_REF_EXPECT}; the arguments in {obj!r} must be Python "
                         "literals (strings, numbers, True/False/None, lists, dicts), as "
                         "gunicorn evaluates them without running code") from None
    if any(kw.arg is None for kw in expression.keywords):
        raise ValueError(f"expected {APP_REF_EXPECT}; gunicorn cannot pass **{{...}} in {obj!r}: "
                         "name each keyword argument")


app_ref.expect = APP_REF_EXPECT  # type: ignore[attr-defined]

# A service's directory is written into supervisord's config (where `%` interpolates
# and `;` starts a comment), systemd units (`%` specifiers, spaces split words) and
# shell commands: only characters that mean nothing to any of them.
SAFE_PATH_RULE = "letters, digits, '/', '.', '_', '+' and '-'"
_SAFE_PATH = re.compile(r"[A-Za-z0-9/._+-]+")


def safe_path(value: str) -> None:
    if not _SAFE_PATH.fullmatch(value):
        raise ValueError(f"expected a path of {SAFE_PATH_RULE} (it is written into "
                         f"supervisord's config, systemd units and shell commands), "
                         f"got {value!r}")


def host_root(value: str) -> None:
    """A host's root: a safe path, or one under `~/` (checked again once expanded)."""
    nonblank(value)
    safe_path(value[2:] if value.startswith("~/") else value)


def env_value(value: Any) -> None:
    """A plain env value (a secret, checked by its own rules, passes)."""
    if isinstance(value, str) and ("\n" in value or "\0" in value):
        raise ValueError(f"expected a single line, got {show(value)}")


def rollout_step(value: int | str) -> None:
    if isinstance(value, int) and value < 1:
        raise ValueError(f"expected a positive number of hosts, got {value}")
    if isinstance(value, str) and not 0 < float(value[:-1]) <= 100:
        raise ValueError(f"expected a percentage above 0% and at most 100%, got {value!r}")


def status(value: int | str) -> None:
    if isinstance(value, int) and not 100 <= value <= 599:
        raise ValueError(f"expected an HTTP status code from 100 to 599 or \"2xx\", got {value}")


URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
SCP = re.compile(r"([^@/\s]+@)?[^/:\s]+:")  # git's rule: a colon before any slash
REPO_SCHEMES = ("ssh", "git", "git+ssh", "ssh+git", "http", "https", "file")


def repo_url(value: str) -> None:
    if not value.strip() or value.startswith("-") or any(c in value for c in "\n\r\0"):
        raise ValueError(f"expected a git URL or a path, got {show(value)}")
    m = URL.match(value)
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

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_name(value: str) -> None:
    if not ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid environment variable name "
                         "(letters, digits and '_', not starting with a digit)")


# Names the staging program itself needs as they are (pip_env is unset after the
# installers, which would take them from it too).
SHELL_NAMES = frozenset({"PATH", "HOME", "IFS", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME",
                         "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH", "TMPDIR"})


def installer_env_name(value: str) -> None:
    env_name(value)
    if value in SHELL_NAMES or value.startswith(("BASH_", "LD_")):
        raise ValueError(f"{value} is not for pip_env: the programs on the host need it as "
                         "it is; pip_env is for the installers' own settings (PIP_*, UV_*, "
                         "a proxy, a CA bundle, ...)")


def pathspec(value: str) -> None:
    """A build input: a path or glob relative to the repository."""
    if value.strip() == "" or value.startswith(("/", "~", ":")) or ".." in value.split("/"):
        raise ValueError(f"expected a path or glob relative to the repository such as src/ or "
                         f"*.java, got {show(value)}")


pathspec.expect = "a path or glob relative to the repository"  # type: ignore[attr-defined]

# What the tool itself writes in a release: a build output never replaces it.
RELEASE_RESERVED = (".", ".deploy", "REVISION")


def build_output(value: str) -> None:
    relative_path(value)
    first = posixpath.normpath(value).split("/")[0]  # `./.deploy/` is `.deploy`
    if any(c in value for c in "*?[") or first in RELEASE_RESERVED:
        raise ValueError(f"expected a file or directory the build writes in the release, such "
                         f"as build/, got {show(value)}")


build_output.expect = "a path in the release, such as build/"  # type: ignore[attr-defined]

# A shared path is linked into every release by the staging program: quoted there
# anyway, but kept to plain names so that it reads the same in services.yaml, on the
# host and in an error message.
_SHARED_PART = re.compile(r"[A-Za-z0-9._@+-]+")
SHARED_PATH_EXPECT = ("a path relative to the release such as media/ (a directory: ends with "
                      "/) or config/local.py (a file)")


def shared_path(value: str) -> None:
    parts = (value[:-1] if value.endswith("/") else value).split("/")
    if value.startswith(("/", "~")) or not all(parts) or \
            any(p in (".", "..") for p in parts):
        raise ValueError(f"expected {SHARED_PATH_EXPECT}, got {show(value)}: it must be "
                         "relative, without '.', '..' or empty parts")
    if not all(_SHARED_PART.fullmatch(p) for p in parts):
        raise ValueError(f"expected {SHARED_PATH_EXPECT}, got {show(value)}: use letters, "
                         "digits, '.', '_', '@', '+' and '-' between the '/'")
    if parts[0] in RELEASE_RESERVED:
        raise ValueError(f"{value!r} is written by deploytools in every release; share "
                         "another path")


shared_path.expect = SHARED_PATH_EXPECT  # type: ignore[attr-defined]
