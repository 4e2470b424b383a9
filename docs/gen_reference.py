"""Writes docs/services-reference.md from the declarations in deploytools/config/model.py.

    python docs/gen_reference.py           # rewrite docs/services-reference.md
    python docs/gen_reference.py --check   # exit 1 if the committed file is out of date

Outside the runtime package, as gunicorn's docs/gunicorn_ext.py: the tool never needs
the prose below. tests/unit/test_config.py checks that the committed file is current.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

from deploytools.config import (
    DEFAULTABLE, GATE, HEALTH, HOOK, HOOK_POINTS, HOST, HOST_NAME_RULE, LB, MIGRATIONS, SERVICE,
    SERVICE_NAME_RULE, SSH, STAGE, TOP,
    Setting,
)
from deploytools.config.declare import nonblank

OUTPUT = Path(__file__).resolve().parent / "services-reference.md"

_REFERENCE_INTRO = """\
# services.yaml reference

Generated from the declarations in `deploytools/config/model.py` by
`python docs/gen_reference.py`; edit the declarations, not this file.

General rules:

- Unknown keys are errors (with a "did you mean"), and so are duplicate keys:
  YAML itself would silently keep the last one.
- Types are exact: `port: "8000"` is a string, not an integer, and
  `local: "true"` is not a boolean. A string setting takes any scalar as
  written (`branch: 1.10` is the branch `1.10`).
- An empty value (`key:` or `null`) is an error, except for settings whose
  default is unset (they stay unset), `requirements` (no requirements file)
  and the `health`, `gate`, `migrations`, `defaults`, `roles`, `ssh` and `env` mappings
  (empty).
