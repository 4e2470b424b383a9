"""Jinja2: templates/ -> the files a service runs from.

Per release (so staging never touches the live config, and a rollback brings
the old config back with the old code): gunicorn.conf.py, env (0600), start.
Per service: supervisord.conf, bin/ctl, init.d script, systemd unit.

The remote bash programs (templates/remote/*.sh.j2) are rendered by
`render_script`, in an environment where quoting happens at one edge: every
`{{ value }}` must say how it is made safe for the shell (`shquote`, `shwords`,
or a number); anything else fails to render, so no value is ever pasted in
unquoted (pyinfra's StringCommand/QuoteString, enforced).
"""
from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup


def _packaged_templates() -> Path:
    """Our templates: `deploytools/templates/` inside an installed wheel (the build maps
    the repository's top-level `templates/` there), else the checkout's `templates/`
    (an editable install, or running from the source tree)."""
    installed = Path(str(resources.files("deploytools") / "templates"))
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "templates"


TEMPLATES = _packaged_templates()


@dataclass(frozen=True)
class File:
    path: str  # relative to the release (or service) directory
    content: str
    mode: int = 0o644


@lru_cache(maxsize=8)
def _env(overrides: str | None = None) -> jinja2.Environment:
    """The template environment; with `overrides` (a service's `templates:` directory)
    a template found there replaces ours of the same name."""
    search = [overrides, str(TEMPLATES)] if overrides else [str(TEMPLATES)]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(search),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    return env


def render(name: str, *, templates: str | None = None, **context) -> str:
    """Render template `name`; `templates` is a directory searched before ours."""
    return _env(templates).get_template(name).render(**context)


class UnquotedValue(ValueError):
    """A remote script template interpolated a value without saying how it is quoted."""


def shquote(value) -> str:
    """One shell word, quoted."""
    return shlex.quote(str(value))


def shwords(value) -> str:
    """Shell words, each quoted: a list as it is, or a string (`pip_args`) split as a
    shell would first, so its quoting groups words and nothing in it is expanded."""
    words = value if isinstance(value, (list, tuple)) else shlex.split(str(value or ""))
    return " ".join(shlex.quote(str(w)) for w in words)


# In templates the filters return Markup, the mark `_quoted_only` lets through. (Never
# add a Markup to a str in Python, or `~` one in a template: markupsafe would
# HTML-escape the other side. A unit test renders every script and looks for that.)
def _quoted_word(value) -> Markup:
    return Markup(shquote(value))


def _quoted_words(value) -> Markup:
    return Markup(shwords(value))


def _quoted_only(value):
    """`finalize` of the script environment: what reaches the script is quoted."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Markup(str(value))
    raise UnquotedValue(f"unquoted value {value!r} in a remote script template: pipe it "
                        "through shquote (one word) or shwords (a list of words)")


@lru_cache(maxsize=1)
def _script_env() -> jinja2.Environment:
    # autoescape only so that macros and filters return Markup, which `finalize`
    # lets through; it never HTML-escapes, since `finalize` quotes or refuses first.
    env = jinja2.Environment(loader=_env().loader,  # the same templates/ as every file
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=True,
                             finalize=_quoted_only,
                             # bash has `${#array[@]}`: template comments are {## ... ##}
                             comment_start_string="{##", comment_end_string="##}")
    env.filters["shquote"] = _quoted_word
    env.filters["shwords"] = _quoted_words
    env.filters["b64"] = lambda v: base64.b64encode(
        v.encode() if isinstance(v, str) else v).decode()
    env.filters["octal"] = lambda v: Markup(f"{int(v):o}")
    # The umask under which a new file gets mode v (less its x bits: a redirection
    # creates a file 0666 at most), and whether v has any x bit.
    env.filters["umask_for"] = lambda v: Markup(f"{0o777 & ~int(v):o}")
    env.tests["executable"] = lambda v: bool(int(v) & 0o111)
    env.globals["supervise_program"] = supervise_program
    env.globals["check_config_program"] = check_config_program
    return env


def render_script(name: str, **context) -> str:
    """Render the remote program templates/remote/NAME (bash, run by `Target.run`)."""
    return str(_script_env().get_template(f"remote/{name}").render(**context))


def bind_for(service, host) -> str:
    return service.bind or f"{host.address}:{service.port}"


def service_env(service, host, dir: str, release: str, commit: str) -> dict[str, str]:
    """The process environment: the service's `env`, plus where it runs.

    Nothing release-specific goes in here: a changed environment forces a
    restart (a running master keeps its environment), and code-only releases
    must reload gracefully. The release's commit is in its REVISION file.

    A secret (config.secrets.Secret: anything with `reveal`) gives its value here,
    for the env file, and nowhere else; the deploy resolved it before staging.
    """
    env = {k: v.reveal() if hasattr(v, "reveal") else v for k, v in service.env.items()}
    env.setdefault("DEPLOYTOOLS_SERVICE", service.name)
    env.setdefault("PORT", str(service.port))
    env.setdefault("HOST", bind_for(service, host).rpartition(":")[0])  # `bind`'s address
    return env


def release_files(service, host, dir: str, release: str, commit: str) -> list[File]:
    ctx = dict(service=service, dir=dir, release=release, bind=bind_for(service, host),
               inherit=service.socket == "inherit", templates=service.templates)
    files = [
        File(".deploy/env", render("env.j2", env=service_env(service, host, dir, release, commit),
                                   **ctx), 0o600),
        File(".deploy/start", render("start.j2", **ctx), 0o755),
    ]
    if service.kind != "command":
        files.append(File(".deploy/gunicorn.conf.py", render("gunicorn.conf.py.j2", **ctx)))
    return files


@lru_cache(maxsize=1)
def supervise_program() -> str:
    """templates/remote/supervise.py: the Python program (standard library only) that
    asks a service's supervisord over its socket for the status of its processes
    (the remote programs' `status` function) and restarts them one slot at a time
    (`bin/ctl restart-program`)."""
    return (TEMPLATES / "remote" / "supervise.py").read_text()


@lru_cache(maxsize=1)
def check_config_program() -> str:
    """templates/remote/check_config.py: `gunicorn --check-config` without Python's
    teardown, run with the release's python at staging."""
    return (TEMPLATES / "remote" / "check_config.py").read_text()


# supervisord calls a program RUNNING (started) after this many seconds up; the
# rolling restart (supervise.py) asks it only from then on whether the slots are.
STARTSECS = 1


def service_files(service, host, dir: str) -> list[File]:
    ctx = dict(service=service, dir=dir, bind=bind_for(service, host),
               inherit=service.socket == "inherit", templates=service.templates,
               supervise_program=supervise_program(), startsecs=STARTSECS)
    return [
        File("etc/supervisord.conf", render("supervisord.conf.j2", **ctx)),
        File("bin/ctl", render("ctl.j2", **ctx), 0o755),
        File("etc/init.d/" + service.name, render("initd.j2", **ctx), 0o755),
        File("etc/systemd/" + service.name + ".service", render("systemd.service.j2", **ctx)),
    ]
