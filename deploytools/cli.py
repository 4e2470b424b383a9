"""The `deploytools` program: fabric's Fab, plus our tasks and the classic Fabric 1 syntax.

    deploytools host:web-0 deploy:airship,ref=v2 restart:airship     # classic
    deploytools -H web-0 deploy airship --ref v2 restart airship      # modern

Both are rewritten to the same invoke task calls: `normalize_argv` pulls our
global flags out of anywhere on the line and turns `-H x` into the `host`
task; `parse_tasks` (once the fabfile is loaded) turns `task:a,k=v` into
`task a --k=v`, and `smart_deploy` into invoke's dashed `smart-deploy`.
The tasks are ours (deploytools.tasks) plus those of the fabfile found from
the working directory, if any; on a name clash the fabfile's task wins.
Only `run` prints errors and picks the exit code.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import traceback

import getpass
from pathlib import Path

import invoke
from invoke import Argument, Collection, Program
from invoke.config import merge_dicts
from invoke.exceptions import Exit, ParseError, UnexpectedExit

from . import __version__, lazy
from . import tasks as our_tasks
from .booleans import FALSE as _FALSE, TRUE as _TRUE
from .report import redact
from .errors import DeployError, EXIT_USAGE, UsageError

# Loaded to execute tasks, not to list them or to parse a command line: fabric's package
# imports paramiko and cryptography (50 ms), our library git, requests and Jinja2.
session = lazy.module("deploytools.session")
fabric = lazy.module("fabric")
paramiko = lazy.module("paramiko")

_CLASSIC = re.compile(r"^(?P<task>[A-Za-z_][\w.-]*):(?P<args>.*)$")


def split_classic_args(text: str) -> list[str]:
    """`a,b\\,c,k=v` -> ['a', 'b,c', 'k=v'] (Fabric 1 escaping of commas)."""
    out, cur, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            cur += ","
            i += 2
            continue
        if ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return [a for a in out if a != ""]


def extract_globals(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Split argv[1:] into (our global flags, host tokens from -H, the rest).

    Our flags may appear anywhere (`deploytools smart_deploy:airship --json` is what a
    CI job writes); invoke only accepts core flags before the first task.
    """
    flags, hosts, rest = [], [], []
    with_value = {"--lock-wait", "--services", "--stage"}
    it = iter(argv)
    for tok in it:
        name = tok.split("=", 1)[0]
        if tok in ("--json", "--debug", "-d"):
            flags.append(tok)
        elif name in with_value and name.startswith("--"):
            flags.append(tok if "=" in tok else f"{tok}={next(it, '')}")
        elif tok in ("-H", "--hosts"):
            hosts += ["host", next(it, "")]
        elif tok.startswith("--hosts="):
            hosts += ["host", tok.split("=", 1)[1]]
        elif tok.startswith("-H") and len(tok) > 2:
            hosts += ["host", tok[2:]]
        else:
            rest.append(tok)
    return flags, hosts, rest


