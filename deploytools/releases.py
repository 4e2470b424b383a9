"""A host's releases/current/shared layout: stage, activate, inspect, prune.

Every function returns one compound bash script (one round trip per step)
and, where the output matters, a pure parser for it.

    <dir>/repo/                       mirror of the service's git repo
    <dir>/releases/<stamp>-<sha7>/    code at a commit + REVISION + .deploy/
    <dir>/current -> releases/...     swapped atomically
    <dir>/shared/  venvs/  etc/  bin/  run/ (0700)  log/  tools/
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from . import handoff, render, supervisor, venv
from .probe import wait_healthy
from .script import facts, q, write_file


def release_name(commit: str, when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{commit[:7]}"


def layout_script(dir: str) -> str:
    return (f"mkdir -p {q(dir)}/releases {q(dir)}/shared {q(dir)}/venvs {q(dir)}/etc/init.d "
            f"{q(dir)}/etc/systemd {q(dir)}/log {q(dir)}/bin && mkdir -p {q(dir)}/run && "
            f"chmod 0700 {q(dir)}/run\n")


def service_files_script(service, host, dir: str, *, supervisord_next: bool) -> str:
    """Write supervisord.conf (or .next, applied at activation), ctl, init.d, systemd."""
    lines = []
    for f in render.service_files(service, host, dir):
        path = f"{dir}/{f.path}"
        if supervisord_next and f.path == "etc/supervisord.conf":
            path += ".next"
        lines.append(write_file(path, f.content, f.mode))
    return "\n".join(lines) + "\n"


def setup_script(service, host, dir: str) -> str:
    """Provision a service's environment on a host: idempotent."""
    return (layout_script(dir) + venv.tools_script(service, dir)
            + service_files_script(service, host, dir, supervisord_next=False)
            + supervisor.ensure_running_script(dir)
            # init.d script and systemd unit into /etc when root (see templates/ctl.j2)
            + f"{q(dir)}/bin/ctl link-system\n")


def mirror_script(service, dir: str, commit: str) -> str:
    """Update the host's cached mirror ("update source checkouts") and make sure it has `commit`."""
    repo = f"{dir}/repo"
    return f"""
if [ -d {q(repo)} ]; then
  git -C {q(repo)} remote set-url origin {q(service.repo)}
  git -C {q(repo)} fetch --quiet --prune origin
else
  rm -rf {q(repo)}.tmp
  git clone --quiet --mirror {q(service.repo)} {q(repo)}.tmp
  mv {q(repo)}.tmp {q(repo)}
fi
git -C {q(repo)} cat-file -e {q(commit + '^{commit}')} 2>/dev/null || \\
  git -C {q(repo)} fetch --quiet origin {q(commit)} 2>/dev/null || \\
  {{ echo "commit {commit[:12]} is not in {service.repo}: push it first" >&2; exit 1; }}
"""


def _in_release(rdir: str, command: str) -> str:
    """Run `command` in the release directory with the release's environment."""
    return (f"(cd {q(rdir)} && set -a && . .deploy/env && set +a && {command})")


def build_script(service, dir: str, rdir: str, *, reuse: bool) -> str:
    """Kind command: run `build` in the release, or (reuse) hard-link the live release's
    `build_outputs` when it was built by the same command in the same environment.
    Prints `@@build ran|reused`."""
    run = (f"if ! {_in_release(rdir, f'sh -c {q(service.build)} >&2')}; then\n"
           f"  echo {q(f'the build failed: {service.build}')} >&2; exit 1\nfi\n"
           'echo "@@build ran"\n')
    record = f'printf "%s\\n" {q(service.build)} > "$R/.deploy/build"\n'  # compared by a reuse
    outputs = [o.rstrip("/") for o in service.build_outputs or ()]
    if not reuse or not outputs:
        return record + run
    same = " && ".join(['cmp -s "$LIVE/.deploy/build" "$R/.deploy/build"',
                        'cmp -s "$LIVE/.deploy/env" "$R/.deploy/env"']
                       + [f'[ -e "$LIVE"/{q(o)} ]' for o in outputs])
    link = "".join(f'  rm -rf "$R"/{q(o)}; mkdir -p "$(dirname "$R"/{q(o)})"; '
                   f'cp -al "$LIVE"/{q(o)} "$R"/{q(o)}\n' for o in outputs)
    return (record + f'LIVE=$(readlink -f {q(dir)}/current 2>/dev/null || true)\n'
            f'if [ -n "$LIVE" ] && {same}; then\n{link}  echo "@@build reused"\nelse\n'
            + run + "fi\n")


