"""Virtualenvs keyed by a hash of what goes into them, reused while that does not change.

How the dependencies are installed is decided on the host, from the release
(`install: auto`) or by `install:`: a requirements file, `uv.lock`, the project
itself (pyproject.toml / setup.py / setup.cfg), or nothing. The key covers exactly
that method's input files, the interpreter's version, the pip options and the
packages we add (gunicorn), so any change builds a new one.
A venv is built in place and marked `.complete` only at the end: a half-built
one (killed deploy) is never reused. The programs are templates/remote/venv.sh.j2
and tools.sh.j2.
"""
from __future__ import annotations

import shlex

from . import render
from .errors import ConfigError

# Added to every WSGI service's venv; a pin in the service's requirements wins.
GUNICORN = "gunicorn>=21"
SUPERVISOR = "supervisor>=4.2"
# Into the service's tools/ when `installer: uv` (or a uv.lock is installed).
UV = "uv>=0.4"


def extra_packages(service) -> list[str]:
    return [] if service.kind == "command" else [GUNICORN]


def pip_words(service) -> list[str]:
    """`pip_args` split into words as a shell would (each is quoted again when used)."""
    try:
        return shlex.split(service.pip_args or "")
    except ValueError as e:
        raise ConfigError(f"services.{service.name}.pip_args: cannot split "
                          f"{service.pip_args!r} into words ({e}). Close the quote, or "
                          "quote the value with single quotes.") from None


def context(service, dir: str, release_dir: str) -> dict:
    """What venv.sh.j2 needs: the requirements file, the packages we add, and the
    text hashed into the key besides the requirements and the interpreter."""
    extras = extra_packages(service)
    # Unchanged since keys were first computed, so existing venvs keep their key.
    key_inputs = f"{service.python}|{service.pip_args}|{' '.join(shlex.quote(p) for p in extras)}"
    return dict(service=service, dir=dir, release_dir=release_dir, uv_package=UV,
                extras=extras, key_inputs=key_inputs, pip_words=pip_words(service))


def build_script(service, dir: str, release_dir: str) -> str:
    """Bash that computes the venv key into $VENV_KEY and builds the venv if missing.

    Prints `@@venv built|reused KEY`.
    """
    return render.render_script("venv.sh.j2", **context(service, dir, release_dir))


def tools_script(service, dir: str) -> str:
    """Bash that gives the service its own supervisord (in <dir>/tools), once.

    Prints `@@tools built`."""
    return render.render_script("tools.sh.j2", service=service, dir=dir,
                                supervisor_package=SUPERVISOR, uv_package=UV,
                                pip_words=pip_words(service))
