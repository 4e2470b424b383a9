"""Jinja2: templates/ -> the files a service runs from.

Per release (so staging never touches the live config, and a rollback brings
the old config back with the old code): gunicorn.conf.py, env (0600), start.
Per service: supervisord.conf, bin/ctl, init.d script, systemd unit.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from . import handoff

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class File:
    path: str  # relative to the release (or service) directory
    content: str
    mode: int = 0o644


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    return env


def render(name: str, **context) -> str:
    return _env().get_template(name).render(**context)


def bind_for(service, host) -> str:
    return service.bind or f"{host.address}:{service.port}"


def service_env(service, host, dir: str, release: str, commit: str) -> dict[str, str]:
    """The process environment: the service's `env`, plus where it runs.

    Nothing release-specific goes in here: a changed environment forces a
    restart (a running master keeps its environment), and code-only releases
    must reload gracefully. The release's commit is in its REVISION file.
    """
    env = dict(service.env)
    env.setdefault("DEPLOYTOOLS_SERVICE", service.name)
    env.setdefault("PORT", str(service.port))
    env.setdefault("HOST", bind_for(service, host).rpartition(":")[0])  # `bind`'s address
    return env


def release_files(service, host, dir: str, release: str, commit: str) -> list[File]:
    ctx = dict(service=service, dir=dir, release=release, bind=bind_for(service, host),
               inherit=handoff.inherits(service))
    files = [
        File(".deploy/env", render("env.j2", env=service_env(service, host, dir, release, commit),
                                   **ctx), 0o600),
        File(".deploy/start", render("start.j2", **ctx), 0o755),
    ]
    if service.kind != "command":
        files.append(File(".deploy/gunicorn.conf.py", render("gunicorn.conf.py.j2", **ctx)))
    return files


def service_files(service, host, dir: str) -> list[File]:
    ctx = dict(service=service, dir=dir, bind=bind_for(service, host),
               inherit=handoff.inherits(service))
    return [
        File("etc/supervisord.conf", render("supervisord.conf.j2", **ctx)),
        File("bin/ctl", render("ctl.j2", **ctx), 0o755),
        File("etc/init.d/" + service.name, render("initd.j2", **ctx), 0o755),
        File("etc/systemd/" + service.name + ".service", render("systemd.service.j2", **ctx)),
    ]
