"""Hooks: your commands and Python callables at named points of a deploy.

Points (config.HOOK_POINTS): before_stage, after_stage, before_wave, after_wave,
after_deploy, after_rollback, on_failure. A services.yaml hook is a shell
command run once on the controller or on each host of the point; a Python hook
is a callable registered from a fabfile:

    from deploytools.hooks import hook

    @hook("after_wave", service="airship", waves=[1])
    def smoke(ctx):
        requests.get(f"https://{ctx.hosts[0]}/healthz", timeout=5).raise_for_status()

A hook passes when its command exits 0 or its callable returns (any exception
fails it). The deploy's facts reach a shell hook as DEPLOYTOOLS_* environment
variables, never pasted into the command, and a callable as a HookContext. The
driver (rollout) decides what a failure means: `Hooks.fire(..., fatal=True)`
raises HookFailed, the others report a warning and return the failures.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from . import render
from .config import HOOK_POINTS
from .errors import DeployError, errors_text
from .inventory import each


class HookFailed(DeployError):
    """A hook exited non-zero, raised, or ran past its timeout."""


@dataclass(frozen=True)
class HookContext:
    """The facts of one hook point, as a Python hook receives them."""
    point: str
    service: str
    stage: str
    release: str | None = None
    commit: str | None = None
    hosts: tuple[str, ...] = ()
    wave: int | None = None
    waves: int | None = None
    outcome: str | None = None
    error: str | None = None
    user: str | None = None
    say: Callable[[str], None] = field(default=lambda message: None, repr=False, compare=False)

    def environ(self) -> dict[str, str]:
        """The facts as DEPLOYTOOLS_* variables (unset facts are absent)."""
        values = {"HOOK": self.point, "SERVICE": self.service, "STAGE": self.stage,
                  "RELEASE": self.release, "COMMIT": self.commit,
                  "HOSTS": " ".join(self.hosts), "WAVE": self.wave, "WAVES": self.waves,
                  "OUTCOME": self.outcome, "ERROR": self.error, "USER": self.user}
        return {f"DEPLOYTOOLS_{k}": str(v) for k, v in values.items() if v not in (None, "")}


@dataclass(frozen=True)
class Registered:
    point: str
    fn: Callable[[HookContext], object]
    service: str | None = None
    waves: tuple[int, ...] | None = None
    timeout: float = 300.0

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


# Filled while a fabfile is imported: decorators run at import time, before any
# session exists. Read by `registered`, cleared by `clear` (tests).
_REGISTRY: list[Registered] = []
_REGISTRY_LOCK = threading.Lock()


def hook(point: str, *, service: str | None = None, waves: Sequence[int] | None = None,
         timeout: float = 300.0):
    """Register the decorated callable at `point`, for `service` (default: every
    service); before_wave/after_wave hooks may be limited to some `waves` (1 is the
    canary). It receives a HookContext; raising fails it. Returns the callable as is."""
    if point not in HOOK_POINTS:
        raise ValueError(f"unknown hook point {point!r} (hook points: {', '.join(HOOK_POINTS)})")
    if waves is not None and point not in ("before_wave", "after_wave"):
        raise ValueError(f"waves= is only for before_wave and after_wave, not {point}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")

    def register(fn):
        with _REGISTRY_LOCK:
            _REGISTRY.append(Registered(point, fn, service,
                                        tuple(waves) if waves is not None else None,
                                        float(timeout)))
        return fn
    return register


def registered(point: str, service: str) -> list[Registered]:
    with _REGISTRY_LOCK:
        return [r for r in _REGISTRY if r.point == point and r.service in (None, service)]


def clear() -> None:
    """Forget every registered callable."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


def hook_script(dir: str, release: str | None, command: str, environ: dict[str, str],
                timeout: float) -> str:
    """Bash that runs a host hook in `release` (else the live release, else the
    service directory), with the release's env and virtualenv, the facts exported,
    and `timeout` seconds before the command's whole process group is killed."""
    return render.render_script("hook.sh.j2", dir=dir, release=release or "",
                                command=command, environ=sorted(environ.items()),
                                timeout=int(max(1, round(timeout))))


def _prefixed(prefix: str, text: str) -> str:
    return "\n".join(f"{prefix}{line}" for line in text.rstrip("\n").splitlines())


