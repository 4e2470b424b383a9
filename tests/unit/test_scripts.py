"""The remote programs (templates/remote/*.sh.j2) as a host receives them.

Every program is rendered with representative values, hostile ones included
(`x'";$(touch MARK)` wherever services.yaml or the command line allows it),
and must pass shellcheck. Then the ones that can run here do, on paths and
values built to break quoting, and nothing they were given is ever executed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from deploytools import hooks, hoststate, inventory, lock, monitor, releases, render, supervisor, venv
from deploytools.config import parse, secrets
from deploytools.errors import ConfigError
from deploytools.inventory import Fleet, stdin_program, stream_program
from deploytools.script import fact_list, facts, guarded, write_file

PAYLOAD = "x'\";$(touch MARK)`touch MARK`"
HOSTILE_DIR = "/srv/it's \"odd\" $(touch MARK)/svc"
# An app factory with a hostile literal: gunicorn takes it, so services.yaml does.
FACTORY = "skiff.app:create_app(\"it's $(touch MARK) `touch MARK`\", debug=False)"
PIP_ARGS = "--no-index --find-links '/w h/$(touch MARK)' --extra-index-url 'http://x/?a=1&b=$HOME;'"


def services_yaml(v: str) -> str:
    """The sample services with the value `v` wherever services.yaml allows any text."""
    return yaml.safe_dump({
        "hosts": {"web-0": {"address": "10.0.0.10"}},
        "defaults": {"pip_args": PIP_ARGS if v == PAYLOAD else "--no-index --find-links /w",
                     "pip_env": {"PIP_INDEX_URL": {"from_env": "AIR_TOKEN"},
                                 "UV_EXTRA_INDEX_URL": f"http://x/{v}"}},
        "services": {
            "air": {"kind": "django", "repo": f"https://git.example.com/{v}.git",
                    "branch": "main/x-1", "hosts": ["web-0"], "app": "air.wsgi:application",
                    "port": 8000, "env": {"SECRET_KEY": v, "DATABASE_URL": f"postgres://h/{v}",
                                          "API_TOKEN": {"from_env": "AIR_TOKEN"}},
                    "shared": ["media/", "uploads/", "config/local.py", ".env"]},
            "skiff": {"kind": "flask", "repo": "/r/skiff.git", "hosts": ["web-0"],
                      "app": FACTORY if v == PAYLOAD else "skiff.app:app", "port": 8001,
                      "reload_signal": "restart", "installer": "uv",
                      "requirements": f"req/{v}.txt", "migrate_command": "alembic upgrade head",
                      "migrations_path": f"migrations/{v}"},
            "harbor": {"kind": "command", "repo": "git@git.example.com:ops/harbor.git",
                       "hosts": ["web-0"], "port": 8300, "command": "java -jar build/harbor.jar",
                       "build": f"mkdir -p build && echo {shlex.quote(v)} > build/out",
                       "build_outputs": ["build/", f"dist/{v}"],
                       "python": "/opt/py" + v.replace(" ", "") + "/bin/python3"},
        },
    })


SERVICES = services_yaml(PAYLOAD)
# Plain values, and hostile ones. With hostile values three checks are about the
# values, not the program: a quoted `$(...)` (SC2016: "expressions don't expand in
# single quotes", which is the point) and a quoted `"` kept in a variable
# (SC2089/SC2090: "quotes will be treated literally", also the point).
CASES = {"plain": ("x", "/srv/svc", ""), "hostile": (PAYLOAD, HOSTILE_DIR, ",SC2016,SC2089,SC2090")}


def svc(cfg, name: str):
    """A service as staging renders it: its pip_env secret (AIR_TOKEN) read."""
    return secrets.resolve(cfg.service(name), {"AIR_TOKEN": "t0ken"}, settings=("pip_env",))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return parse(SERVICES, "services.yaml", str(tmp_path_factory.mktemp("cfg")))


def _scripts(cfg, v: str, d: str) -> dict[str, str]:
    """Every remote program, with the variants that render differently."""
    host = cfg.hosts["web-0"]
    out: dict[str, str] = {}
    record = lock.owner_record("deploy")
    for name in ("air", "skiff", "harbor"):
        s = secrets.resolve(cfg.service(name), {"AIR_TOKEN": v})  # as a deploy does first
        k = f"{name}"
        for static in ("run", "reuse"):
            for build in ("run", "reuse"):
                out[f"stage:{k}:{static}:{build}"] = releases.stage_script(
                    s, host, d, "20260102T030405Z-abcdef1", "abcdef1" + "0" * 33,
                    {"ref": v, "deployed_by": v}, static=static, build=build)
        for force in (False, True):  # the staging in the lock's round trip
            out[f"folded_stage:{k}:{force}"] = lock.acquire_script(
                d + "/.lock", json.dumps(record), hoststate.inspect_script(s, d)
                + releases.folded_stage_script(d, "e" * 40, "abcdef1" + "0" * 33,
                                               out[f"stage:{k}:run:run"], force=force))
        out[f"setup:{k}"] = releases.setup_script(s, host, d)
        out[f"layout:{k}"] = releases.layout_script(d)
        out[f"mirror:{k}"] = releases.mirror_script(s, d, "f" * 40)
        out[f"migrations_plan:{k}"] = releases.migrations_plan_script(s, d, release=v)
        out[f"migrations_plan_dry:{k}"] = releases.migrations_plan_script(s, d, commit="f" * 40)
        out[f"migrate:{k}"] = releases.migrate_script(s, d, v)
        out[f"unstage:{k}"] = releases.unstage_script(d, v)
        out[f"migrate_targets:{k}"] = releases.migrate_script(s, d, v, targets=[(v, v), ("a", "b")])
        out[f"migrate_none:{k}"] = releases.migrate_script(s, d, v, targets=[])
        out[f"venv:{k}"] = venv.build_script(s, d, d + "/releases/R")
        out[f"tools:{k}"] = venv.tools_script(s, d)
        out[f"tools:{k}:pip"] = venv.tools_script(dataclasses.replace(s, installer="pip"), d)
        out[f"files:{k}"] = releases.service_files_script(s, host, d, supervisord_next=True)
        for force in (False, True):
            out[f"activate:{k}:{force}"] = releases.activate_script(s, d, v, force_restart=force)
        out[f"wait_ready:{k}"] = releases.wait_ready_script(s, d, v, 12.5)
        out[f"activate_ready:{k}"] = releases.activate_ready_script(s, d, v)
        for hard in (False, True):
            out[f"reload:{k}:{hard}"] = releases.reload_script(s, d, hard=hard)
        out[f"stop:{k}"] = releases.stop_script(s, d)
        out[f"inspect:{k}"] = hoststate.inspect_script(s, d)
        out[f"ensure:{k}"] = supervisor.ensure_running_script(d)
    for release in ("20260102T030405Z-abcdef1", None):
        out[f"hook:{release}"] = hooks.hook_script(
            d, release, v, {"DEPLOYTOOLS_SERVICE": "air", "DEPLOYTOOLS_HOSTS": v}, 30)
    s = svc(cfg, "harbor")
    for reuse in (False, True):
        out[f"build:{reuse}"] = "R=/srv/harbor/releases/R\n" + releases.build_script(
            s, d, d + "/releases/R", reuse=reuse)
    air = svc(cfg, "air")
    out["prune"] = releases.prune_script(d, 3, [v, None])
    out["prune:none"] = releases.prune_script(d, 5, [])
    out["mark_rejected"] = releases.mark_rejected_script(d, v)
    out["manage"] = releases.manage_script(air, d, v, ["migrate", "--noinput", v, v])
    out["manage:str"] = releases.manage_script(air, d, "R", "showmigrations --list")
    out["migrate"] = releases.migrate_script(air, d, v)
    out["read_migrations"] = releases.read_migrations_script(d, [v, "R 2"])
    out["migrate_command"] = releases.migrate_command_script(svc(cfg, "skiff"), d, v)
    out["stage:locked"] = releases.stage_script(
        svc(cfg, "skiff"), host, d, "20260102T030405Z-abcdef1", "abcdef1" + "0" * 33,
        {"ref": v}, locked=f"# {v}\nflask==3.1.3 --hash=sha256:{'a' * 64}\n")
    for wheels in ("fetch", "wait"):  # one download for the fleet (venv.Handover)
        out[f"stage:wheels:{wheels}"] = releases.stage_script(
            svc(cfg, "skiff"), host, d, "20260102T030405Z-abcdef1", "abcdef1" + "0" * 33, {"ref": v},
            wheels=wheels)
    out["lock_acquire"] = lock.acquire_script(d + "/.lock", json.dumps(dict(record, user=v)))
    out["lock_acquire:inspect"] = lock.acquire_script(
        d + "/.lock", json.dumps(record), hoststate.inspect_script(svc(cfg, "air"), d))
    out["guarded"] = guarded(lock.history_append_script(d, {"v": v}), "history") + \
        guarded(releases.prune_script(d, 3, [v]), "prune")
    out["lock_heartbeat"] = lock.heartbeat_script(d + "/.lock", record["id"])
    out["lock_remove:ours"] = lock.remove_lock_script(d + "/.lock", record["id"])
    out["lock_note"] = lock.note_script(d + "/.lock", record["id"], json.dumps(dict(record, wave=v)))
    out["lock_read"] = lock.read_lock_script(d + "/.lock")
    out["lock_remove"] = lock.remove_lock_script(d + "/.lock", v)
    out["lock_remove:any"] = lock.remove_lock_script(d + "/.lock", None)
    out["media"] = releases.media_script(air, d, v)
    out["shared"] = releases.shared_script(air, d, v)
    out["exec"] = releases.exec_script(d, f"flask --app flaskr init-db {v}")
    out["history_append"] = lock.history_append_script(d, {"user": v})
    out["history_read"] = lock.history_read_script(d, 20)
    out["read_growing:size"] = inventory.read_growing_script(d + "/log/access.log", None)
    out["read_growing"] = inventory.read_growing_script(d + "/log/access.log", 1234)
    out["write_file"] = write_file(d + "/x", v, 0o600)
    paths = monitor.log_paths(air, d)
    out["tail"] = monitor.tail_script(paths, 20, follow=False)
    out["tail:follow"] = monitor.tail_script(paths, 20, follow=True)
    return out


def shellcheck(files: dict[str, str], shell: str, tmp: Path, exclude: str = "") -> str:
    """shellcheck's findings on every file (one run for all), or "" when clean."""
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (Debian package `shellcheck`; .ci/run "
                    "installs it): the remote scripts cannot be checked", pytrace=False)
    paths = []
    for i, (name, text) in enumerate(files.items()):
        path = tmp / f"{i:03d}-{name.replace('/', '_')}.sh"
        path.write_text(text)
        paths.append(str(path))
    # SC1091: `.deploy/env` is sourced on the host; there is no file to follow here.
    r = subprocess.run(["shellcheck", "-s", shell, "-f", "gcc", "-e", "SC1091" + exclude,
                        *paths], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_remote_program_passes_shellcheck_as_the_host_receives_it(tmp_path, case):
    v, d, exclude = CASES[case]
    cfg = parse(services_yaml(v), "services.yaml", str(tmp_path))
    scripts = _scripts(cfg, v, d)
    assert len(scripts) > 60
    programs = {name: stdin_program(script) for name, script in scripts.items()}
    programs.update({f"{n}:stream": stream_program(scripts[n]) for n in ("tail", "tail:follow")})
    if case == "plain":  # markupsafe never got to HTML-escape anything
        assert not [n for n, p in programs.items() if re.search(r"&(amp|lt|gt|#3[49]);", p)]
    # Staging inside the lock's program runs in a subshell, where shellcheck calls the
    # stage's helper functions that a service never uses (link_shared) unreachable.
    folded = {n: programs.pop(n) for n in list(programs) if n.startswith("folded_stage:")}
    assert len(folded) == 6
    assert shellcheck(programs, "bash", tmp_path, exclude) == ""
    (tmp_path / "folded").mkdir()
    assert shellcheck(folded, "bash", tmp_path / "folded", exclude + ",SC2317") == ""


@pytest.mark.parametrize("case", CASES)
def test_rendered_launchers_pass_shellcheck_as_sh(tmp_path, case):
    v, d, exclude = CASES[case]
    cfg = parse(services_yaml(v), "services.yaml", str(tmp_path))
    host = cfg.hosts["web-0"]
    files = {}
    for name in ("air", "skiff", "harbor"):
        s = secrets.resolve(cfg.service(name), {"AIR_TOKEN": v})
        for f in render.service_files(s, host, d) + render.release_files(s, host, d, "R1", "c" * 40):
            if f.path in ("bin/ctl", f"etc/init.d/{name}", ".deploy/start"):
                files[f"{name}-{f.path}"] = f.content
    assert len(files) == 9
    assert shellcheck(files, "sh", tmp_path, exclude) == ""


def test_a_value_that_is_not_quoted_does_not_render():
    env = render._script_env()
    with pytest.raises(render.UnquotedValue, match="shquote"):
        env.from_string("rm -rf {{ path }}").render(path="/ x")
    assert env.from_string("rm -rf {{ path | shquote }} {{ n }}").render(
        path="/ x", n=3) == "rm -rf '/ x' 3"


def test_no_template_interpolates_inside_double_quotes():
    # shquote's output is a word for the shell to read, not text inside "...", where
    # $(...) in the value would still run. printf '%s' with quoted arguments instead.
    for path in (render.TEMPLATES / "remote").glob("*.j2"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split(" #")[0]
            quoted = False
            for i, ch in enumerate(code):
                if ch == '"' and code[i - 1:i] != "\\":
                    quoted = not quoted
                elif code.startswith("{{", i):
                    assert not quoted, f"{path.name}:{n}: {{{{ }}}} inside double quotes"


# --- running them ------------------------------------------------------------------


def run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """The way a host runs a program: `bash -s`, the program on stdin."""
    return subprocess.run(["bash", "-s"], input=stdin_program(script), capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture
def sandbox(tmp_path):
    """A directory to run in (MARK would appear here) and a hostile service dir."""
    yield tmp_path, tmp_path / "it's \"odd\" $(touch MARK) `touch MARK`" / "svc"
    assert not list(tmp_path.rglob("MARK")), "a payload ran"


def test_pip_args_reach_pip_as_the_words_they_are(cfg, sandbox):
    cwd, d = sandbox
    fake = cwd / "python3"
    # `-m venv DIR` makes a DIR/bin/pip that records its arguments, one per line.
    fake.write_text(f"""#!/bin/bash
if [ "$1" = -m ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\nprintf "%%s\\\\n" "$@" > %s\\n' {render.shquote(str(cwd / "pip-args"))} > "$3/bin/pip"
  chmod +x "$3/bin/pip"
else
  echo 3.11.2
fi
""")
    fake.chmod(0o755)
    s = dataclasses.replace(svc(cfg, "air"), python=str(fake))
    script = venv.build_script(s, str(d), str(d / "releases" / "R"))
    (d / "venvs").mkdir(parents=True)
    (d / "releases" / "R").mkdir(parents=True)
    (d / "releases" / "R" / "requirements.txt").write_text("Django\n")
    r = run(script, cwd)
    assert r.returncode == 0, r.stderr
    args = (cwd / "pip-args").read_text().splitlines()
    assert args == ["install", "-q", "--disable-pip-version-check", "--no-index",
                    "--find-links", "/w h/$(touch MARK)", "--extra-index-url",
                    "http://x/?a=1&b=$HOME;", "-r", str(d / "releases" / "R" / "requirements.txt"),
                    "gunicorn>=21"]
    assert facts(r.stdout)["venv"].startswith("built ")
    assert facts(run(script, cwd).stdout)["venv"].startswith("reused ")  # same key


def test_pip_env_reaches_pip_exactly_and_nothing_after_it(cfg, sandbox):
    """pip_env's values (a secret among them) are in pip's environment as they are,
    in no argument, and unset once the virtualenv is built."""
    cwd, d = sandbox
    token = "https://__token__:" + PAYLOAD + "@pypi.example.com/simple/"
    fake = cwd / "python3"
    # `-m venv DIR` makes a DIR/bin/pip that records its arguments and pip_env.
    fake.write_text(f"""#!/bin/bash
if [ "$1" = -m ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\nprintf "%%s\\\\n" "$@" "PIP=$PIP_INDEX_URL" "UV=$UV_EXTRA_INDEX_URL" > %s\\n' \
    {render.shquote(str(cwd / "pip-args"))} > "$3/bin/pip"
  chmod +x "$3/bin/pip"
else
  echo 3.11.2
fi
""")
    fake.chmod(0o755)
    s = dataclasses.replace(secrets.resolve(cfg.service("air"), {"AIR_TOKEN": token}),
                            python=str(fake))
    script = venv.build_script(s, str(d), str(d / "releases" / "R"))
    assert token not in script.replace(render.shquote(token), "")  # one quoted word, once
    (d / "venvs").mkdir(parents=True)
    (d / "releases" / "R").mkdir(parents=True)
    (d / "releases" / "R" / "requirements.txt").write_text("Django\n")
    r = run(script + 'echo "@@after ${PIP_INDEX_URL-unset} ${UV_EXTRA_INDEX_URL-unset}"\n', cwd)
    assert r.returncode == 0, r.stderr
    args = (cwd / "pip-args").read_text().splitlines()
    assert args[-2:] == [f"PIP={token}", f"UV=http://x/{PAYLOAD}"]
    assert not [a for a in args[:-2] if "__token__" in a or f"http://x/{PAYLOAD}" in a]
    assert facts(r.stdout)["after"] == "unset unset"
    # The key covers pip_env's names and plain values, not the secret's value.
    key = facts(r.stdout)["venv"].split()[-1]
    rotated = dataclasses.replace(s, pip_env=secrets.resolve(
        cfg.service("air"), {"AIR_TOKEN": token + "2"}).pip_env)
    assert facts(run(venv.build_script(rotated, str(d), str(d / "releases" / "R")),
                     cwd).stdout)["venv"] == f"reused {key}"
    other = dataclasses.replace(s, pip_env={**s.pip_env, "UV_EXTRA_INDEX_URL": "http://y/"})
    assert facts(run(venv.build_script(other, str(d), str(d / "releases" / "R")),
                     cwd).stdout)["venv"].startswith("built ")


def test_without_pip_env_a_venv_keeps_its_key(cfg):
    s = dataclasses.replace(svc(cfg, "air"), pip_env={})
    assert venv.context(s, "/srv/air", "/srv/air/releases/R")["key_inputs"] == \
        f"{s.python}|{s.pip_args}|'gunicorn>=21'"


def test_pip_args_with_an_open_quote_is_a_config_error(cfg):
    bad = dataclasses.replace(svc(cfg, "air"), pip_args="--no-index --find-links 'open")
    with pytest.raises(ConfigError, match="pip_args"):
        venv.build_script(bad, "/srv/air", "/srv/air/releases/R")


def test_the_repo_url_is_an_argument_and_text_in_the_missing_commit_error(cfg, sandbox):
    cwd, d = sandbox
    d.mkdir(parents=True)
    origin = cwd / f"{PAYLOAD}.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    s = dataclasses.replace(svc(cfg, "air"), repo=str(origin))
    r = run(releases.mirror_script(s, str(d), "ab" * 20), cwd)
    assert (d / "repo" / "HEAD").exists()  # cloned from there
    assert r.returncode == 1
    assert f"commit {'ab' * 6} is not in {origin}: push it first" in r.stderr
    r = run(releases.mirror_script(s, str(d), "ab" * 20), cwd)  # the update path
    assert f"is not in {origin}: push it first" in r.stderr


def test_migration_names_and_releases_are_arguments_not_code(cfg, sandbox):
    cwd, d = sandbox
    rel = d / "releases" / PAYLOAD
    (rel / ".deploy" / "venv" / "bin").mkdir(parents=True)
    (rel / ".deploy" / "env").write_text(f"SECRET={shlex.quote(PAYLOAD)}\n")
    py = rel / ".deploy" / "venv" / "bin" / "python"
    py.write_text('#!/bin/bash\nprintf "<%s>\\n" "$@" "$SECRET"\n')
    py.chmod(0o755)
    (rel / ".deploy" / "migrations.json").write_text('{"app": "0002_x"}\n')
    s = svc(cfg, "air")
    r = run(releases.manage_script(s, str(d), PAYLOAD, ["migrate", "--noinput", "app", PAYLOAD]),
            cwd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["<manage.py>", "<migrate>", "<--noinput>", "<app>",
                                     f"<{PAYLOAD}>", f"<{PAYLOAD}>"]
    r = run(releases.read_migrations_script(str(d), [PAYLOAD, "missing"]), cwd)
    assert fact_list(r.stdout, "migrations") == [f'{PAYLOAD} {{"app": "0002_x"}}',
                                                  "missing null"]


def test_lock_history_prune_and_inspect_in_a_hostile_directory(cfg, sandbox):
    cwd, d = sandbox
    path = str(d / ".lock")
    record = lock.owner_record("deploy")
    assert lock.parse_holder(run(lock.acquire_script(path, json.dumps(record)), cwd).stdout) \
        is None
    held = lock.parse_holder(run(lock.acquire_script(path, '{"user": "other"}'), cwd).stdout)
    assert held["id"] == record["id"] and held["age"] is not None
    run(lock.remove_lock_script(path, "someone-else"), cwd)
    assert os.path.exists(path)  # not ours to release
    run(lock.remove_lock_script(path, record["id"]), cwd)
    assert not os.path.exists(path)

    big = {"user": PAYLOAD, "hosts": ["web-%d" % i for i in range(30000)]}  # > 128 KiB
    assert len(json.dumps(big)) > 200_000
    for _ in range(2):
        assert run(lock.history_append_script(str(d), big), cwd).returncode == 0
    lines = (d / "history.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [big, big]
    assert run(lock.history_read_script(str(d), 1), cwd).stdout.strip() == lines[-1]

    names = [f"2026010{i}T000000Z-{PAYLOAD[:1]}aaaaa{i}" for i in range(1, 6)]
    for n in names + ["20260109T000000Z-halfmade"]:
        (d / "releases" / n / ".deploy").mkdir(parents=True)
        (d / "releases" / n / ".deploy" / "venv").symlink_to(d / "venvs" / "k1")
    for n in names:
        (d / "releases" / n / ".deploy" / "staged").touch()
    (d / "venvs" / "k1").mkdir(parents=True)
    (d / "venvs" / "k2").mkdir()
    os.symlink(f"releases/{names[2]}", d / "current")
    r = run(releases.prune_script(str(d), 2, [names[1]]), cwd)
    assert r.returncode == 0, r.stderr
    assert sorted(fact_list(r.stdout, "pruned")) == [names[0]]
    assert fact_list(r.stdout, "pruned_venv") == ["k2"]
    left = sorted(p.name for p in (d / "releases").iterdir())
    assert left == names[1:]  # the half-made one is gone; current and protected stay

    st = hoststate.parse_inspect(run(hoststate.inspect_script(svc(cfg, "air"), str(d)),
                                    cwd).stdout, "air")
    assert st.current == names[2] and st.releases == names[1:]


def test_write_file_is_0600_from_creation_and_survives_hostile_content(sandbox):
    cwd, d = sandbox
    d.mkdir(parents=True)
    # A watcher would see the temporary file too: umask 077 covers it.
    r = run(write_file(str(d / "env"), PAYLOAD + "\n", 0o600)
            + "\nstat -c %a " + render.shquote(str(d / "env")), cwd)
    assert r.stdout.strip() == "600" and (d / "env").read_text() == PAYLOAD + "\n"
    r = run(write_file(str(d / "no-such-dir" / "f"), "x", 0o644) + "\necho still-here", cwd)
    assert r.returncode != 0 and "still-here" not in r.stdout  # set -e stops at a failed write


def test_write_file_gives_each_mode_whatever_was_there_and_keeps_the_umask(sandbox):
    cwd, d = sandbox
    d.mkdir(parents=True)
    # a leftover temporary file, readable by all: the new text never goes into it
    (d / "env.tmp").write_text("old")
    (d / "env.tmp").chmod(0o644)
    (d / "old-run").symlink_to(d / "elsewhere")
    program = "\n".join([
        "umask 002",
        write_file(str(d / "env"), "S=1\n", 0o600),
        write_file(str(d / "start"), "#!/bin/sh\n" + PAYLOAD, 0o755),
        write_file(str(d / "conf"), PAYLOAD, 0o644),
        write_file(str(d / "bin"), "a\0b'\n", 0o640),  # a NUL: base64
        write_file(str(d / "old-run"), "x", 0o644),  # replaces a symlink, not its target
        "umask",
        "stat -c '%n %a' " + " ".join(render.shquote(str(d / n))
                                     for n in ("env", "start", "conf", "bin", "old-run")),
    ])
    r = run(program, cwd)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0002"
    assert [line.rsplit(" ", 1)[1] for line in lines[1:]] == ["600", "755", "644", "640", "644"]
    assert (d / "env").read_text() == "S=1\n" and (d / "conf").read_text() == PAYLOAD
    assert (d / "start").read_text() == "#!/bin/sh\n" + PAYLOAD
    assert (d / "bin").read_bytes() == b"a\0b'\n"
    assert not (d / "old-run").is_symlink() and not (d / "elsewhere").exists()
    assert not list(d.glob("*.tmp"))


def macros(*names: str) -> str:
    """The shell functions of templates/remote/_macros.sh.j2 called `names`, rendered."""
    calls = "".join("{{ m.%s() }}\n" % n for n in names)
    return str(render._script_env().from_string(
        '{% import "remote/_macros.sh.j2" as m %}\n' + calls).render())


def test_slot_states_counts_as_the_greps_it_replaced(tmp_path):
    status = ("skiff:skiff_0                    RUNNING   pid 4242, uptime 0:00:05\n"
              "skiff:skiff_1                    STARTING  \n"
              "\n"
              "skiff:RUNNING_x                  FATAL     Exited too quickly\n"
              "harbor                           RUNNING   pid 77, uptime 1 day, 0:00:01\n"
              "skiff:skiff_2                    BACKOFF   Exited too quickly\n")
    r = run(macros("slot_states_function") + 'slot_states "$(cat status)"\n'
            'echo "$n_all $n_run $n_up [$slot_pids]"\n'
            'slot_states ""\necho "$n_all $n_run $n_up [$slot_pids]"\n',
            _write(tmp_path, "status", status))
    assert r.returncode == 0, r.stderr
    # grep -c . / [[:space:]]RUNNING([[:space:]]|$) / (RUNNING|STARTING), and the pids
    # that `sed 's/.* pid \([0-9]*\),.*/'` took
    assert r.stdout.splitlines() == ["5 2 3 [4242 77 ]", "0 0 0 []"]


def test_nap_waits_without_a_process_and_pid_alive_reads_a_pid_file(tmp_path):
    (tmp_path / "live.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "gone.pid").write_text("999999999")
    r = run(macros("nap_function", "pid_alive_function") + textwrap.dedent("""\
        t0=$EPOCHREALTIME; nap 0.3; t1=$EPOCHREALTIME
        echo "napped $(( (${t1/./} - ${t0/./}) / 1000 ))"
        pid_alive live.pid && echo live
        pid_alive gone.pid || echo gone
        pid_alive missing.pid || echo missing
        : > empty.pid; pid_alive empty.pid || echo empty
        """), tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert 280 <= int(lines[0].split()[1]) < 1000, lines
    assert lines[1:] == ["live", "gone", "missing", "empty"]


def _write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d


# --- the transport: stdin, never argv -----------------------------------------------


def test_local_target_runs_scripts_from_stdin_not_argv(tmp_path):
    cfg = parse(f"hosts:\n  h0: {{local: true, root: {tmp_path}}}\nservices:\n"
                "  svc: {kind: command, command: x, repo: /r.git, hosts: [h0], port: 9000}\n",
                str(tmp_path / "s.yaml"), str(tmp_path))
    with Fleet(cfg, ["h0"]) as fleet:
        t = fleet["h0"]
        r = t.run(f"echo {render.shquote(PAYLOAD)} >/dev/null\n"
                  "tr '\\0' ' ' < /proc/$$/cmdline; echo\ncat; echo after-cat")
        assert r.stdout.splitlines() == ["bash -s ", "after-cat"]  # cat read nothing
        assert t.run("false\necho not-reached", check=False).exited == 1  # -e
        assert t.run("echo $UNSET_VAR_X", check=False).exited != 0  # -u


def test_a_program_cut_short_runs_nothing(tmp_path):
    program = stdin_program(f"touch {render.shquote(str(tmp_path / 'first'))}\necho second\n")
    r = subprocess.run(["bash", "-s"], input=program[:-10], capture_output=True, text=True)
    assert r.returncode != 0 and not (tmp_path / "first").exists()


def test_an_app_factory_reaches_gunicorn_as_one_word(cfg, sandbox):
    # start (what supervisord runs) and staging's --check-config both hand gunicorn
    # the reference exactly as written in services.yaml, quotes and all.
    cwd, d = sandbox
    s = dataclasses.replace(svc(cfg, "skiff"), app=FACTORY)
    host = cfg.hosts["web-0"]
    rel = d / "releases" / "R"
    (rel / ".deploy" / "venv" / "bin").mkdir(parents=True)
    (d / "current").symlink_to(rel)
    recorder = rel / ".deploy" / "venv" / "bin" / "gunicorn"
    recorder.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {render.shquote(str(cwd / 'argv'))}\n")
    recorder.chmod(0o755)
    for f in render.release_files(s, host, str(d), "R", "c" * 40):
        (rel / f.path).write_text(f.content)
        (rel / f.path).chmod(f.mode)
    r = subprocess.run([str(rel / ".deploy" / "start")], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert (cwd / "argv").read_text().splitlines()[-1] == FACTORY
    stage = releases.stage_script(s, host, str(d), "R", "c" * 40, {}, static="run", build="run")
    check = next(line for line in stage.splitlines() if "--chdir \"$R\"" in line)
    assert shlex.split(check.replace('"$R"', "R"))[-2] == FACTORY  # the word before `>&2`


def test_exec_runs_in_the_live_release_with_its_env_and_venv(sandbox):
    cwd, d = sandbox
    rel = d / "releases" / "R1"
    (rel / ".deploy" / "venv" / "bin").mkdir(parents=True)
    (d / "current").symlink_to(rel)
    (rel / ".deploy" / "env").write_text("SECRET='s3 cr$t'\n")
    tool = rel / ".deploy" / "venv" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho \"tool from the venv, VIRTUAL_ENV=$VIRTUAL_ENV\"\n")
    tool.chmod(0o755)
    command = ('printf "%s\\n" "$SECRET" "$(basename "$PWD")"; tool; echo to-stderr >&2; '
               "false | true; echo \"unset: ${NOPE:-}\"; exit 3")
    r = run(releases.exec_script(str(d), command), cwd)
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == [
        "@@exec_release R1", "s3 cr$t", "R1", f"tool from the venv, VIRTUAL_ENV={rel}/.deploy/venv",
        "to-stderr", "unset: "]
    assert r.stderr == ""


def test_exec_without_a_live_release_runs_nothing(sandbox):
    cwd, d = sandbox
    d.mkdir(parents=True)
    r = run(releases.exec_script(str(d), "touch MARK"), cwd)
    assert r.returncode == 1
    assert "@@exec_release" not in r.stdout and "nothing is deployed" in r.stderr


# --- shared paths ---------------------------------------------------------------------


def _release(d: Path, name: str) -> Path:
    rel = d / "releases" / name
    rel.mkdir(parents=True)
    return rel


def test_shared_paths_are_linked_into_a_release_replacing_the_repositorys(cfg, sandbox):
    cwd, d = sandbox
    s = svc(cfg, "air")  # shared: media/, uploads/, config/local.py, .env
    rel = _release(d, "R1")
    (rel / "media").mkdir()  # the repository has a media/ and a config/local.py
    (rel / "media" / "from-repo.png").write_text("repo")
    (rel / "config").mkdir()
    (rel / "config" / "local.py").write_text("DEBUG = True  # the repository's\n")
    (d / "shared" / "config").mkdir(parents=True)
    (d / "shared" / "config" / "local.py").write_text("DEBUG = False\n")
    (d / "shared" / ".env").write_text("X=1\n")
    r = run(releases.shared_script(s, str(d), "R1"), cwd)
    assert r.returncode == 0, r.stderr
    assert sorted(fact_list(r.stdout, "shared_replaced")) == ["config/local.py", "media"]
    for path in ("media", "uploads", "config/local.py", ".env"):
        assert os.readlink(rel / path) == str(d / "shared" / path), path
    assert (d / "shared" / "uploads").is_dir()  # created the first time
    assert not (d / "shared" / "media" / "from-repo.png").exists()  # not copied into shared
    assert (rel / "config" / "local.py").read_text() == "DEBUG = False\n"
    (rel / "media" / "upload.png").write_text("by the app")  # lands in shared/
    assert (d / "shared" / "media" / "upload.png").read_text() == "by the app"
    # Again (the media task on the live release): nothing to replace, nothing lost.
    r = run(releases.shared_script(s, str(d), "R1"), cwd)
    assert r.returncode == 0 and fact_list(r.stdout, "shared_replaced") == [], r.stderr
    assert (d / "shared" / "media" / "upload.png").read_text() == "by the app"


def test_a_missing_shared_file_fails_naming_every_path_to_create(cfg, sandbox):
    cwd, d = sandbox
    rel = _release(d, "R1")
    (d / "shared" / "config").mkdir(parents=True)
    (d / "shared" / "config" / "local.py").mkdir()  # a directory is not the file
    r = run(releases.shared_script(svc(cfg, "air"), str(d), "R1"), cwd)
    assert r.returncode == 1
    assert f"missing on this host: create {d}/shared/config/local.py {d}/shared/.env " \
        in r.stderr, r.stderr
    assert list(rel.iterdir()) == []  # nothing linked


def test_a_shared_path_never_leads_out_of_the_release(cfg, sandbox, tmp_path_factory):
    cwd, d = sandbox
    outside = tmp_path_factory.mktemp("etc")
    rel = _release(d, "R1")
    (rel / "config").symlink_to(outside)  # the repository's symlink
    (d / "shared" / "config").mkdir(parents=True)
    (d / "shared" / "config" / "local.py").write_text("x\n")
    (d / "shared" / ".env").write_text("x\n")
    r = run(releases.shared_script(svc(cfg, "air"), str(d), "R1"), cwd)
    assert r.returncode == 1 and "config leads out of the release" in r.stderr, r.stderr
    assert list(outside.iterdir()) == []


def test_a_shared_directory_that_is_a_file_on_the_host_is_an_error(cfg, sandbox):
    cwd, d = sandbox
    _release(d, "R1")
    (d / "shared" / "config").mkdir(parents=True)
    (d / "shared" / "config" / "local.py").write_text("x\n")
    (d / "shared" / ".env").write_text("x\n")
    (d / "shared" / "uploads").write_text("not a directory\n")
    r = run(releases.shared_script(svc(cfg, "air"), str(d), "R1"), cwd)
    assert r.returncode == 1 and f"{d}/shared/uploads is not a directory" in r.stderr
