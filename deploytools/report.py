"""Progress output: human lines on a terminal, one JSON event per line for CI.

Library code reports events; it never prints directly.
"""
from __future__ import annotations

import json
import sys
import threading
import time


class Reporter:
    def __init__(self, *, json_mode: bool = False, stream=None, quiet: bool = False):
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self._lock = threading.Lock()
        self.started = time.monotonic()

    def event(self, kind: str, message: str = "", **fields) -> None:
        """One progress event. `message` is the human line; fields go to JSON."""
        with self._lock:
            if self.json_mode:
                record = {"event": kind, "t": round(time.monotonic() - self.started, 3), **fields}
                if message:
                    record["message"] = message
                self.stream.write(json.dumps(record, default=str) + "\n")
            elif message and not self.quiet:
                self.stream.write(message + "\n")
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
