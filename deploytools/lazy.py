"""Modules imported on their first use, so that `deploytools --list` and parsing a
command line do not load the SSH stack, git, requests or Jinja2.

    operations = lazy.module("deploytools.operations")   # at module level only

The import happens at the first attribute access of the module (`operations.deploy`).
The stand-in is not the module: it only forwards attribute reads, so
`isinstance(x, Task)` over a module's names (invoke's `Collection.from_module`) does not
import it. tests/unit/test_layers.py counts such a line as an import of that module: it
must go down the module map like any other, and never sit inside a function.
"""
from __future__ import annotations

import importlib
import sys


class _Lazy:
    __slots__ = ("_name",)

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):  # only for names a _Lazy does not have itself
        name = object.__getattribute__(self, "_name")
        mod = sys.modules.get(name) or importlib.import_module(name)
        return getattr(mod, attr)

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_name')!r}>"


def module(name: str):
    """A stand-in for module `name` that imports it on its first attribute read."""
    return _Lazy(name)