def stage_script(service, host, dir: str, release: str, commit: str, manifest: dict,
                 *, static: str = "run", build: str = "run") -> str:
    """Prepare a release next to the live one; never touches `current`.

    On any failure the half-made release directory is removed.
    """
    rdir = f"{dir}/releases/{release}"
    parts = [layout_script(dir), venv.tools_script(service, dir), mirror_script(service, dir, commit)]
    parts.append(f"""
R={q(rdir)}
if [ -f "$R/.deploy/staged" ]; then
  echo "@@release exists"
else
trap 'if [ ! -f "$R/.deploy/staged" ]; then rm -rf "$R"; fi' EXIT
rm -rf "$R"; mkdir -p "$R/.deploy"
git -C {q(dir)}/repo archive {q(commit)} | tar -x -C "$R"
printf '%s\\n' {q(commit)} > "$R/REVISION"
""")
    for f in render.release_files(service, host, dir, release, commit):
        parts.append(write_file(f"{rdir}/{f.path}", f.content, f.mode) + "\n")
    parts.append(venv.build_script(service, dir, rdir))
    parts.append(f'ln -sfn {q(dir)}"/venvs/$VENV_KEY" "$R/.deploy/venv"\n')
    if service.kind == "command" and service.build:
        parts.append(build_script(service, dir, rdir, reuse=build == "reuse"))
    if service.kind == "django":
        # Media survive releases in shared/; each release collects its own
        # static files, so old and new are both served during a rollout.
        parts.append(f'mkdir -p {q(dir)}/shared/media && ln -sfn {q(dir)}/shared/media "$R/media"\n')
    if service.kind == "django" and service.collectstatic:
        collect = _in_release(rdir, ".deploy/venv/bin/python manage.py collectstatic --noinput -v0 >&2")
        if static == "reuse":
            # Unchanged static files: hard-link the live release's collected ones.
            parts.append(f'LIVE=$(readlink -f {q(dir)}/current || true)\n'
                         f'if [ -n "$LIVE" ] && [ -d "$LIVE/staticfiles" ]; then '
                         f'cp -al "$LIVE/staticfiles" "$R/staticfiles"; echo "@@collectstatic reused"; '
                         f'else {collect}; echo "@@collectstatic ran"; fi\n')
        else:
            parts.append(collect + '\necho "@@collectstatic ran"\n')
    if service.kind != "command":
        # Imports the app with the new code and config: an app that fails to
        # import stops here, before any host switches.
        parts.append(_in_release(rdir, f".deploy/venv/bin/gunicorn --check-config "
                                       f"-c .deploy/gunicorn.conf.py --chdir {q(rdir)} "
                                       f"{q(service.app)} >&2") + "\n")
    manifest = dict(manifest, release=release, commit=commit)
    parts.append(write_file(f"{rdir}/.deploy/manifest.json",
                            json.dumps(manifest, indent=2, sort_keys=True) + "\n", 0o644) + "\n")
    parts.append('touch "$R/.deploy/staged"\necho "@@release staged"\nfi\n')
    parts.append(service_files_script(service, host, dir, supervisord_next=True))
    return "".join(parts)


