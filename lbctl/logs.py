"""Logs: one event a line, with app and replica fields.

On a terminal a readable line; under systemd (JOURNAL_STREAM is set) no timestamp (journald
adds its own) and the syslog priority prefix `<N>` so `journalctl -p warning` works.
"""

from __future__ import annotations

import logging
import os
import sys

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class EventFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        msg = record.getMessage()
        parts = [f"{k}={_quote(v)}" for k, v in sorted(fields.items())]
        line = " ".join([f"msg={_quote(msg)}", *parts])
        if record.exc_info:
            line += " error=" + _quote(self.formatException(record.exc_info).replace("\n", " | "))
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{record.levelname.lower()} {line}"
        ts = self.formatTime(record, "%H:%M:%S")
        return f"{ts} {record.levelname.lower():<7} {line}"


def _quote(v: object) -> str:
    s = str(v)
    if s and not any(c in s for c in ' "=\t\n'):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
