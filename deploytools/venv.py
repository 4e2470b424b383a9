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

A new virtualenv of a requirements file is downloaded once for the fleet, not by each
host from the index: `Handover` (below, and docs/design.md, "One download per fleet").
"""
from __future__ import annotations

import shlex
import threading
import time
from typing import Callable

from . import lockfiles, render
from .errors import ConfigError
from .inventory import Target, each
from .script import write_file

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


def pip_environment(service) -> dict[str, str]:
    """`pip_env` with each secret's value, for the installers only (see _macros.sh.j2):
    besides the env file, the one place a secret's value is revealed."""
    return {k: v.reveal() if hasattr(v, "reveal") else v for k, v in service.pip_env.items()}


def pip_env_key(service) -> str:
    """What `pip_env` adds to the venv key: its names and plain values, not a secret's
    value (a rotated token must not rebuild every virtualenv). Empty without pip_env,
    so existing virtualenvs keep their keys."""
    if not service.pip_env:
        return ""
    return "|pip_env:" + " ".join(
        k if hasattr(v, "reveal") else f"{k}={shlex.quote(v)}"
        for k, v in sorted(service.pip_env.items()))


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


def context(service, dir: str, release_dir: str, *, wheels: str | None = None) -> dict:
    """What venv.sh.j2 needs: the requirements file, the packages we add, and the
    text hashed into the key besides the requirements and the interpreter. `wheels`:
    "fetch" (this host downloads for the fleet), "wait" (it installs what the
    controller hands over from there) or None (each host for itself); see Handover."""
    extras = extra_packages(service)
    # Unchanged since keys were first computed, so existing venvs keep their key.
    key_inputs = (f"{service.python}|{service.pip_args}|{' '.join(shlex.quote(p) for p in extras)}"
                  + pip_env_key(service))
    return dict(service=service, dir=dir, release_dir=release_dir, uv_package=UV, locked=LOCKED,
                extras=extras, key_inputs=key_inputs, pip_words=pip_words(service),
                pip_env=pip_environment(service),
                wheels=wheels, wheels_dir=wheels_dir(dir, release_dir.rsplit("/", 1)[-1]))


def wheels_dir(dir: str, release: str) -> str:
    """Where a release's downloads for the fleet go (prune.sh.j2 empties <dir>/wheels)."""
    return f"{dir}/wheels/{release}"


class Handover:
    """One download of a new virtualenv's requirements for the whole fleet.

    The first host to stage (`wheels="fetch"`) downloads the distributions from the
    index into its wheels_dir and says `@@wheels ready KEY` (or `@@wheels none`). Each
    other host (`wheels="wait"`) waits at that point for `<wheels_dir>.key`: this class
    copies `<wheels_dir>.tar` from the first host to them and then writes the key, or
    writes "none" (nothing to hand over, the first host failed, or its key is not
    theirs) and they install from the index as without it. Every waiting host is told,
    whatever happens here: `finish()` tells the ones not told yet.

    `on_line` is given each line of the first host's output as it comes."""

    def __init__(self, first: Target, others: list[Target], dir_of: Callable[[Target], str],
                 release: str, *, say: Callable[..., None], parallel: int = 32):
        self.first, self.others, self.release = first, others, release
        self.dir_of, self.say, self.parallel = dir_of, say, parallel
        self._told: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.handed: list[str] = []  # the hosts that received the downloads

    def _path(self, t: Target) -> str:
        return wheels_dir(self.dir_of(t), self.release)

    def on_line(self, line: str) -> None:
        if line == "@@wheels none":
            self._start(None)
        elif line.startswith("@@wheels ready "):
            self._start(line.split()[-1])

    def _start(self, key: str | None) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._hand_over, args=(key,),
                                                name="wheels", daemon=True)
                self._thread.start()

    def _hand_over(self, key: str | None) -> None:
        data = None
        if key is not None:
            t0 = time.monotonic()
            try:
                data = self.first.get(self._path(self.first) + ".tar")
            except Exception as e:  # any failure: each host installs from the index
                self.say("warning", f"  {self.first.name}: could not read the downloaded "
                                    f"requirements ({e}); each host installs from the index",
                         host=self.first.name)

        def give(t: Target) -> None:
            if data is not None:
                try:
                    t.put(data, self._path(t) + ".tar", 0o600)
                    if self._tell(t, key):
                        self.handed.append(t.name)
                    return
                except Exception as e:
                    self.say("warning", f"  {t.name}: could not copy the downloaded "
                                        f"requirements there ({e}); it installs from the index",
                             host=t.name)
            self._tell(t, None)
        each(self.others, give, parallel=self.parallel)
        if data is not None:
            self.say("wheels", f"  requirements downloaded once on {self.first.name}, "
                               f"{len(data) / 1e6:.1f} MB copied to {len(self.handed)} host(s) "
                               f"({time.monotonic() - t0:.1f}s)", host=self.first.name,
                     hosts=sorted(self.handed), bytes=len(data))

    def _tell(self, t: Target, key: str | None) -> bool:
        with self._lock:
            if t.name in self._told:
                return False
            self._told.add(t.name)
        try:
            t.put(key or "none", self._path(t) + ".key", 0o600)
            return True
        except Exception:  # noqa: BLE001 - SFTP refused, or the host is gone
            pass
        try:  # a program, then (a host without SFTP must not wait 600 s)
            t.run(write_file(self._path(t) + ".key", key or "none", 0o600),
                  what="telling it about the downloaded requirements")
            return True
        except Exception:  # its wait ends with its ssh session, or after 600 s
            return False

    def finish(self) -> None:
        """The first host's staging ended: wait for the copies, and tell every host
        not told yet that there is nothing to wait for."""
        self._start(None)
        self._thread.join()


def build_script(service, dir: str, release_dir: str, *, wheels: str | None = None) -> str:
    """Bash that computes the venv key into $VENV_KEY and builds the venv if missing.

    Prints `@@venv built|reused KEY` (and `@@wheels ...` with `wheels`, see context).
    """
    return render.render_script("venv.sh.j2", **context(service, dir, release_dir,
                                                       wheels=wheels))


def tools_script(service, dir: str) -> str:
    """Bash that gives the service its own supervisord (in <dir>/tools), once.

    Prints `@@tools built`."""
    return render.render_script("tools.sh.j2", service=service, dir=dir,
                                supervisor_package=SUPERVISOR, uv_package=UV,
                                pip_words=pip_words(service), pip_env=pip_environment(service))
