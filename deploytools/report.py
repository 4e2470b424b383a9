"""Progress output: human lines on a terminal, one JSON event per line for CI.

Library code reports events; it never prints directly.
"""
from __future__ import annotations

import json
import sys
import threading
import time


# How a secret's value is shown.
REDACTED = "<secret>"

# Every secret value this process read (config.secrets.resolve tells `hide`), longest
# first: `redact` replaces them in what hosts print (a pip error, a hook's output)
# before it is shown, in the events, the error and the history.
_hidden: list[str] = []
_hidden_lock = threading.Lock()


def hide(value: str) -> None:
    """From now on, show `value` as `<secret>`."""
    if len(value) < 4:  # `1` or `yes` would garble every line; nor would it stay secret
        return
    with _hidden_lock:
        if value not in _hidden:
            _hidden.append(value)
            _hidden.sort(key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every hidden value replaced by `<secret>`."""
    for value in _hidden:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_json(text: str) -> str:
    """`redact` for JSON text, where a value may be escaped (a quote, a backslash)."""
    for value in _hidden:
        for form in {value, json.dumps(value)[1:-1]}:
            if form in text:
                text = text.replace(form, REDACTED)
    return text


class Reporter:
    def __init__(self, *, json_mode: bool = False, stream=None, quiet: bool = False):
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def event(self, kind: str, message: str = "", **fields) -> None:
        """One progress event. `message` is the human line; fields go to JSON. A
        secret's value (a host may print one) is shown as `<secret>`."""
        with self._lock:
            if self.json_mode:
                record = {"event": kind, "t": round(time.monotonic() - self.started, 3), **fields}
                if message:
                    record["message"] = message
                self.stream.write(redact_json(json.dumps(record, default=str)) + "\n")
            elif message and not self.quiet:
                self.stream.write(redact(message) + "\n")
            self.stream.flush()

    def table(self, rows: list[dict], columns: list[str]) -> None:
        """Print rows as an aligned table (human mode only)."""
        if self.json_mode or not rows:
            return
        widths = {c: max(len(c), *(len(str(r.get(c, "") or "")) for r in rows)) for c in columns}
        lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
        for r in rows:
            lines.append("  ".join(str(r.get(c, "") or "-").ljust(widths[c]) for c in columns))
        with self._lock:
            self.stream.write("\n".join(line.rstrip() for line in lines) + "\n")
            self.stream.flush()
