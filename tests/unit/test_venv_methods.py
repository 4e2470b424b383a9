"""Which method installs a release's dependencies (templates/remote/venv.sh.j2), and the
venv key it makes: run as a host runs it, with a fake interpreter whose pip and a fake
uv record their arguments, on release trees shaped like today's projects."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploytools import render, venv
from deploytools.config import parse
from deploytools.errors import ConfigError
from deploytools.inventory import stdin_program
from deploytools.script import facts

YAML = """\
hosts: {web-0: {address: 10.0.0.10}}
defaults: {pip_args: "--no-index --find-links /w"}
services:
  flaskr: {kind: flask, repo: /r.git, hosts: [web-0], app: "flaskr:create_app()", port: 8001}
  harbor: {kind: command, repo: /h.git, hosts: [web-0], port: 8300, command: java -jar x.jar}
"""

PYPROJECT = '[project]\nname = "flaskr"\nversion = "1.0"\ndependencies = ["flask"]\n'


@pytest.fixture
def host(tmp_path):
    """A service dir, its release R, and a python3 whose `-m venv DIR` makes a DIR/bin/pip
    that appends its arguments (one per line, then `--`) to <tmp>/pip.log."""
    d = tmp_path / "srv" / "flaskr"
    (d / "venvs").mkdir(parents=True)
    (d / "releases" / "R").mkdir(parents=True)
    log = tmp_path / "pip.log"
    fake = tmp_path / "python3"
    # The pip it installs logs its arguments; it fails an install from the fleet's
    # download (--isolated) when $FAIL_ISOLATED is set.
    pip = tmp_path / "fake-pip"
    pip.write_text(f"""#!/bin/bash
printf '%s\\n' "$@" -- >> {render.shquote(str(log))}
case " $* " in *" --isolated "*) [ -z "${{FAIL_ISOLATED:-}}" ] || exit 1 ;; esac
""")
    fake.write_text(f"""#!/bin/bash
if [ "$1" = -m ]; then
  mkdir -p "$3/bin"
  cp {render.shquote(str(pip))} "$3/bin/pip"
  chmod +x "$3/bin/pip"
else
  echo 3.11.2