class Hooks:
    """The hooks of one service for one command line: what services.yaml declares for
    it, then what fabfiles registered."""

    def __init__(self, service, *, stage: str, say, base_dir: str, dir_of):
        self.service = service
        self.stage = stage
        self.say = say  # the rollout's reporter: say(kind, message, **fields)
        self.base_dir = base_dir  # where controller hooks run: services.yaml's directory
        self.dir_of = dir_of  # Target -> the service's directory on it

    def context(self, point: str, **facts) -> HookContext:
        return HookContext(point=point, service=self.service.name, stage=self.stage,
                           say=lambda message: self.say("hook_output", f"  hook {point}: "
                                                        f"{message}", point=point),
                           **facts)

    def any(self, point: str, wave: int | None = None) -> bool:
        return bool(self._declared(point, wave) or self._callables(point, wave))

    def _declared(self, point: str, wave: int | None):
        return [h for h in self.service.hooks.get(point, ())
                if h.waves is None or wave in h.waves]

    def _callables(self, point: str, wave: int | None):
        return [r for r in registered(point, self.service.name)
                if r.waves is None or wave in r.waves]

    def fire(self, point: str, *, targets=(), release: str | None = None, fatal: bool,
             **facts) -> list[str]:
        """Run every hook of `point` in order; `targets` are the hosts of a `hosts`
        hook. Fatal: the first failure raises HookFailed. Otherwise each failure is
        reported as a warning and the failures are returned."""
        ctx = self.context(point, release=release, **facts)
        failures: list[str] = []
        for h in self._declared(point, ctx.wave):
            t0 = time.monotonic()
            if h.where == "controller":
                why = self._on_controller(point, h.run, h.timeout, ctx)
            else:
                why = self._on_hosts(point, h.run, h.timeout, ctx, targets, release)
            failures += self._judge(point, h.run, why, t0, fatal)
        for r in self._callables(point, ctx.wave):
            t0 = time.monotonic()
            why = self._callable(r, ctx)
            failures += self._judge(point, f"{r.name}()", why, t0, fatal)
        return failures

    def _judge(self, point: str, what: str, why: str | None, t0: float, fatal: bool) -> list[str]:
        took = time.monotonic() - t0
        if why is None:
            self.say("hook", f"  hook {point}: {_short(what)} ok ({took:.1f}s)", point=point,
                     hook=what, ok=True)
            return []
        message = f"hook {point} ({_short(what)}) failed: {why}"
        self.say("hook", f"  hook {point}: {_short(what)} FAILED ({took:.1f}s): {why}",
                 point=point, hook=what, ok=False, error=why)
        if fatal:
            raise HookFailed(message)
        self.say("warning", f"  warning: {message}", point=point)
        return [message]

    def _on_controller(self, point: str, command: str, timeout: float,
                       ctx: HookContext) -> str | None:
        env = dict(os.environ, **ctx.environ())
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=self.base_dir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)  # its own group: killed whole
        except OSError as e:
            return f"could not start /bin/sh: {e.strerror}"
        try:
            out, _ = proc.communicate(timeout=timeout)
            why = None if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            _kill_group(proc)
            try:  # a process that left the group may still hold the pipe: not for long
                out, _ = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out = e.output.decode("utf-8", "replace") if isinstance(e.output, bytes) \
                    else e.output or ""
            why = f"timed out after {timeout:g}s (killed)"
        self._show(point, "", out)
        return why

    def _on_hosts(self, point: str, command: str, timeout: float, ctx: HookContext, targets,
                  release: str | None) -> str | None:
        if not targets:
            return None
        environ = ctx.environ()

        def go(t):
            r = t.run(hook_script(self.dir_of(t), release, command, environ, timeout),
                      check=False, timeout=timeout + 30, what=f"hook {point}")
            self._show(point, f"{t.name}: ", r.stdout)
            if r.exited == 0:
                return None
            if r.exited == 124:
                raise HookFailed(f"timed out after {timeout:g}s (killed)", host=t.name)
            tail = (r.stderr.strip().splitlines() or [""])[-1]
            raise HookFailed(f"exit {r.exited}{': ' + tail if tail else ''}", host=t.name)
        _, errors = each(targets, go, parallel=self.service.parallel)
        if errors:
            return "on " + ", ".join(errors) + ":\n" + errors_text(errors)
        return None

    def _callable(self, r: Registered, ctx: HookContext) -> str | None:
        outcome: dict[str, BaseException | None] = {}

        def call():
            try:
                r.fn(ctx)
                outcome["error"] = None
            except BaseException as e:  # noqa: BLE001  any failure of the user's code
                outcome["error"] = e
        # A thread, so a hung callable is bounded; it cannot be killed, only left behind.
        thread = threading.Thread(target=call, daemon=True, name=f"hook {r.name}")
        thread.start()
        thread.join(r.timeout)
        if thread.is_alive():
            return f"did not return within {r.timeout:g}s (left running)"
        err = outcome.get("error")
        if err is None:
            return None
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__

    def _show(self, point: str, who: str, output: str | None) -> None:
        if output and output.strip():
            self.say("hook_output", _prefixed(f"  hook {point}: {who}", output), point=point,
                     output=output)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(2)
            return
        except subprocess.TimeoutExpired:
            continue


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else command
    return first if len(first) <= 60 and "\n" not in command.strip() else first[:57] + "..."