def activate_script(service, dir: str, release: str, *, force_restart: bool = False) -> str:
    """Swap `current` to `release` atomically, then reload gracefully or restart.

    Graceful (the service's reload signal, HUP for gunicorn) when the venv and
    environment are unchanged; a restart when either changed, since a running
    master keeps its interpreter and environment.
    Prints `@@previous NAME` and `@@mode reload|restart|start`.
    """
    ctl = supervisor.ctl(dir)
    name = q(handoff.target(service))
    sig = service.reload_signal
    return f"""
cd {q(dir)}
[ -f releases/{q(release)}/.deploy/staged ] || {{ echo "release {release} is not staged on $(hostname)" >&2; exit 1; }}
PREV=$(readlink current 2>/dev/null || true); PREV=${{PREV#releases/}}
echo "@@previous $PREV"
mode={"restart" if force_restart or sig == "restart" else "reload"}
[ "$(readlink -f current/.deploy/venv 2>/dev/null)" = "$(readlink -f releases/{q(release)}/.deploy/venv)" ] || mode=restart
cmp -s current/.deploy/env releases/{q(release)}/.deploy/env 2>/dev/null || mode=restart
ln -sfn releases/{q(release)} current.tmp && mv -Tf current.tmp current
conf_changed=0
if [ -f etc/supervisord.conf.next ]; then
  if cmp -s etc/supervisord.conf.next etc/supervisord.conf; then rm -f etc/supervisord.conf.next
  else mv -f etc/supervisord.conf.next etc/supervisord.conf; conf_changed=1; fi
fi
{supervisor.ensure_running_script(dir)}
[ "$conf_changed" = 1 ] && {{ {ctl} reread >/dev/null; {ctl} update >/dev/null; mode=restart; }}
state=$({ctl} status {name} 2>&1 || true)
case "$state" in
  *RUNNING*)
    if [ "$mode" = reload ]; then {ctl} signal {q(sig if sig != "restart" else "HUP")} {name} >/dev/null
    else {q(dir)}/bin/ctl restart-program || {{ tail -n 12 log/{service.name}.log >&2; exit 1; }}; fi ;;
  *STARTING*) mode=start ;;
  *)
    mode=start
    {ctl} stop {name} >/dev/null 2>&1 || true
    {ctl} start {name} >/dev/null 2>&1 || true ;;
esac
echo "@@mode $mode"
"""


def wait_ready_script(service, dir: str, release: str, timeout: float) -> str:
    """Wait until the program is RUNNING and (gunicorn) every live worker runs `release`."""
    ctl = supervisor.ctl(dir)
    check_workers = service.kind != "command"
    return f"""
cd {q(dir)}
deadline=$((SECONDS + {int(timeout) + 1}))
while :; do
  st=$({ctl} status {q(handoff.target(service))} 2>&1 || true)
  ok=1; workers=0; stale=0
  case "$st" in *RUNNING*) ;; *FATAL*) echo "it does not start: $st" >&2; tail -n 12 log/{service.name}.log >&2; exit 1 ;; *) ok=0 ;; esac
  if {"true" if check_workers else "false"}; then
    for f in run/workers/*; do
      [ -e "$f" ] || continue
      pid=${{f##*/}}
      if kill -0 "$pid" 2>/dev/null; then
        workers=$((workers + 1))
        [ "$(cat "$f" 2>/dev/null)" = {q(release)} ] || stale=$((stale + 1))
      else rm -f "$f"; fi
    done
    [ "$workers" -ge 1 ] && [ "$stale" = 0 ] || ok=0
  fi
  if [ "$ok" = 1 ]; then echo "@@ready $workers"; exit 0; fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "not ready after {int(timeout)}s: $st (workers on the new release: $((workers - stale))/$workers)" >&2
    tail -n 20 log/error.log log/{service.name}.log 2>/dev/null >&2 || true
    exit 1
  fi
  sleep 0.2
done
"""


def reload_script(service, dir: str, *, hard: bool) -> str:
    """Restart (hard) or gracefully reload the live release."""
    ctl = supervisor.ctl(dir)
    name = q(handoff.target(service))
    sig = service.reload_signal
    if hard or sig == "restart":
        action = (f"if {ctl} status {name} | grep -q RUNNING; then {q(dir)}/bin/ctl restart-program; "
                  f"else {ctl} start {name} >/dev/null; fi")
    else:
        action = (f"if {ctl} status {name} | grep -q RUNNING; then {ctl} signal {q(sig)} {name} "
                  f">/dev/null; else {ctl} start {name} >/dev/null; fi")
    return (f"cd {q(dir)}\n[ -L current ] || {{ echo 'nothing deployed yet: run deploy first' >&2; exit 1; }}\n"
            + supervisor.ensure_running_script(dir) + action + "\n")