fi
""")
    fake.chmod(0o755)
    cfg = parse(YAML, "services.yaml", str(tmp_path))
    return tmp_path, d, d / "releases" / "R", log, fake, cfg


def stage(host, name="flaskr", *, wheels=None, environ=None, **changes):
    tmp, d, rel, log, fake, cfg = host
    s = dataclasses.replace(cfg.service(name), python=str(fake), **changes)
    script = "R=" + render.shquote(str(rel)) + "\n" + venv.build_script(s, str(d), str(rel),
                                                                       wheels=wheels)
    script += 'echo "@@key $VENV_KEY"\n'
    r = subprocess.run(["bash", "-s"], input=stdin_program(script), capture_output=True,
                       text=True, cwd=tmp, env=dict(os.environ, PATH=f"{tmp}/bin:/usr/bin:/bin",
                                                    **(environ or {})))
    return r, facts(r.stdout)


def pip_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    calls, cur = [], []
    for word in log.read_text().splitlines():
        if word == "--":
            calls.append(cur)
            cur = []
        else:
            cur.append(word)
    return calls


def write(rel: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (rel / name).parent.mkdir(parents=True, exist_ok=True)
        (rel / name).write_text(text)


@pytest.mark.parametrize("files,method", [
    ({"requirements.txt": "flask\n", "pyproject.toml": PYPROJECT, "uv.lock": "x"}, "requirements"),
    ({"uv.lock": "x", "pyproject.toml": PYPROJECT, "setup.py": ""}, "uv"),
    ({"pyproject.toml": PYPROJECT}, "project"),
    ({"setup.py": "from setuptools import setup\nsetup()\n"}, "project"),
    ({"setup.cfg": "[metadata]\nname = flaskr\n"}, "project"),
    ({"README.md": "hi"}, "none"),
])
def test_auto_detects_in_order(host, files, method):
    tmp, d, rel, log, *_ = host
    write(rel, files)
    uv = d / "tools" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$PWD\" \"$UV_PROJECT_ENVIRONMENT\" \"$@\" "
                  f"> {render.shquote(str(tmp / 'uv.log'))}\n")
    uv.chmod(0o755)
    r, f = stage(host, installer="pip")
    assert r.returncode == 0, r.stderr
    assert f["venv_method"] == method and f["venv_installer"] == "pip"
    assert f["venv"].startswith("built ")
    calls = pip_calls(log)
    pip_opts = ["install", "-q", "--disable-pip-version-check", "--no-index", "--find-links", "/w"]
    if method == "requirements":
        assert calls == [pip_opts + ["-r", f"{rel}/requirements.txt", "gunicorn>=21"]]
    elif method == "project":  # the project itself, non-editable, from the release
        assert calls == [pip_opts + [str(rel), "gunicorn>=21"]]
    elif method == "uv":
        cwd, env_dir, *args = (tmp / "uv.log").read_text().splitlines()
        assert (cwd, env_dir) == (str(rel), f"{d}/venvs/{f['key']}")
        assert args == ["sync", "--frozen", "--no-dev", "--no-install-project", "--python",
                        f"{d}/venvs/{f['key']}/bin/python", "--no-index", "--find-links", "/w"]
        assert calls == [pip_opts + ["gunicorn>=21"]]
    else:
        assert calls == [pip_opts + ["gunicorn>=21"]]
        assert "no dependencies installed" in f["warning"] and "pyproject.toml" in f["warning"]
    if method != "none":
        assert "warning" not in f


@pytest.mark.parametrize("files,changes,fragment", [
    # (the controller writes the converted lock into the release; without it, refused)
    ({"poetry.lock": "", "pyproject.toml": PYPROJECT}, {}, "no converted lock file"),
    ({"Pipfile.lock": "{}", "Pipfile": ""}, {"install": "pipenv"}, "no converted lock file"),
    ({"requirements.txt": ""}, {"requirements": "req/prod.txt"},
     "the requirements file req/prod.txt is not in the release"),
    ({"pyproject.toml": PYPROJECT}, {"install": "requirements"},
     "the requirements file requirements.txt is not in the release"),
    ({"requirements.txt": ""}, {"install": "project"}, "no pyproject.toml, setup.py or setup.cfg"),
    ({"pyproject.toml": PYPROJECT}, {"install": "uv"}, "uv.lock and pyproject.toml must both"),
    ({"uv.lock": "", "pyproject.toml": PYPROJECT}, {}, "uv.lock needs uv on"),
])
def test_a_missing_or_unsupported_file_is_a_clear_error(host, files, changes, fragment):
    _, d, rel, log, *_ = host
    write(rel, files)
    r, f = stage(host, **changes)
    assert r.returncode == 1
    assert fragment in r.stderr and "services.flaskr.install is" in r.stderr
    assert "venv" not in f and not pip_calls(log) and not list((d / "venvs").iterdir())


def test_install_chooses_over_detection(host):
    _, _, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n", "pyproject.toml": PYPROJECT})
    assert stage(host, install="project")[1]["venv_method"] == "project"
    r, f = stage(host, install="none")
    assert f["venv_method"] == "none" and "warning" not in f  # asked for: no warning
    assert pip_calls(log)[-1][-1] == "gunicorn>=21" and "-r" not in pip_calls(log)[-1]


def test_the_key_hashes_exactly_the_chosen_methods_inputs(host):
    _, _, rel, log, *_ = host
    write(rel, {"pyproject.toml": PYPROJECT, "flaskr/__init__.py": "v = 1\n"})
    key = stage(host)[1]["key"]
    (rel / "flaskr" / "__init__.py").write_text("v = 2\n")  # a code-only change
    (rel / "requirements-dev.txt").write_text("pytest\n")
    r, f = stage(host)
    assert f["venv"] == f"reused {key}"
    (rel / "pyproject.toml").write_text(PYPROJECT.replace('["flask"]', '["flask", "six"]'))
    assert stage(host)[1]["key"] != key
    # A requirements project: pyproject.toml is not its input.
    write(rel, {"requirements.txt": "flask\n"})
    key = stage(host)[1]["key"]
    (rel / "pyproject.toml").write_text(PYPROJECT)
    assert stage(host)[1]["venv"] == f"reused {key}"


def test_requirements_and_none_keep_the_keys_venvs_had_before_methods(host):
    # Existing hosts' venvs must stay valid: the same text is hashed as before.
    tmp, _, rel, _, fake, cfg = host
    extras = "'gunicorn>=21'"
    before = f"{fake}|--no-index --find-links /w|{extras}\n3.11.2\n"
    write(rel, {"requirements.txt": "flask\n"})
    assert stage(host)[1]["key"] == hashlib.sha256(
        ("flask\n" + before).encode()).hexdigest()[:16]
    (rel / "requirements.txt").unlink()
    assert stage(host)[1]["key"] == hashlib.sha256(before.encode()).hexdigest()[:16]


def test_a_command_service_without_python_files_gets_no_venv(host):
    _, d, rel, log, *_ = host
    write(rel, {"build.sh": "javac\n"})
    r, f = stage(host, "harbor")
    assert r.returncode == 0 and f["key"] == "none" and "warning" not in f
    assert not pip_calls(log)
    write(rel, {"pyproject.toml": PYPROJECT})
    r, f = stage(host, "harbor")
    assert f["venv_method"] == "project" and pip_calls(log) == [
        ["install", "-q", "--disable-pip-version-check", "--no-index", "--find-links", "/w",
         str(rel)]]


def test_installer_uv_installs_with_the_tools_uv(host):
    tmp, d, rel, log, *_ = host
    write(rel, {"pyproject.toml": PYPROJECT})
    uv = d / "tools" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    # `uv venv ... DIR` makes DIR/bin/python; every call is recorded.
    uv.write_text(f"""#!/bin/bash
