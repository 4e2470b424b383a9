"""What one command line shares between its tasks: config, host selection, output,
and one connection per host.

The session travels in invoke's context (`c.config.deploytools.session`), not in
a module global: the `deploytools` program puts it there before the first task,
so a user's fabfile task that calls ours (`deploy(c, "airship")`) acts on the
same host selection, output mode, lock wait and connections; two programs in
one process (the tests) each have their own.
"""
from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, field

from . import config as config_mod
from .booleans import TRUE
from .errors import UsageError
from .inventory import Fleet, Pool
from .report import Reporter

@dataclass(eq=False)
class Session:
    config_path: str | None = None
    json_mode: bool = False
    debug: bool = False
    lock_wait: float = 0.0
    selected: list[str] | None = None  # set by the `host` task
    stage: str | None = None  # --stage, DEPLOYTOOLS_STAGE or the `stage` task; None: production
    reporter: Reporter = field(default=None)  # type: ignore[assignment]
    _config: object = None
    _pool: Pool = field(default_factory=Pool, repr=False)

    def __post_init__(self):
        if self.reporter is None:
            self.reporter = Reporter(json_mode=self.json_mode)

    # invoke copies config values (copy.copy) when it merges its levels: a
    # session is one per command line and must stay the same object.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    @classmethod
    def from_env(cls, **kwargs) -> "Session":
        """A session configured by the environment: DEPLOYTOOLS_CONFIG, DEPLOYTOOLS_JSON,
        DEPLOYTOOLS_STAGE."""
        kwargs.setdefault("config_path", os.environ.get("DEPLOYTOOLS_CONFIG"))
        kwargs.setdefault("stage", os.environ.get("DEPLOYTOOLS_STAGE") or None)
        kwargs.setdefault("json_mode", (os.environ.get("DEPLOYTOOLS_JSON") or "").lower() in TRUE)
        return cls(**kwargs)

    @property
    def config(self):
        if self._config is None:
            self._config = config_mod.load(self.config_path, stage=self.stage)
        return self._config

    def select_stage(self, name: str) -> str:
        """Make `name` the stage of the tasks after it (`stage:staging deploy:airship`)."""
        if not name or not name.strip():
            raise UsageError("stage needs a name, e.g. deploytools stage:staging deploy:SERVICE.")
        if name != self.stage:
            self.stage = name
            self._config = None  # connections are per host settings: the pool still serves
        return self.config.stage  # loads it: an unknown stage fails here, not later

    def fleet(self, names) -> Fleet:
        """The targets for `names`, connected once per host for the whole command line
        (closing the Fleet leaves the connections open; `close()` ends them)."""
        return Fleet(self.config, names, pool=self._pool)

    def close(self) -> None:
        """Close every connection this session opened."""
        self._pool.close()

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


_ATTACH = threading.Lock()


def attach(c_or_config, session: Session) -> Session:
    """Make `session` the session of an invoke context (or config) and return it."""
    config = getattr(c_or_config, "config", c_or_config)
    config.deploytools = {"session": session}  # a modification: kept across invoke's merges
    return session


def of(c) -> Session:
    """The session of invoke context `c`. Under the `deploytools` program it is the
    one the program made; under another program (fabric's own `fab` running a
    fabfile that imports our tasks) the first task makes one from the environment
    and the later tasks of the same command line share it."""
    with _ATTACH:
        try:
            found = c.config.deploytools.session
        except (AttributeError, KeyError):
            found = None
        if isinstance(found, Session):
            return found
        session = Session.from_env()
        atexit.register(session.close)  # nobody else will: that program does not know us
        return attach(c, session)
