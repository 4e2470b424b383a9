"""What one `fab` command line shares between its tasks: config, host selection, output."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import config as config_mod
from .errors import UsageError
from .report import Reporter


@dataclass
class Session:
    config_path: str | None = None
    json_mode: bool = False
    debug: bool = False
    lock_wait: float = 0.0
    selected: list[str] | None = None  # set by the `host` task
    reporter: Reporter = field(default=None)  # type: ignore[assignment]
    _config: object = None

    def __post_init__(self):
        if self.reporter is None:
            self.reporter = Reporter(json_mode=self.json_mode)

    @property
    def config(self):
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    def select(self, spec: str) -> list[str]:
        names = self.config.select_hosts(spec)
        self.selected = list(dict.fromkeys((self.selected or []) + names))
        return names

    def hosts_for(self, service) -> list[str]:
        """The hosts a task acts on: the `host` selection (which must belong to the
        service), else every host of the service, in the service's order."""
        if not self.selected:
            return list(service.hosts)
        foreign = [h for h in self.selected if h not in service.hosts]
        if foreign:
            raise UsageError(
                f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a host of "
                f"{service.name} (its hosts: {', '.join(service.hosts)}). Pick hosts from that "
                "list, or add them to the service's role in services.yaml.")
        return [h for h in service.hosts if h in self.selected]


_current: Session | None = None


def current() -> Session:
    """The session of this process (created by the CLI; a default one for library use)."""
    global _current
    if _current is None:
        _current = Session(config_path=os.environ.get("DEPLOYTOOLS_CONFIG"))
    return _current


def begin(**kwargs) -> Session:
    global _current
    _current = Session(**kwargs)
    return _current
