"""Virtualenvs keyed by a hash of what goes into them, reused while that does not change.

How the dependencies are installed is decided on the host, from the release
(`install: auto`) or by `install:`: a requirements file, `uv.lock`, `poetry.lock` or
`Pipfile.lock` (converted on the controller, see lockfiles.py, and shipped in the
release as LOCKED), the project itself (pyproject.toml / setup.py / setup.cfg), or
nothing. The key covers exactly
that method's input files, the interpreter's version, the pip options and the
packages we add (gunicorn), so any change builds a new one.
A venv is built in place and marked `.complete` only at the end: a half-built
one (killed deploy) is never reused. The programs are templates/remote/venv.sh.j2
and tools.sh.j2.
"""
from __future__ import annotations

import shlex

from . import lockfiles, render
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


# Where a converted poetry.lock / Pipfile.lock goes in the release (venv.sh.j2 reads it).
LOCKED = ".deploy/requirements.locked.txt"


def locked_requirements(service, commit: str, file_at) -> str | None:
    """The hashed requirements list of the commit's poetry.lock or Pipfile.lock, when
    `install:` (auto: in the order venv.sh.j2 detects) picks one of them; else None.

    `file_at(path)` is the text of a file at the commit, or None. Raises ConfigError
    when the lock cannot be converted (a git dependency, no hashes) or is missing."""
    method = service.install
    if method == "auto":
        if service.requirements and file_at(service.requirements) is not None:
            return None
        if file_at("uv.lock") is not None:
            return None
        method = ("poetry" if file_at("poetry.lock") is not None
                  else "pipenv" if file_at("Pipfile.lock") is not None else None)
    if method not in ("poetry", "pipenv"):
        return None
    lock = "poetry.lock" if method == "poetry" else "Pipfile.lock"
    text = file_at(lock)
    where = f"services.{service.name} (install: {service.install}) at {commit[:7]}"
    if text is None:
        raise ConfigError(f"{where}: the commit has no {lock}. Commit it, or set install: "
                          "to what the project uses.")
    try:
        if method == "poetry":
            return lockfiles.poetry_requirements(text, file_at("pyproject.toml") or "")
        return lockfiles.pipfile_requirements(text)
    except lockfiles.LockError as e:
        raise ConfigError(f"{where}: {e}.") from None


def context(service, dir: str, release_dir: str) -> dict:
    """What venv.sh.j2 needs: the requirements file, the packages we add, and the
    text hashed into the key besides the requirements and the interpreter."""
    extras = extra_packages(service)
    # Unchanged since keys were first computed, so existing venvs keep their key.
    key_inputs = f"{service.python}|{service.pip_args}|{' '.join(shlex.quote(p) for p in extras)}"
    return dict(service=service, dir=dir, release_dir=release_dir, uv_package=UV, locked=LOCKED,
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