def prune_script(dir: str, keep: int, protect: list[str]) -> str:
    """Keep the newest `keep` releases; never remove current or the protected ones
    (the release before current); then drop venvs no release uses."""
    protected = " ".join(q(p) for p in protect if p)
    return f"""
cd {q(dir)}/releases
cur=$(basename "$(readlink ../current)")
n=0
for r in $(ls -1 | sort -r); do
  [ -d "$r" ] || continue
  if [ ! -f "$r/.deploy/staged" ]; then rm -rf "$r"; continue; fi
  n=$((n + 1))
  [ "$n" -le {int(keep)} ] && continue
  [ "$r" = "$cur" ] && continue
  case " {protected} " in *" $r "*) continue ;; esac
  rm -rf "$r" && echo "@@pruned $r"
done
cd {q(dir)}/venvs
for v in */; do
  v=${{v%/}}; [ -d "$v" ] || continue
  used=0
  for l in ../releases/*/.deploy/venv; do [ "$(basename "$(readlink "$l")")" = "$v" ] && used=1 && break; done
  [ "$used" = 1 ] || {{ rm -rf "$v" "$v.log"; echo "@@pruned_venv $v"; }}
done
true
"""


def stop_script(service, dir: str) -> str:
    """Stop the program and remove `current` (undoing a host's first release)."""
    return (f"cd {q(dir)}\n{supervisor.ctl(dir)} stop {q(handoff.target(service))} >/dev/null 2>&1 || true\n"
            "rm -f current\n")


def mark_rejected_script(dir: str, release: str) -> str:
    return f"touch {q(dir)}/releases/{q(release)}/.deploy/rejected 2>/dev/null || true\n"


def manage_script(service, dir: str, release: str, command: str) -> str:
    """Run `manage.py COMMAND` in a release with its environment (Django services)."""
    rdir = f"{dir}/releases/{release}"
    return _in_release(rdir, f".deploy/venv/bin/python manage.py {command}") + "\n"


def media_script(service, dir: str, release: str) -> str:
    """Link shared/media into `release` and collect its static files (Django)."""
    return (f"mkdir -p {q(dir)}/shared/media\n"
            f"ln -sfn {q(dir)}/shared/media {q(dir)}/releases/{q(release)}/media\n"
            + manage_script(service, dir, release, "collectstatic --noinput -v0"))


def migrate_script(service, dir: str, release: str, *, check_first: bool = True) -> str:
    """Apply unapplied migrations (if any) and print the resulting state.

    Prints `@@migrated yes|no` and `@@state {app: last applied}` (JSON)."""
    rdir = f"{dir}/releases/{release}"
    py = ".deploy/venv/bin/python manage.py"
    apply = _in_release(rdir, f"{py} migrate --noinput >&2")
    check = _in_release(rdir, f"{py} migrate --check >/dev/null 2>&1")
    return (f"if {check}; then echo '@@migrated no'; else {apply}; echo '@@migrated yes'; fi\n"
            + _in_release(rdir, f"{py} showmigrations --list") + "\n")


def read_migrations_script(dir: str, releases_: list[str]) -> str:
    return "".join(f"printf '@@migrations {r} %s\\n' \"$(cat {q(dir)}/releases/{q(r)}/.deploy/"
                   f"migrations.json 2>/dev/null || echo null)\"\n" for r in releases_)


# --- operations: the scripts above, run on one target, their facts read back ---


def switch(service, t, release: str, *, force_restart: bool = False) -> str:
    """Swap `current` to `release` on target `t` and reload or restart onto it.
    Returns the mode: reload, restart or start."""
    r = t.run(activate_script(service, service.dir_on(t.host), release,
                              force_restart=force_restart), what=f"activating {release}")
    return facts(r.stdout).get("mode", "?")


def activate(service, t, release: str, *, force_restart: bool = False) -> str:
    """Make `release` live on target `t` and wait until it serves it (readiness:
    every worker on the new release, then the health probe). Returns the mode."""
    mode = switch(service, t, release, force_restart=force_restart)
    wait_ready(service, t, release)
    return mode


def wait_ready(service, t, release: str) -> None:
    """Wait until `release`'s processes run on `t` and its health probe passes."""
    timeout = service.health.timeout + service.graceful_timeout
    t.run(wait_ready_script(service, service.dir_on(t.host), release, timeout),
          what="waiting for the new processes")
    wait_healthy(service, t.host, service.health.timeout)


def restore(service, t, release: str | None) -> None:
    """Put `release` back live on one host and verify it serves (None: the host had
    nothing before, so stop the service and remove `current`)."""
    if release is None:
        t.run(stop_script(service, service.dir_on(t.host)), what="removing a first release")
        return
    activate(service, t, release)
