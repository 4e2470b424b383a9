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

import os
import re
import sys
import traceback

import invoke
from fabric import Config as FabricConfig
from fabric.main import Fab
from invoke import Argument, Collection
from invoke.exceptions import Exit, ParseError, UnexpectedExit

from . import __version__
from . import tasks as our_tasks
from .booleans import FALSE as _FALSE, TRUE as _TRUE
from .errors import DeployError, EXIT_USAGE, UsageError
from .session import Session, attach

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


class DeployProgram(Fab):
    def __init__(self):
        super().__init__(name="deploytools", binary="deploytools", binary_names=["deploytools"],
                         version=__version__, executor_class=invoke.Executor,
                         config_class=FabricConfig)
        self._debug = False

    def print_version(self):
        super().print_version()  # "deploytools X", then Paramiko's and Invoke's
        import fabric
        print(f"Fabric {fabric.__version__}")

    def core_args(self):
        return super().core_args() + [
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
        session = Session(config_path=self.args["services"].value
                          or os.environ.get("DEPLOYTOOLS_CONFIG"),
                          json_mode=json_mode, debug=self._debug,
                          stage=self.args["stage"].value or os.environ.get("DEPLOYTOOLS_STAGE")
                          or None,
                          lock_wait=float(self.args["lock-wait"].value or 0))
        # In the context every task receives: ours, and the user's tasks that call ours.
        attach(self.config, session)
        try:
            super().execute()
        finally:
            session.close()  # one connection per host for the whole command line

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
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)


program = DeployProgram()


def main():
    program.run()


if __name__ == "__main__":
    main()
