"""`lbctl logs`: the daemon's stream of an app's output, printed as `docker compose logs`
prints a project's: each line after its container's name and a bar, names aligned and, on
a terminal, each container in a color of its own. Adopted containers are marked `*`.

Notices go to stderr, so that stdout holds nothing but the app's lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from lbctl.api.client import Client, DaemonUnavailable
from lbctl.model.log_lines import parse_since, parse_tail, since_param

# compose's: the six basic colors, then their bright versions (no red: it reads as an error).
COLORS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")


def query(follow: bool, since: str | None, tail: str, replica: str | None) -> dict[str, str]:
    """The request's parameters; InvalidInput (exit 2) before anything is asked. A time
    without a zone is the caller's local time, so --since is resolved here."""
    params = {"follow": "1"} if follow else {}
    if parse_tail(tail) is not None:
        params["tail"] = tail.strip()
    if since is not None:
        params["since"] = since_param(parse_since(since, time.time_ns()))
    if replica is not None:
        params["replica"] = replica
    return params


class Printer:
    def __init__(self, out: TextIO, color: bool, timestamps: bool) -> None:
        self.out = out
        self.color = color
        self.timestamps = timestamps
        self.labels: dict[str, str] = {}  # name -> what the prefix shows
        self.colors: dict[str, str] = {}
        self.width = 0

    def add(self, sources: list[dict[str, Any]]) -> None:
        for s in sources:
            name = str(s["replica"])
            if name not in self.labels:
                self.labels[name] = name + ("*" if s.get("adopted") else "")
                self.colors[name] = COLORS[len(self.colors) % len(COLORS)]
                self.width = max(self.width, len(self.labels[name]))

    def format(self, record: dict[str, Any]) -> str:
        name = str(record["replica"])
        if name not in self.labels:
            self.add([record])
        prefix = f"{self.labels[name]:<{self.width}} |"
        if self.color:
            prefix = f"\033[{self.colors[name]}m{prefix}\033[0m"
        stamp = f"{record['time']} " if self.timestamps else ""
        return f"{prefix} {stamp}{record['line']}"


async def logs(sock: Path, name: str, params: dict[str, str], timestamps: bool,
               color: bool) -> int:
    """Prints until the stream ends: at once without follow; following, when the app is
    removed (0) or the daemon goes (1). An unreadable container is a line on stderr, and
    exit 1 once the rest is printed."""
    follow = "follow" in params
    printer = Printer(sys.stdout, color, timestamps)
    failed = removed = False
    async with Client(sock) as c:
        async for record in c.stream(f"/apps/{name}/logs?{urlencode(params)}"):
            if "line" in record:
                sys.stdout.write(printer.format(record) + "\n")
                if follow:
                    sys.stdout.flush()
            elif "replicas" in record:
                printer.add(record["replicas"])
            elif record.get("event") == "joined":
                printer.add([record])
            elif record.get("event") == "error":
                sys.stdout.flush()
                print(f"lbctl: {record.get('replica')}: {record.get('error')}", file=sys.stderr)
                failed = True
            elif record.get("event") == "removed":
                removed = True
    sys.stdout.flush()
    if removed:
        print(f"{name}: removed", file=sys.stderr)
        return 0
    if follow:
        raise DaemonUnavailable("the daemon ended the log stream (it stopped or restarted): "
                                "run the command again")
    return 1 if failed else 0


__all__ = ["COLORS", "Printer", "logs", "query"]
