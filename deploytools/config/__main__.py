"""`python -m deploytools.config --check [services.yaml]`: load a file, say what it holds."""
from __future__ import annotations

import sys
from typing import Sequence

from deploytools.errors import ConfigError

from . import load


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["--check"] or len(args) > 2:
        print("usage: python -m deploytools.config --check [services.yaml]", file=sys.stderr)
        return 2
    try:
        cfg = load(args[1] if len(args) == 2 else None)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{cfg.path}: ok: hosts {', '.join(cfg.hosts)}; roles {', '.join(cfg.roles) or '-'}; "
          f"services {', '.join(cfg.services)}"
          + (f"; stages {', '.join(cfg.stages)}" if cfg.stages else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