printf '%s\\n' "$@" -- >> {render.shquote(str(tmp / 'uv.log'))}
if [ "$1" = venv ]; then mkdir -p "${{@: -1}}/bin"; fi
""")
    uv.chmod(0o755)
    pip_key = stage(host, installer="pip")[1]["key"]
    r, f = stage(host)  # uv is the default
    assert r.returncode == 0, r.stderr
    assert f["venv"].startswith("built ") and f["key"] != pip_key  # the installer is in the key
    assert f["venv_installer"] == "uv"
    v = f"{d}/venvs/{f['key']}"
    calls = pip_calls(tmp / "uv.log")
    assert calls == [["venv", "-q", "--python", str(host[4]), v],
                     ["pip", "install", "-q", "--python", f"{v}/bin/python", "--no-index",
                      "--find-links", "/w", str(rel), "gunicorn>=21"]]
    assert stage(host, installer="uv")[1]["venv"] == f"reused {f['key']}"


def test_installer_uv_without_a_tools_uv_falls_back_to_pip_under_pips_key(host):
    tmp, d, rel, log, *_ = host
    write(rel, {"pyproject.toml": PYPROJECT})
    pip_key = stage(host, installer="pip")[1]["key"]
    r, f = stage(host, installer="uv")  # tools.sh.j2 could not install uv: no tools/bin/uv
    assert r.returncode == 0, r.stderr
    assert (f["venv"], f["venv_installer"]) == (f"reused {pip_key}", "pip")
    assert len(pip_calls(log)) == 1  # built once, by pip


def test_tools_warn_and_go_on_when_uv_cannot_be_installed(tmp_path):
    """An index without uv (or no uv wheel for the platform): supervisor is installed, uv
    is not, and staging goes on with a warning (the venv then falls back to pip)."""
    d = tmp_path / "srv" / "flaskr"
    d.mkdir(parents=True)
    fake = tmp_path / "python3"
    fake.write_text("""#!/bin/bash