def rewrite_classic(tokens: list[str], collection: Collection) -> list[str]:
    """Classic `task:arg,key=val` tokens -> modern invoke tokens, using the tasks' signatures."""
    out: list[str] = []
    for tok in tokens:
        m = _CLASSIC.match(tok)
        name = (m.group("task") if m else tok)
        dashed = name.replace("_", "-")
        task_name = name if name in collection.task_names else (
            dashed if dashed in collection.task_names else None)
        if task_name is None:
            out.append(tok)
            continue
        out.append(task_name)
        if not m:
            continue
        task = collection[task_name]
        args = task.get_arguments()
        by_name = {a.name.replace("-", "_"): a for a in args}
        positional = [a for a in args if a.positional]
        optional = [a for a in args if not a.positional]
        values = split_classic_args(m.group("args"))
        if task_name == "host":  # host:a;b and host:a,b both mean "these hosts"
            out.append(",".join(values))
            continue
        pos_i = 0
        for value in values:
            key, eq, val = value.partition("=")
            if eq and key.replace("-", "_") in by_name:
                arg = by_name[key.replace("-", "_")]
            elif eq and re.fullmatch(r"[A-Za-z_][\w-]*", key):  # a typo must not become a value
                raise ParseError(f"'{tok}': {task_name} has no argument {key!r} (its arguments: "
                                 f"{', '.join(a.name for a in args)})")
            else:
                key, val = None, value
                if pos_i < len(positional):
                    out.append(val)
                    pos_i += 1
                    continue
                if pos_i - len(positional) >= len(optional):
                    raise ParseError(f"'{tok}' has more values than {task_name} takes")
                arg = optional[pos_i - len(positional)]
                pos_i += 1
            if arg.kind is bool:
                if val.lower() in _TRUE:
                    out.append(f"--{arg.name}")
                elif val.lower() not in _FALSE:
                    raise ParseError(f"'{tok}': {arg.name} is true or false, not {val!r}")
            elif arg.positional:
                out.append(val)
            else:
                out.append(f"--{arg.name}={val}")
    return out


def merge_collections(ours: Collection, theirs: Collection) -> tuple[Collection, list[str]]:
    """Our tasks next to those of the user's fabfile: (the collection, the names of ours
    that a different task of theirs replaces). A fabfile that imports our task under its
    own name (`from deploytools.tasks import *`) is no clash."""
    merged = Collection(loaded_from=theirs.loaded_from, auto_dash_names=theirs.auto_dash_names)
    replaced = []
    for name, task in ours.tasks.items():
        mine = theirs.tasks.get(name, theirs.collections.get(name))
        if mine is None:
            merged.add_task(task, name=name)
        elif mine is not task:
            replaced.append(name)
    for name, task in theirs.tasks.items():
        merged.add_task(task, name=name)
    for name, sub in theirs.collections.items():
        merged.add_collection(sub, name=name)
    merged.configure(theirs.configuration())
    merged.default = theirs.default
    return merged, replaced


class ParseConfig(invoke.Config):
    """fabric's Config as far as parsing and listing read it: its file prefix
    (fabric.yaml, FABRIC_*) and its `fabfile` collection name. `fabric.Config` imports
    paramiko; the program clones this into one once it is about to run tasks."""
    prefix = "fabric"

    @staticmethod
    def global_defaults():
        defaults = invoke.Config.global_defaults()
        merge_dicts(defaults, {"tasks": {"collection_name": "fabfile"}})
        return defaults


# fabric.main.Fab's own core flags, declared here because importing fabric.main loads
# paramiko (tests/unit/test_cli.py checks that they match fabric's).
FABRIC_CORE_ARGS = (
    dict(names=("H", "hosts"), help="Comma-separated host name(s) to execute tasks against."),
    dict(names=("i", "identity"), kind=list,
         help="Path to runtime SSH identity (key) file. May be given multiple times."),
    dict(names=("list-agent-keys",), kind=bool, help="Display ssh-agent key list, and exit."),
    dict(names=("prompt-for-login-password",), kind=bool,
         help="Request an upfront SSH-auth password prompt."),
    dict(names=("prompt-for-passphrase",), kind=bool,
         help="Request an upfront SSH key passphrase prompt."),
    dict(names=("S", "ssh-config"), help="Path to runtime SSH config file."),
    dict(names=("t", "connect-timeout"), kind=int,
         help="Specifies default connection timeout, in seconds."),
)


