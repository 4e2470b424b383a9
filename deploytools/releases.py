"""A host's releases/current/shared layout: stage, activate, inspect, prune.

Every `*_script` function returns one compound bash program (one round trip
per step), rendered from its template in templates/remote/, and says which
`@@facts` it prints; `script.facts` parses them, `parse_inspect` the inspection.

    <dir>/repo/                       mirror of the service's git repo
    <dir>/releases/<stamp>-<sha7>/    code at a commit + REVISION + .deploy/
    <dir>/current -> releases/...     swapped atomically
    <dir>/shared/                     `shared:` paths, linked into every release
    <dir>/venvs/  etc/  bin/  run/ (0700)  log/  tools/
"""
from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone

from . import render, venv
from .probe import wait_healthy
from .script import facts, guarded


def release_name(commit: str, when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{commit[:7]}"


def layout_script(dir: str) -> str:
    """Create the service directory's layout (idempotent)."""
    return render.render_script("layout.sh.j2", dir=dir)


def _service_files(service, host, dir: str, *, supervisord_next: bool) -> list[render.File]:
    files = []
    for f in render.service_files(service, host, dir):
        path = f"{dir}/{f.path}"
        if supervisord_next and f.path == "etc/supervisord.conf":
            path += ".next"
        files.append(render.File(path, f.content, f.mode))
    return files


def service_files_script(service, host, dir: str, *, supervisord_next: bool) -> str:
    """Write supervisord.conf (or .next, applied at activation), ctl, init.d, systemd."""
    return render.render_script("service_files.sh.j2", service_files=_service_files(
        service, host, dir, supervisord_next=supervisord_next))


def setup_script(service, host, dir: str) -> str:
    """Provision a service's environment on a host: idempotent.

    Prints `@@tools built`, `@@supervisord started`, `@@system_link PATH`."""
    return render.render_script(
        "setup.sh.j2", dir=dir, service=service, supervisor_package=venv.SUPERVISOR,
        uv_package=venv.UV,
        pip_words=venv.pip_words(service), pip_env=venv.pip_environment(service),
        service_files=_service_files(service, host, dir, supervisord_next=False))


def mirror_script(service, dir: str, commit: str) -> str:
    """Update the host's cached mirror ("update source checkouts") and make sure it has `commit`."""
    return render.render_script("mirror.sh.j2", service=service, dir=dir, commit=commit)


def build_script(service, dir: str, rdir: str, *, reuse: bool) -> str:
    """Kind command (runs where $R is the release): run `build` in the release, or
    (reuse) hard-link the live release's `build_outputs` when it was built by the
    same command in the same environment. Prints `@@build ran|reused`."""
    return render.render_script("build.sh.j2", **_build_context(service, dir, rdir, reuse=reuse))


def _build_context(service, dir: str, rdir: str, *, reuse: bool) -> dict:
    return dict(service=service, dir=dir, rdir=rdir, reuse=reuse,
                outputs=[o.rstrip("/") for o in service.build_outputs or ()])


def shared_context(service) -> dict:
    """`shared:` for the staging program: directories (without their `/`) and files."""
    return dict(shared_dirs=[p.rstrip("/") for p in service.shared if p.endswith("/")],
                shared_files=[p for p in service.shared if not p.endswith("/")])


def stage_script(service, host, dir: str, release: str, commit: str, manifest: dict,
                 *, static: str = "run", build: str = "run", locked: str | None = None,
                 wheels: str | None = None) -> str:
    """Prepare a release next to the live one; never touches `current`.

    On any failure the half-made release directory is removed. Prints
    `@@tools built`, `@@venv built|reused KEY`, `@@build ran|reused`,
    `@@collectstatic ran|reused`, `@@release staged|exists`, `@@shared_replaced PATH`
    (once per shared path the repository had: the link replaced it). `locked` is the
    hashed requirements list of a poetry.lock / Pipfile.lock (venv.locked_requirements).
    `wheels`: this host's part in the fleet's one download (venv.Handover): "fetch",
    "wait", or None; it then prints `@@wheels ready KEY|none|received|fallback`.
    """
    rdir = f"{dir}/releases/{release}"
    manifest = dict(manifest, release=release, commit=commit)
    parts = {**venv.context(service, dir, rdir, wheels=wheels), **shared_context(service),
             **_build_context(service, dir, rdir, reuse=build == "reuse")}
    bind_address, _, port = render.bind_for(service, host).rpartition(":")
    files = render.release_files(service, host, dir, release, commit)
    if locked is not None:
        files.append(render.File(venv.LOCKED, locked, 0o644))
    return render.render_script(
        "stage.sh.j2", commit=commit, static=static, **parts, port=int(port),
        bind_address=bind_address,
        port_address="127.0.0.1" if bind_address in ("0.0.0.0", "*", "") else bind_address,
        release_files=[render.File(f"{rdir}/{f.path}", f.content, f.mode) for f in files],
        manifest=render.File(f"{rdir}/.deploy/manifest.json",
                             json.dumps(manifest, indent=2, sort_keys=True) + "\n", 0o644),
        service_files=_service_files(service, host, dir, supervisord_next=True),
        supervisor_package=venv.SUPERVISOR)


def folded_stage_script(dir: str, live: str, commit: str, stage: str, *,
                        force: bool = False) -> str:
    """`stage` (a `stage_script`), run in the lock's round trip right after the
    inspection: only where `current` is the commit `live`, and (unless force) no
    release of `commit` was rejected there. Its output goes between `@@folded_stage
    begin` and `@@folded_stage end`; a failure prints `@@step_failed folded_stage`
    and stops nothing (the caller stages that host again, and says why)."""
    return render.render_script("folded_stage.sh.j2", dir=dir, live=live,
                                short=commit[:7], force=force) + (
        guarded(stage, "folded_stage") + "echo '@@folded_stage end'\nfi\n")


def activate_script(service, dir: str, release: str, *, force_restart: bool = False) -> str:
    """Swap `current` to `release` atomically, then reload gracefully or restart.

    Graceful (the service's reload signal, HUP for gunicorn) when the venv and
    environment are unchanged; a restart when either changed, since a running
    master keeps its interpreter and environment.
    Prints `@@previous NAME` and `@@mode reload|restart|start`.
    """
    return render.render_script("activate.sh.j2", service=service, dir=dir, release=release,
                                **_bring_up(service, restart=force_restart))


def _bring_up(service, *, restart: bool) -> dict:
    """processes_up.sh.j2's `mode` (reload or restart: `reload_signal: restart` always
    restarts) and `signal`, the graceful reload's (HUP where it is never sent)."""
    sig = service.reload_signal
    return {"mode": "restart" if restart or sig == "restart" else "reload",
            "signal": sig if sig != "restart" else "HUP"}


def wait_ready_script(service, dir: str, release: str, timeout: float) -> str:
    """Wait until the program is RUNNING and (gunicorn) every live worker runs `release`.

    Prints `@@ready WORKERS`; fails with the program's log after `timeout` seconds."""
    return render.render_script("wait_ready.sh.j2", service=service, dir=dir, release=release,
                                timeout=int(timeout), check_workers=service.kind != "command")


def activate_ready_script(service, dir: str, release: str, *,
                          force_restart: bool = False) -> str:
    """`activate_script` then `wait_ready_script` as one program: one round trip, and
    the host itself reports when its processes serve `release` (no polling from here).

    Prints the facts of both: `@@previous`, `@@mode`, then `@@ready WORKERS`."""
    return (activate_script(service, dir, release, force_restart=force_restart)
            + wait_ready_script(service, dir, release, ready_timeout(service)))


def ready_timeout(service) -> float:
    """How long the new processes may take to serve: a health timeout plus the old
    workers' graceful exit."""
    return service.health.timeout + service.graceful_timeout


def reload_script(service, dir: str, *, hard: bool) -> str:
    """Restart (hard) or gracefully reload the live release."""
    return render.render_script("reload.sh.j2", service=service, dir=dir,
                                **_bring_up(service, restart=hard))


def stop_script(service, dir: str) -> str:
    """Take a first release down (a rollback with nothing to go back to): stop, remove current."""
    return render.render_script("stop.sh.j2", service=service, dir=dir)


def prune_script(dir: str, keep: int, protect: list[str]) -> str:
    """Keep the newest `keep` releases; never remove current or the protected ones
    (the release before current); then drop venvs no release uses.

    Prints `@@pruned RELEASE` and `@@pruned_venv KEY` (read with `script.fact_list`)."""
    return render.render_script("prune.sh.j2", dir=dir, keep=int(keep),
                                protect=[p for p in protect if p])


def unstage_script(dir: str, release: str) -> str:
    """Remove a staged release that was refused before any switch (never `current`)."""
    return render.render_script("unstage.sh.j2", dir=dir, release=release)


def mark_rejected_script(dir: str, release: str) -> str:
    return render.render_script("mark_rejected.sh.j2", dir=dir, release=release)


def manage_script(service, dir: str, release: str, command: str | list[str]) -> str:
    """Run `manage.py COMMAND` in a release with its environment (Django services).

    `command` is a list of arguments (each quoted), or a string of fixed words."""
    args = shlex.split(command) if isinstance(command, str) else list(command)
    return render.render_script("manage.sh.j2", rdir=f"{dir}/releases/{release}", args=args)


def exec_script(dir: str, command: str) -> str:
    """Run the shell `command` in the live release, with its env file and virtualenv.

    Prints `@@exec_release NAME`, then the command's output (stderr merged); exits
    with the command's status."""
    return render.render_script("exec.sh.j2", dir=dir, command=command)


def shared_script(service, dir: str, release: str) -> str:
    """Make sure `release` has the service's shared paths linked, as staging links them
    (for a release staged before they were listed). Fails naming any missing shared file.
    Prints `@@shared_replaced PATH`."""
    return render.render_script("link_shared.sh.j2", dir=dir, release=release,
                                **shared_context(service))


def media_script(service, dir: str, release: str) -> str:
    """Link the shared paths (media/ by default) into `release` and collect its static
    files (Django)."""
    return shared_script(service, dir, release) + manage_script(
        service, dir, release, ["collectstatic", "--noinput", "-v0"])


def migrate_script(service, dir: str, release: str, *,
                   targets: list[tuple[str, str]] | None = None) -> str:
    """Apply unapplied migrations (if any) and print the resulting state; with
    `targets`, only up to those [(app, migration)] (the ones before post-deploy ones).

    Prints `@@migrated yes|no`, then `showmigrations --list`."""
    return render.render_script("migrate.sh.j2", rdir=f"{dir}/releases/{release}",
                                targets=targets)


def django_probe() -> str:
    """The migration probe's source (templates/remote/django_migrations.py)."""
    return (render.TEMPLATES / "remote" / "django_migrations.py").read_text()


def migrations_plan_script(service, dir: str, *, release: str | None = None,
                           commit: str | None = None) -> str:
    """List the pending migrations with the facts of each operation: in the staged
    `release`, or (a dry run, `commit`) in a temporary checkout with the live venv.

    Prints `@@migrations_plan JSON` (migrations.parse_probe), or, in a dry run with
    nothing live, `@@migrations_plan_skipped WHY`."""
    return render.render_script("migrations_plan.sh.j2", program=django_probe(),
                                rdir=f"{dir}/releases/{release}" if release else "",
                                dir=dir, service=service, commit=commit or "")


def migrate_command_script(service, dir: str, release: str) -> str:
    """Run `migrate_command` in the release (non-Django). Prints `@@migrated ran`."""
    return render.render_script("migrate_command.sh.j2", rdir=f"{dir}/releases/{release}",
                                command=service.migrate_command)


def read_migrations_script(dir: str, releases_: list[str]) -> str:
    """Prints `@@migrations RELEASE JSON` for each release (JSON null: none recorded)."""
    return render.render_script("read_migrations.sh.j2", dir=dir, releases=list(releases_))


# --- operations: the scripts above, run on one target, their facts read back ---


def switch(service, t, release: str, *, force_restart: bool = False) -> str:
    """Swap `current` to `release` on target `t` and reload or restart onto it, without
    waiting for readiness. Returns the mode: reload, restart or start."""
    r = t.run(activate_script(service, service.dir_on(t.host), release,
                              force_restart=force_restart), what=f"activating {release}")
    return facts(r.stdout).get("mode", "?")


def activate(service, t, release: str, *, force_restart: bool = False,
             first: str = "") -> str:
    """Make `release` live on target `t` and wait until it serves it, in one round
    trip (readiness: every worker on the new release, reported by the host), then
    the health probe from here. `first`: a program run before the switch in the same
    round trip (the lock's note of the wave). Returns the mode."""
    r = t.run(first + activate_ready_script(service, service.dir_on(t.host), release,
                                            force_restart=force_restart),
              what=f"activating {release} and waiting for its processes")
    wait_healthy(service, t.host, service.health.timeout)
    return facts(r.stdout).get("mode", "?")


def wait_ready(service, t, release: str) -> None:
    """Wait until `release`'s processes run on `t` and its health probe passes."""
    t.run(wait_ready_script(service, service.dir_on(t.host), release, ready_timeout(service)),
          what="waiting for the new processes")
    wait_healthy(service, t.host, service.health.timeout)


def reload_ready(service, t, release: str, *, hard: bool) -> None:
    """Reload (or restart) the live release, `release`, and wait until it serves: one
    round trip (the host reports readiness), then the health probe."""
    d = service.dir_on(t.host)
    t.run(reload_script(service, d, hard=hard)
          + wait_ready_script(service, d, release, ready_timeout(service)), what="restarting")
    wait_healthy(service, t.host, service.health.timeout)


def restore(service, t, release: str | None) -> None:
    """Put `release` back live on one host and verify it serves (None: the host had
    nothing before, so stop the service and remove `current`)."""
    if release is None:
        t.run(stop_script(service, service.dir_on(t.host)), what="removing a first release")
        return
    activate(service, t, release)