[ "$1" = -m ] || exit 1  # (no pip wheel of its own: `-m venv`, then its pip)
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'PIP'
#!/bin/bash
for a in "$@"; do case "$a" in uv*) echo "ERROR: No matching distribution found for $a"; exit 1;; esac; done
PIP
chmod +x "$3/bin/pip"
""")
    fake.chmod(0o755)
    cfg = parse(YAML, "services.yaml", str(tmp_path))
    s = dataclasses.replace(cfg.service("flaskr"), python=str(fake))
    assert s.installer == "uv"
    r = subprocess.run(["bash", "-s"], input=stdin_program(venv.tools_script(s, str(d))),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    f = facts(r.stdout)
    assert f["tools"] == "built" and "tools_uv" not in f
    assert f["warning"].startswith(f"could not install uv into {d}/tools (ERROR: No matching "
                                   "distribution found for uv>=0.4); installing with pip instead")
    assert (d / "tools" / ".complete").is_file() and not (d / "tools" / "bin" / "uv").exists()


LOCKED = "flask==3.1.3 --hash=sha256:" + "a" * 64 + "\n"


@pytest.mark.parametrize("files,project", [
    ({"poetry.lock": "x", "pyproject.toml": PYPROJECT + '[build-system]\nrequires = ["poetry-core"]\n'}, True),
    ({"Pipfile.lock": "{}", "Pipfile": "", "pyproject.toml": "[tool.black]\nline-length = 99\n"}, False),
])
def test_a_converted_lock_installs_with_hashes_then_the_project(host, files, project):
    _, d, rel, log, *_ = host
    write(rel, {**files, venv.LOCKED: LOCKED, "flaskr/__init__.py": "v = 1\n"})
    r, f = stage(host, installer="pip")
    assert r.returncode == 0, r.stderr
    assert f["venv_method"] == "locked" and f["venv"].startswith("built ")
    opts = ["install", "-q", "--disable-pip-version-check", "--no-index", "--find-links", "/w"]
    assert pip_calls(log) == [opts + ["--require-hashes", "-r", f"{rel}/{venv.LOCKED}"],
                              *([opts + ["--no-deps", str(rel)]] if project else []),
                              opts + ["gunicorn>=21"]]
    key = f["key"]
    (rel / "flaskr" / "__init__.py").write_text("v = 2\n")  # code only: the same venv
    (rel / "poetry.lock").write_text("dev-only change")  # (its runtime list is unchanged)
    assert stage(host, installer="pip")[1]["venv"] == f"reused {key}"
    (rel / venv.LOCKED).write_text(LOCKED + "six==1.17.0 --hash=sha256:" + "b" * 64 + "\n")
    assert stage(host, installer="pip")[1]["venv"].startswith("built ")


def test_the_controller_converts_the_lock_the_host_will_pick():
    cfg = parse(YAML, "services.yaml", "/")
    s = cfg.service("flaskr")
    lock = ('[[package]]\nname = "flask"\nversion = "3.1.3"\ngroups = ["main"]\n'
            'files = [{file = "f.whl", hash = "sha256:' + "a" * 64 + '"}]\n')
    tree = {"poetry.lock": lock, "pyproject.toml": PYPROJECT}
    got = venv.locked_requirements(s, "c" * 40, tree.get)
    assert got.splitlines()[1:] == [LOCKED.strip()]
    # Earlier in the order: a requirements file or uv.lock wins, and nothing is converted.
    assert venv.locked_requirements(s, "c" * 40, {**tree, "requirements.txt": ""}.get) is None
    assert venv.locked_requirements(s, "c" * 40, {**tree, "uv.lock": ""}.get) is None
    assert venv.locked_requirements(dataclasses.replace(s, install="project"), "c" * 40,
                                    tree.get) is None
    with pytest.raises(ConfigError, match=r"services\.flaskr \(install: pipenv\) at ccccccc: "
                                          r"the commit has no Pipfile\.lock"):
        venv.locked_requirements(dataclasses.replace(s, install="pipenv"), "c" * 40, tree.get)
    bad = {**tree, "poetry.lock": lock.replace('groups', 'source = {type = "git"}\ngroups')}
    with pytest.raises(ConfigError, match="flask comes from a git source"):
        venv.locked_requirements(s, "c" * 40, bad.get)


# One download for the fleet (venv.Handover): the first host's part and the others'.
def test_the_first_host_downloads_for_the_fleet_then_installs_only_from_there(host):
    tmp, d, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n"})
    r, f = stage(host, wheels="fetch")
    assert r.returncode == 0, r.stderr
    wh = f"{d}/wheels/R"
    assert f["wheels"] == f"ready {f['key']}" and f["venv"] == f"built {f['key']}"
    assert pip_calls(log) == [
        ["download", "-q", "--disable-pip-version-check", "-d", wh, "--no-index",
         "--find-links", "/w", "-r", f"{rel}/requirements.txt", "gunicorn>=21"],
        # exactly what was downloaded: no index, no pip.conf or PIP_* of the host
        ["install", "-q", "--isolated", "--disable-pip-version-check", "--no-index",
         "--find-links", wh, "-r", f"{rel}/requirements.txt", "gunicorn>=21"]]
    assert Path(wh + ".tar").is_file()  # what the controller copies to the others


def _handed_over(d: Path, key: str) -> None:
    """What Handover leaves on a waiting host: the first host's tar, then the key."""
    (d / "wheels").mkdir(exist_ok=True)
    src = d.parent / "downloaded"
    src.mkdir()
    (src / "six-1.17.0-py2.py3-none-any.whl").write_text("wheel")
    subprocess.run(["tar", "-C", str(src), "-cf", str(d / "wheels" / "R.tar"), "."], check=True)
    (d / "wheels" / "R.key").write_text(key)


