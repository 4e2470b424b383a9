"""services.yaml -> a typed, validated, immutable model.

    declare.py    how a key is declared: Setting, types, validators, `setting()`
    model.py      the model: each key once, as a field of Ssh, Host, Health, Gate,
                  Service or Config carrying its Setting
    yamllines.py  YAML whose mappings know their lines; duplicate keys and
                  runaway nesting are errors
    reader.py     YAML tree -> model, each failure a ConfigError with file:line;
                  `load` and `parse`

The reference (docs/services-reference.md) is generated from the model by
docs/gen_reference.py. `python -m deploytools.config --check FILE` checks a file.
"""
from .declare import REQUIRED, Setting, Type, settings_of
from .model import (
    DEFAULTABLE, GATE, HEALTH, HEALTH_TIMEOUT_DEFAULT, HOST, HOST_NAME, HOST_NAME_RULE, KINDS,
    LB, MIGRATIONS, SOCKET_MODES, Lb, RELOAD_DEFAULT, RELOAD_SIGNALS, SERVICE, SERVICE_NAME, SERVICE_NAME_RULE, SSH, TOP,
    WSGI_KINDS, Config, FrozenMap, Gate, Health, Host, Service, Ssh,
)
from .model import HOOK, HOOK_PLACES, HOOK_POINTS, PRODUCTION, STAGE, Hook, Stage
from .reader import DEFAULT_PATH, ENV_VAR, load, parse

__all__ = [
    "DEFAULTABLE", "DEFAULT_PATH", "ENV_VAR", "GATE", "HEALTH", "HEALTH_TIMEOUT_DEFAULT", "HOST",
    "HOST_NAME", "HOST_NAME_RULE", "KINDS", "LB", "MIGRATIONS", "Lb", "SOCKET_MODES", "RELOAD_DEFAULT", "RELOAD_SIGNALS", "REQUIRED",
    "SERVICE", "SERVICE_NAME", "SERVICE_NAME_RULE", "SSH", "TOP", "WSGI_KINDS", "Config",
    "FrozenMap", "Gate", "Health", "Host", "Service", "Setting", "Ssh", "Type", "load", "parse",
    "settings_of", "HOOK", "HOOK_PLACES", "HOOK_POINTS", "PRODUCTION", "STAGE", "Hook", "Stage",
]
