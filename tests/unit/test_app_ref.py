"""`app:` takes exactly what gunicorn takes (gunicorn.util.import_app), checked without
importing the app: the table below is also run through gunicorn itself, so the two
rules cannot drift apart."""
from __future__ import annotations

import sys
import types

import pytest
from gunicorn.errors import AppImportError
from gunicorn.util import import_app

from deploytools.config.declare import app_ref

ACCEPTED = [
    "airship.wsgi:application",
    "app:app",
    "airship.wsgi",  # gunicorn's default object: application
    "flaskr:create_app()",
    "flaskr:create_app( )",
    "flaskr:create_app('production')",
    'flaskr:create_app("production", debug=False)',
    "flaskr:create_app(1, -2, 3.5, None, True, b'x')",
    "flaskr:create_app([1, 2], {'a': (1, 2)}, {3})",
    "flaskr:create_app(config={'DEBUG': False})",
    "flaskr:create_app(1,)",
    "_p.m_2:_factory_9()",
    "wsgi.py",  # a module `py` in a package `wsgi`, as far as a name can tell
]

REFUSED = [
    # (value, fragment of the message)
    ("flaskr:create_app(os.environ)", "must be Python literals"),
    ("flaskr:create_app(x)", "must be Python literals"),
    ("flaskr:create_app(f())", "must be Python literals"),
    ("flaskr:create_app(*[1])", "must be Python literals"),
    ("flaskr:create_app(1 + x)", "must be Python literals"),
    ("flaskr:create_app(**{'a': 1})", "name each keyword argument"),
    ("flaskr:factories.create_app()", "function must be a simple name"),
    ("flaskr:create_app()()", "function must be a simple name"),
    ("airship.wsgi:app.wsgi_app", "must be a name in the module or a call"),
    ("airship.wsgi:apps[0]", "must be a name in the module or a call"),
    ("airship.wsgi:'app'", "must be a name in the module or a call"),
    ("airship.wsgi:a if b else c", "must be a name in the module or a call"),
    ("flaskr:create_app(", "cannot parse"),
    ("flaskr:", "cannot parse"),
    ("flaskr: app", "cannot parse"),  # leading space: an indentation error
    ("flaskr:app; import os", "cannot parse"),
    ("flaskr:lambda: 1", "must be a name in the module or a call"),
    ("flaskr:create_app(\n)", "on one line"),
    (":app", "is not a module name"),
    ("airship/wsgi.py:app", "Did you mean 'airship.wsgi:app'?"),
    ("wsgi.py/", "is not a module name"),
    ("air ship:app", "is not a module name"),
    (".wsgi:app", "is not a module name"),
    ("1st:app", "is not a module name"),
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_accepted(value):
    app_ref(value)


@pytest.mark.parametrize("value,fragment", REFUSED, ids=[v for v, _ in REFUSED])
def test_refused_with_a_message_that_says_why(value, fragment):
    with pytest.raises(ValueError) as info:
        app_ref(value)
    assert fragment in str(info.value)
    assert "module:factory()" in str(info.value)  # and what would be accepted


def _fake_module(monkeypatch, name):
    """A module with the objects the refs name, importable by gunicorn."""
    def factory(*args, **kwargs):
        return lambda environ, start_response: None

    for part in range(1, name.count(".") + 2):
        dotted = ".".join(name.split(".")[:part])
        mod = types.ModuleType(dotted)
        mod.__path__ = []  # a package, so that its submodules import
        mod.application = mod.app = mod.apps = mod.a = factory()
        mod.create_app = mod._factory_9 = factory
        mod.__spec__ = None
        monkeypatch.setitem(sys.modules, dotted, mod)


def _module(value):
    return value.partition(":")[0]


@pytest.mark.parametrize("value", ACCEPTED)
def test_gunicorn_accepts_what_we_accept(monkeypatch, value):
    _fake_module(monkeypatch, _module(value))
    assert callable(import_app(value))


# The refused refs whose module part is a real module name: gunicorn gets as far as
# parsing the object, and refuses it as we do (the others fail its import).
PARSED_BY_GUNICORN = [v for v, _ in REFUSED
                      if _module(v) and all(p.isidentifier() for p in _module(v).split("."))
                      and "\n" not in v and "**" not in v]


@pytest.mark.parametrize("value", PARSED_BY_GUNICORN)
def test_gunicorn_refuses_what_we_refuse(monkeypatch, value):
    _fake_module(monkeypatch, _module(value))
    with pytest.raises(AppImportError):
        import_app(value)


def test_the_table_reaches_gunicorn_for_most_refusals():
    assert len(PARSED_BY_GUNICORN) >= 15