def test_a_waiting_host_installs_what_was_handed_over_when_its_key_is_the_same(host):
    tmp, d, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n"})
    key = stage(host, wheels="fetch")[1]["key"]  # the same key, as a twin host computes
    log.unlink()
    for p in (d / "venvs").iterdir():
        subprocess.run(["rm", "-rf", str(p)], check=True)
    (d / "wheels" / "R.tar").unlink()
    _handed_over(d, key)
    r, f = stage(host, wheels="wait")
    assert r.returncode == 0, r.stderr
    assert f["wheels"] == "received"
    assert (d / "wheels" / "R" / "six-1.17.0-py2.py3-none-any.whl").is_file()
    assert not (d / "wheels" / "R.tar").exists() and not (d / "wheels" / "R.key").exists()
    assert pip_calls(log) == [
        ["install", "-q", "--isolated", "--disable-pip-version-check", "--no-index",
         "--find-links", f"{d}/wheels/R", "-r", f"{rel}/requirements.txt", "gunicorn>=21"]]


@pytest.mark.parametrize("told", ["none", "0123456789abcdef"])
def test_a_waiting_host_told_none_or_another_key_installs_from_the_index(host, told):
    tmp, d, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n"})
    _handed_over(d, told)
    r, f = stage(host, wheels="wait")
    assert r.returncode == 0, r.stderr
    assert f["wheels"] == "none" and f["venv"].startswith("built ")
    assert pip_calls(log) == [["install", "-q", "--disable-pip-version-check", "--no-index",
                               "--find-links", "/w", "-r", f"{rel}/requirements.txt",
                               "gunicorn>=21"]]


def test_what_does_not_install_from_the_download_installs_from_the_index(host):
    tmp, d, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n"})
    r, f = stage(host, wheels="fetch", environ={"FAIL_ISOLATED": "1"})
    assert r.returncode == 0, r.stderr
    assert f["wheels"] == "fallback" and f["venv"].startswith("built ")
    assert "did not install here; installed from the index" in f["warning"]
    assert [c[0] for c in pip_calls(log)] == ["download", "install", "install"]
    assert pip_calls(log)[-1] == ["install", "-q", "--disable-pip-version-check", "--no-index",
                                  "--find-links", "/w", "-r", f"{rel}/requirements.txt",
                                  "gunicorn>=21"]