- Paths on this machine (a local `repo`, `ssh.known_hosts`, identity
  files, a local host's `root`) expand `~`, and a relative one is resolved
  against the directory of services.yaml.
- Two services may not use the same port on the same host (nor on two local
  hosts that share an address).
- A service's keys come from the service, else from `defaults:`, else from
  the default below; `health`, `gate` and `migrations` are merged key by key.
- The file is `./services.yaml`, or the path in `$DEPLOYTOOLS_CONFIG`.
"""


_KINDS_DOC = """\
## Kinds

Every kind goes through the same pipeline (stage on every host, then canary,
half, rest with a readiness probe and an error-rate gate after each wave, and
an automatic rollback), and runs under the service's own supervisord.

- `django`, `flask`, `wsgi`: gunicorn serves `app` (`wsgi` is any WSGI
  callable, e.g. `dory.wsgi:application`). Staging builds the virtualenv and
  imports the app (`gunicorn --check-config`), so a release that cannot load
  never goes live; a new release is loaded with a graceful HUP.
  `command`, `build`, `build_inputs` and `build_outputs` are not allowed.
- `command`: any program that stays in the foreground and serves HTTP on
  `HOST:PORT`, e.g. a Java server:

      harbor:
        kind: command
        repo: git@git.example.com:ops/harbor.git
        role: web
        build: sh build.sh                    # javac + jar, while staging
        build_inputs: [src/, build.sh]        # what a smart deploy compares
        build_outputs: [build/]               # reused when those did not change
        command: java -jar build/harbor.jar   # from <dir>/current
        port: 8300
        health: {path: /healthz}

  `build` runs in each new release while staging; a failed build stops the
  deploy before any host switches. A new release restarts the program
  (`reload_signal: restart`, the default for this kind), unless you name the
  signal it reloads on. Readiness is the health probe (`health.timeout`, 30
  seconds by default for this kind); the gate counts the access lines the
  program prints (see `command`) plus its own probes. A smart deploy runs
  the build only when a file matching `build_inputs` changed since the live
  commit, and otherwise hard-links the live release's `build_outputs`
  (`build_reused` in the deploy history). `app`, `workers`, `migrate` and
  `collectstatic` are not allowed; `requirements`, if the repository has that
  file, still gets a virtualenv at `.deploy/venv`.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_cell(s: Setting) -> str:
    if s.doc_default is not None:
        return s.doc_default
    if s.required:
        return "**required**"
    if s.default is None:
        return "unset"
    if isinstance(s.default, bool):
        return "`true`" if s.default else "`false`"
    if isinstance(s.default, tuple):
        return f"`{json.dumps(list(s.default))}`"
    return f"`{json.dumps(s.default)}`"


def _table(settings: Mapping[str, Setting], mark_defaultable: bool = False) -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for s in settings.values():
        kind = s.type.name
        v = s.validator
        expect = re.sub(r"^an? ", "", getattr(v, "doc", None) or getattr(v, "expect", "") or "")
        if expect and s.validator is not nonblank:
            kind = expect if kind in expect else f"{kind}: {expect}"
        help_ = s.help + (" *Defaultable.*" if mark_defaultable and s.defaultable else "")
        rows.append(f"| `{s.name}` | {_cell(kind)} | {_cell(_default_cell(s))} | {_cell(help_)} |")
    return "\n".join(rows) + "\n"


def reference_markdown() -> str:
    """The reference tables of every services.yaml key, from the declarations."""
    parts = [
        _REFERENCE_INTRO,
        "## Top level\n", _table(TOP),
        "## `ssh:`\n", _table(SSH),
        "## `hosts.<name>:`\n", f"Host names {HOST_NAME_RULE}.\n", _table(HOST),
        "## `roles:`\n",
        "`<role>: [<host>, ...]`: each item a declared host, listed once. Role and host "
        "names are both accepted wherever hosts are selected (`fab host:web deploy:airship`).\n",
        "## `defaults:`\n",
        "Any service key marked *defaultable* below: "
        + ", ".join(f"`{k}`" for k in DEFAULTABLE) + ".\n",
        "## `services.<name>:`\n", f"{SERVICE_NAME_RULE[0].upper()}{SERVICE_NAME_RULE[1:]}.\n",
        _table(SERVICE, mark_defaultable=True),
        _KINDS_DOC,
        "## `health:` (in a service or in `defaults:`)\n", _table(HEALTH),
        "## `gate:` (in a service or in `defaults:`)\n",
        "After each wave the new hosts' error rate is compared with the old hosts' (the "
        "baseline) and with a ceiling; a fail rolls back every host the deploy touched. "
        "Every number of that decision is here.\n", _table(GATE),
        "## `lb:` (in a service or in `defaults:`)\n",
        "HAProxy in front of the service's hosts, driven through its runtime API (the admin "
        "socket, on the LB host, over SSH). Before a host is activated with a restart its "
        "server is set to `drain`, its current sessions are waited down to 0 (at most "
        "`drain_timeout`), and it is set back to `ready` once it serves; a host whose "
        "activation fails stays drained until it is restored and healthy. `status` shows "
        "each host's state in HAProxy. The whole `lb:` mapping is inherited from "
        "`defaults:` (not merged key by key).\n", _table(LB),
        "## `hooks:` (in a service or in `defaults:`)\n",
        "`<point>: [<hook>, ...]`, points: " + ", ".join(f"`{p}`" for p in HOOK_POINTS)
        + ". `before_stage` runs after the lock is taken, before any host is touched; "
        "`after_stage` once every host has the release staged; `before_wave` before the "
        "wave's hosts switch (warm a cache there); `after_wave` after the wave's gate passed "
        "(a smoke test); `after_deploy` once the deploy succeeded; `after_rollback` after "
        "hosts were rolled back (by a failed deploy or by `rollback`); `on_failure` when a "
        "deploy failed. A failing `before_*`, `after_stage` or `after_wave` hook fails the "
        "deploy like a failed gate: every host it touched is rolled back, exit 1, recorded in "
        "the history. A failing `after_deploy`, `after_rollback` or `on_failure` hook is a "
        "warning. Output is shown prefixed with the hook point (and host); Python callables "
        "registered with `deploytools.hooks.hook` run after these (see README).\n",
        _table(HOOK),
        "## `stages:`\n",
        "`<stage>: {...}`: selected by `deploytools stage:<stage> ...`, `--stage <stage>` or "
        "`DEPLOYTOOLS_STAGE`; without one, the stage is `production`: the file as written, plus "
        "the changes of a stage named `production` if one is declared. Every stage is checked "
        "whichever is selected, and two stages may not deploy a service into the same "
        "directory of the same machine (its lock, history and `current` live there).\n",
        _table(STAGE),
        "## `migrations:` (in a service or in `defaults:`; django only)\n",
        "Every deploy that runs `migrate` classifies the pending migrations' operations as "
        "expand (safe while the old code serves), contract (breaks it) or unknown, with "
        "Django's own migration loader in the new release (docs/design.md, \"Migrations in a "
        "rolling deploy\", has the table). A contract that is not post-deploy (`post_deploy "
        "= True` on the Migration, or `post_deploy_migrations:`) refuses the deploy with "
        "exit 2 unless force=true; post-deploy migrations run once after the last wave.\n",
        _table(MIGRATIONS),
    ]
    return "\n".join(parts)




def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = reference_markdown()
    if args == ["--check"]:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python docs/gen_reference.py [--check]", file=sys.stderr)
        return 2
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