class DeployProgram(Program):
    """fabric's `Fab` program (its core flags, its Config, its -i/-S/-t handling) plus
    our tasks and syntax. It is Fab's behaviour on invoke's Program rather than a
    subclass of Fab, so that listing and parsing never import paramiko: the
    Config becomes a `fabric.Config` in `update_config`, just before tasks run."""

    def __init__(self):
        super().__init__(name="deploytools", binary="deploytools", binary_names=["deploytools"],
                         version=__version__, executor_class=invoke.Executor,
                         config_class=ParseConfig)
        self._debug = False

    def print_version(self):
        super().print_version()  # "deploytools X"
        print(f"Paramiko {paramiko.__version__}")
        print(f"Invoke {invoke.__version__}")
        print(f"Fabric {fabric.__version__}")

    @property
    def _remainder_only(self):  # fabric's `fab -H x -- command`: no tasks, a remainder
        return (not self.core.unparsed and self.core.remainder
                and not self.args.complete.value)

    def no_tasks_given(self):
        if not self._remainder_only:
            super().no_tasks_given()

    def create_config(self):
        # As Fab: lazy, then the system/user conf files (fabric.yaml), merged.
        self.config = self.config_class(lazy=True)
        self.config.load_base_conf_files()
        self.config.merge()

    def update_config(self):
        """invoke's runtime and override levels, then what Fab adds: the config becomes a
        fabric Config (SSH config files, -S), -i identities, -t timeout, the prompts."""
        super().update_config(merge=False)
        self.config = self.config.clone(into=fabric.Config)
        self.config.set_runtime_ssh_path(self.args["ssh-config"].value)
        self.config.load_ssh_config()
        connect_kwargs = {}
        paths = self.args["identity"].value
        if paths:
            connect_kwargs["key_filename"] = paths
            self.config._overrides["authentication"] = dict(identities=[Path(x) for x in paths])
        timeout = self.args["connect-timeout"].value
        if timeout:
            connect_kwargs["timeout"] = timeout
        if self.args["prompt-for-login-password"].value:
            connect_kwargs["password"] = getpass.getpass(
                "Enter login password for use with SSH auth: ")
        if self.args["prompt-for-passphrase"].value:
            connect_kwargs["passphrase"] = getpass.getpass(
                "Enter passphrase for use unlocking SSH keys: ")
        self.config._overrides["connect_kwargs"] = connect_kwargs
        self.config.merge()

    def parse_core(self, *args, **kwargs):
        super().parse_core(*args, **kwargs)
        if self.args["list-agent-keys"].value:
            for key in paramiko.Agent().get_keys():
                print(f"{key.get_bits()} {key.fingerprint} {key.comment} ({key.algorithm_name})")
            raise Exit

    def core_args(self):
        return super().core_args() + [Argument(**spec) for spec in FABRIC_CORE_ARGS] + [
            Argument(names=("json",), kind=bool,
                     help="Print one JSON event per line (for CI). Env: DEPLOYTOOLS_JSON=1."),
            Argument(names=("services",), help="Path to services.yaml (default: ./services.yaml, "
                                               "or $DEPLOYTOOLS_CONFIG)."),
            Argument(names=("lock-wait",), kind=float, default=0.0,
                     help="Seconds to wait for another deploy's lock before giving up."),
            Argument(names=("stage",), help="Stage from services.yaml's stages: (default: "
                                            "production, or $DEPLOYTOOLS_STAGE)."),
        ]

    def normalize_argv(self, argv):
        super().normalize_argv(argv)
        flags, hosts, rest = extract_globals(self.argv[1:])
        self._debug = "--debug" in flags or "-d" in flags
        self.argv = [self.argv[0]] + flags + hosts + rest

    def parse_tasks(self):
        self.core.unparsed = rewrite_classic(self.core.unparsed, self.collection)
        super().parse_tasks()

    def load_collection(self):
        if self._remainder_only:  # as Fab: nothing to load for `-- command`
            self.collection = Collection()
            return
        ours = Collection.from_module(our_tasks, auto_dash_names=self.config.tasks.auto_dash_names)
        try:
            super().load_collection()  # the fabfile above the working directory, if any
        except Exit:
            self.collection = ours
            return
        except Exception as e:  # the user's fabfile raised while being imported
            raise UsageError(f"the fabfile found from {os.getcwd()} could not be loaded "
                             f"({type(e).__name__}: {e}). Fix it, or run deploytools from a "
                             "directory without one; --debug shows the traceback.") from e
        self.collection, replaced = merge_collections(ours, self.collection)
        if replaced:
            names = ", ".join(replaced)
            print(f"deploytools: your fabfile's {names} replace{'s' if len(replaced) == 1 else ''} "
                  f"ours of the same name (ours: from deploytools.tasks import "
                  f"{', '.join(n.replace('-', '_') for n in replaced)})", file=sys.stderr)

    def execute(self):
        json_mode = bool(self.args["json"].value) or \
            (os.environ.get("DEPLOYTOOLS_JSON") or "").lower() in _TRUE
        session_ = session.Session(config_path=self.args["services"].value
                          or os.environ.get("DEPLOYTOOLS_CONFIG"),
                          json_mode=json_mode, debug=self._debug,
                          stage=self.args["stage"].value or os.environ.get("DEPLOYTOOLS_STAGE")
                          or None,
                          lock_wait=float(self.args["lock-wait"].value or 0))
        # In the context every task receives: ours, and the user's tasks that call ours.
        session.attach(self.config, session_)
        try:
            super().execute()
        finally:
            session_.close()  # one connection per host for the whole command line

    def run(self, argv=None, exit=True):
        try:
            self.create_config()
            try:
                self.parse_core(argv)
                self.parse_collection()
                self.parse_tasks()
            except ValueError as e:  # invoke casting a value: --lock-wait abc, limit=abc
                raise ParseError(f"a value on the command line has the wrong type ({e})") from None
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as e:
            _fail(f"{str(e).rstrip('.!')}. Run `deploytools --list` for the tasks and "
                  "`deploytools --help TASK` for one task's arguments.", EXIT_USAGE)
        except Exit as e:
            if e.message:
                print(e.message, file=sys.stderr)
            sys.exit(e.code)
        except UnexpectedExit as e:
            _fail(str(e), 1)
        except DeployError as e:
            if self._debug:
                traceback.print_exc()
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as e:  # a bug of ours: say so, keep the traceback for --debug
            if self._debug:
                raise
            _fail(f"internal error: {type(e).__name__}: {e}. Rerun with --debug for the "
                  "traceback, and report it.", 1)