@pytest.mark.parametrize("wheels", ["fetch", "wait"])
def test_only_a_requirements_file_is_downloaded_for_the_fleet(host, wheels):
    tmp, d, rel, log, *_ = host
    write(rel, {"pyproject.toml": PYPROJECT})
    r, f = stage(host, wheels=wheels)  # a waiting host would wait 600 s: it must not
    assert r.returncode == 0, r.stderr
    assert f["wheels"] == "none" and f["venv_method"] == "project"
    assert [c[0] for c in pip_calls(log)] == ["install"]


def test_with_uv_the_tools_pip_downloads_for_the_fleet_and_uv_installs_from_there(host):
    tmp, d, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n"})
    bin_ = d / "tools" / "bin"
    bin_.mkdir(parents=True)
    q = render.shquote(str(log))
    (bin_ / "uv").write_text(f'#!/bin/bash\nif [ "$1" = venv ]; then mkdir -p "${{@: -1}}/bin"; fi\n'
                             f'printf "%s\\n" uv "$@" -- >> {q}\n')
    (bin_ / "pip").write_text(f'#!/bin/bash\nprintf "%s\\n" tools-pip "$@" -- >> {q}\n')
    for f in ("uv", "pip"):
        (bin_ / f).chmod(0o755)
    r, f = stage(host, wheels="fetch")
    assert r.returncode == 0, r.stderr
    assert f["venv_installer"] == "uv" and f["wheels"] == f"ready {f['key']}"
    wh, v = f"{d}/wheels/R", f"{d}/venvs/{f['key']}"
    calls = [c for c in pip_calls(log) if c[:2] != ["uv", "venv"]]
    assert calls == [
        ["tools-pip", "download", "-q", "--disable-pip-version-check", "-d", wh, "--no-index",
         "--find-links", "/w", "-r", f"{rel}/requirements.txt", "gunicorn>=21"],
        ["uv", "pip", "install", "-q", "--python", f"{v}/bin/python", "--no-config",
         "--no-index", "--find-links", wh, "-r", f"{rel}/requirements.txt", "gunicorn>=21"]]


def test_the_keys_interpreter_line_is_sys_version_so_existing_venvs_keep_their_keys():
    """venv.sh.j2 hashes `$PY -VV` without its "Python " (no site import); the keys were
    first computed from `print(sys.version)`: the same text, or every venv is rebuilt."""
    import sys
    vv = subprocess.run(["bash", "-c", f"{sys.executable} -VV | sed '1s/^Python //'"],
                        capture_output=True, text=True, check=True).stdout
    assert vv == sys.version + "\n"
    assert "\"$PY\" -VV | sed '1s/^Python //'" in venv.build_script(
        parse(YAML, "services.yaml", "/tmp").service("flaskr"), "/srv/f", "/srv/f/releases/R")


def test_a_waiting_host_waits_for_the_keys_text_not_only_its_file(host):
    """put() creates the key file before it writes the key: an empty file is not yet
    the answer (read then, it would be taken for "none")."""
    import threading
    tmp, d, rel, log, *_ = host
    write(rel, {"requirements.txt": "flask\n"})
    key = stage(host, wheels="fetch")[1]["key"]
    log.unlink()
    subprocess.run(["rm", "-rf", *map(str, (d / "venvs").iterdir())], check=True)
    (d / "wheels" / "R.tar").unlink()
    _handed_over(d, "")  # the tar is there; the key file, empty so far
    later = threading.Timer(0.5, (d / "wheels" / "R.key").write_text, [key])
    later.start()
    try:
        r, f = stage(host, wheels="wait")
    finally:
        later.cancel()
    assert r.returncode == 0, r.stderr
    assert f["wheels"] == "received", r.stdout


