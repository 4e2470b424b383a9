"""Virtualenvs keyed by a hash of what goes into them, reused while that does not change.

The key covers the requirements file, the interpreter's version, the pip
options and the packages we add (gunicorn), so any change builds a new one.
A venv is built in place and marked `.complete` only at the end: a half-built
one (killed deploy) is never reused.
"""
from __future__ import annotations

from .script import q

# Added to every WSGI service's venv; a pin in the service's requirements wins.
GUNICORN = "gunicorn>=21"
SUPERVISOR = "supervisor>=4.2"


def extra_packages(service) -> list[str]:
    return [] if service.kind == "command" else [GUNICORN]


def build_script(service, dir: str, release_dir: str) -> str:
    """Bash that computes the venv key into $VENV_KEY and builds the venv if missing.

    Prints `@@venv built|reused KEY`.
    """
    req = f"{release_dir}/{service.requirements}"
    extras = " ".join(q(p) for p in extra_packages(service))
    pip_args = service.pip_args
    key_inputs = f"{service.python}|{pip_args}|{extras}"
    req_arg = '-r "$REQ"' if service.requirements else ""
    script = f"""
PY={q(service.python)}
command -v "$PY" >/dev/null || {{ echo "python interpreter '$PY' not found on $(hostname); install it or set python: in services.yaml" >&2; exit 1; }}
REQ={q(req)}
[ -f "$REQ" ] || REQ=/dev/null
VENV_KEY=$( {{ cat "$REQ"; printf '%s\\n' {q(key_inputs)}; "$PY" -c 'import sys; print(sys.version)'; }} | sha256sum | cut -c1-16)
V={q(dir)}/venvs/$VENV_KEY
if [ -f "$V/.complete" ]; then
  echo "@@venv reused $VENV_KEY"
else
  rm -rf "$V"
  "$PY" -m venv "$V"
  "$V/bin/pip" install -q --disable-pip-version-check {pip_args} {req_arg} {extras} >"$V.log" 2>&1 || {{ cat "$V.log" >&2; rm -rf "$V"; echo "pip install failed for $REQ" >&2; exit 1; }}
  touch "$V/.complete"
  echo "@@venv built $VENV_KEY"
fi
"""
    if service.kind == "command":
        # Not Python (a JVM, a Go binary): a virtualenv only if it has a requirements file.
        return f'if [ -f {q(req)} ]; then\n{script}else\n  VENV_KEY=none\nfi\n'
    return script


def tools_script(service, dir: str) -> str:
    """Bash that gives the service its own supervisord (in <dir>/tools), once."""
    return f"""
T={q(dir)}/tools
if [ ! -f "$T/.complete" ]; then
  rm -rf "$T"
  {q(service.python)} -m venv "$T"
  "$T/bin/pip" install -q --disable-pip-version-check {service.pip_args} {q(SUPERVISOR)} >"$T.log" 2>&1 || {{ cat "$T.log" >&2; rm -rf "$T"; echo "could not install supervisor into $T" >&2; exit 1; }}
  touch "$T/.complete"
  echo "@@tools built"
fi
"""