def _fail(message: str, code: int):
    # What a host printed may be in the message.
    print(f"Error: {redact(message)}", file=sys.stderr)
    sys.exit(code)


program = DeployProgram()


class _Stdout:
    """sys.stdout until its reader goes away (`deploytools history:x | head`, a CI log
    shipper that died): from then on what is written is dropped, and the command goes
    on to its end and its exit status, as if nobody had been reading. A deploy does not
    stop half-way (nor fail as an internal error) because its output has no reader."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)
        try:
            self._stream.flush()  # what was buffered goes nowhere, not back here
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main():
    if not isinstance(sys.stdout, _Stdout) and sys.stdout is not None:
        sys.stdout = _Stdout(sys.stdout)
    try:
        program.run()
        status = 0
    except SystemExit as e:  # every exit of ours: sys.exit(code)
        status = e.code
    _exit(status)


def _exit(status) -> None:
    """Exit with `status` (as sys.exit takes it) once everything is said, without
    Python's teardown of the modules (paramiko, git, Jinja2, requests...), which took
    45 to 50 ms of every command (a deploy's connections and the lock are closed
    already: `Session.close`). The atexit functions run first, a fabfile's included,
    and the standard streams are flushed. While another thread that Python waits for
    runs (a fabfile's own), exit as Python does, which waits for it."""
    if not isinstance(status, int):
        if status is not None:
            print(status, file=sys.stderr)
        status = 0 if status is None else 1
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone (| head)
            pass
    os._exit(status)


if __name__ == "__main__":
    main()