def _wheel(into: Path, name: str, version: str, files: dict[str, str],
           scripts: dict[str, str] | None = None) -> None:
    """A minimal pure-Python wheel, written by hand (no build backend needed)."""
    import zipfile
    info = f"{name}-{version}.dist-info"
    entries = dict(files)
    for script, text in (scripts or {}).items():
        entries[f"{name}-{version}.data/scripts/{script}"] = text
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    entries[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                "Tag: py3-none-any\n")
    entries[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in [*entries, f"{info}/RECORD"])
    into.mkdir(exist_ok=True)
    with zipfile.ZipFile(into / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in entries.items():
            entry = zipfile.ZipInfo(path)
            entry.external_attr = (0o100755 if ".data/scripts/" in path else 0o100644) << 16
            z.writestr(entry, text)


def test_tools_are_installed_by_the_interpreters_own_pip_wheel_in_one_run(tmp_path):
    """`python -m venv` installs pip through ensurepip, which byte-compiles all of pip
    first (2 of the 3.4 s of CPU a host's setup took). tools/ is made without pip, and the
    interpreter's own pip wheel installs pip, supervisor and uv in one run, compiling
    nothing ahead. What comes out works as before: a pip, supervisor, uv."""
    wheels = tmp_path / "wheels"
    _wheel(wheels, "supervisor", "4.3.0", {"supervisor/__init__.py": "VERSION = '4.3.0'\n"})
    _wheel(wheels, "uv", "0.13.9", {}, scripts={"uv": "#!/bin/sh\necho uv 0.13.9\n"})
    d = tmp_path / "srv" / "flaskr"
    d.mkdir(parents=True)
    cfg = parse(YAML.replace("/w", str(wheels)), "services.yaml", str(tmp_path))
    s = dataclasses.replace(cfg.service("flaskr"), python=sys.executable)
    r = subprocess.run(["bash", "-s"], input=stdin_program(venv.tools_script(s, str(d))),
                       capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PIP_CONFIG_FILE=os.devnull))
    assert r.returncode == 0, r.stderr
    assert facts(r.stdout) == {"tools": "built"}  # uv came in the same run
    t = d / "tools"
    site = next(t.glob("lib/python*/site-packages"))
    assert (site / "supervisor" / "__init__.py").is_file()
    assert subprocess.run([t / "bin" / "uv"], capture_output=True, text=True).stdout == "uv 0.13.9\n"
    pip = subprocess.run([t / "bin" / "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and f"from {site}/pip " in pip.stdout
    # Nothing of pip was compiled by the install (ensurepip compiles every module); the
    # `--version` above compiled what it imported.
    assert len(list((site / "pip").rglob("*.pyc"))) < len(list((site / "pip").rglob("*.py"))) / 2


def test_installer_pip_makes_its_venv_the_same_way(tmp_path):
    """installer: pip: the release's venv gets its pip the same way (from the
    interpreter's own wheel, nothing compiled ahead), then installs the requirements."""
    wheels = tmp_path / "wheels"
    _wheel(wheels, "tinyapp", "1.0", {"tinyapp.py": "X = 1\n"})
    _wheel(wheels, "gunicorn", "23.0", {"gunicorn/__init__.py": ""})
    d = tmp_path / "srv" / "flaskr"
    (d / "venvs").mkdir(parents=True)
    rel = d / "releases" / "R"
    write(rel, {"requirements.txt": "tinyapp\n"})
    cfg = parse(YAML.replace("/w", str(wheels)), "services.yaml", str(tmp_path))
    s = dataclasses.replace(cfg.service("flaskr"), python=sys.executable, installer="pip")
    script = "R=" + render.shquote(str(rel)) + "\n" + venv.build_script(s, str(d), str(rel))
    r = subprocess.run(["bash", "-s"], input=stdin_program(script), capture_output=True,
                       text=True, cwd=tmp_path, env=dict(os.environ, PIP_CONFIG_FILE=os.devnull))
    assert r.returncode == 0, r.stderr
    key = facts(r.stdout)["venv"].split()[1]
    site = next((d / "venvs" / key).glob("lib/python*/site-packages"))
    assert (site / "tinyapp.py").is_file() and (site / "gunicorn").is_dir()
    assert len(list((site / "pip").rglob("*.pyc"))) < len(list((site / "pip").rglob("*.py"))) / 2
