"""The readiness probe users set on an app: how lbctl asks each replica whether it answers
before (and while) the data plane sends it new connections.

Two kinds, as Kubernetes' readinessProbe: an HTTP GET of `path` on the replica's container
port (`--ready-path`), ready when the status is in `status` (200-399 by default, Kubernetes'
range), or without a path a TCP check (iptables mode: a connect to the replica's address;
ebpf mode: its listening socket in the app's socket map). A replica is ready after
`success_threshold` passing probes in a row and out of the data plane after
`failure_threshold` failing ones; probes are `interval` apart and each may take `timeout`.

Part of the spec (lbctl.model.spec), not of its template, like the update policy: a replica is
not created from it (the daemon probes from outside), so changing it alone restarts nothing
and takes effect at the next probe.

Why these defaults: a replica that starts failing must leave the data plane within a second
(Kubernetes' default period, 10 s, would leave it serving errors for 30 s): 3 failures 0.25 s
apart take it out within 0.75 s, and 3 (Kubernetes' failureThreshold) rather than 1 keep one
slow answer (a GC pause, a busy host) from being a verdict. A probe is one small request per
replica on the host itself, four a second. The timeout is Kubernetes' (1 s): a health path
slower than that under load is the app's to fix or to raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from lbctl.model.errors import InvalidInput

_PATH_RE = re.compile(r"^/[\x21-\x7e]{0,1023}\Z")
_HOST_RE = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,255}\Z")
_STATUS_RE = re.compile(r"^([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?\Z")
MAX_THRESHOLD = 100


@dataclass(frozen=True)
class ReadinessProbe:
    path: str | None = None  # HTTP GET of this path; None: TCP
    status: tuple[int, int] = (200, 399)  # ready answers, both ends included
    host: str | None = None  # Host header; None: "localhost"
    interval: float = 0.25  # seconds between two probes of a replica
    timeout: float = 1.0  # seconds one probe may take (connect and answer)
    failure_threshold: int = 3  # failed probes in a row that take a ready replica out
    success_threshold: int = 1  # passing probes in a row that put a replica in

    @property
    def kind(self) -> str:
        return "http" if self.path is not None else "tcp"

    @property
    def host_header(self) -> str:
        return self.host or "localhost"

    def accepts(self, status: int) -> bool:
        return self.status[0] <= status <= self.status[1]

    def status_text(self) -> str:
        lo, hi = self.status
        return str(lo) if lo == hi else f"{lo}-{hi}"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status_text(), "host": self.host,
                "interval": self.interval, "timeout": self.timeout,
                "failure_threshold": self.failure_threshold,
                "success_threshold": self.success_threshold}

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as JSON (what an export writes)."""
        default = ReadinessProbe().to_json()
        return {k: v for k, v in self.to_json().items() if v != default[k]}

    @classmethod
    def from_json(cls, data: object) -> ReadinessProbe:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInput("readiness must be an object (path, interval, ...)")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(
                f"unknown readiness field(s): {', '.join(sorted(map(str, unknown)))} "
                f"(use {', '.join(sorted(known))})"
            )
        return cls().merged(data)

    def merged(self, data: dict[str, Any]) -> ReadinessProbe:
        """This probe with the fields `data` names replaced (validated); `null` or "" as
        path or host: back to TCP, back to the default Host."""
        d: dict[str, Any] = {}
        if "path" in data:
            d["path"] = parse_path(data["path"])
        if "status" in data:
            d["status"] = parse_status(data["status"])
        if "host" in data:
            d["host"] = _host(data["host"])
        if "interval" in data:
            d["interval"] = _seconds(data["interval"], "interval", 0.05)
        if "timeout" in data:
            d["timeout"] = _seconds(data["timeout"], "timeout", 0.05)
        for key in ("failure_threshold", "success_threshold"):
            if key in data:
                d[key] = _count(data[key], key)
        return replace(self, **d)


def parse_path(v: object) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str) or not _PATH_RE.match(v):
        raise InvalidInput(f"readiness path must start with / and hold no space or control "
                           f"character (at most 1024), not {v!r}")
    return v


def parse_status(v: object) -> tuple[int, int]:
    """"200-399", "204" or 204: the status codes that count as ready."""
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    m = _STATUS_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidInput(f"readiness status must be a code or a range of codes "
                           f"(e.g. 200-399), not {v!r}")
    lo, hi = int(m[1]), int(m[2] or m[1])
    if lo > hi:
        raise InvalidInput(f"readiness status range {v!r} is empty")
    return lo, hi


def _host(v: object) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str) or not _HOST_RE.match(v):
        raise InvalidInput(f"readiness host must be a host name or address (and port), "
                           f"not {v!r}")
    return v


def _seconds(v: object, key: str, minimum: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not minimum <= v <= 3600:
        raise InvalidInput(f"readiness {key} must be a number of seconds from {minimum:g} to "
                           f"3600, not {v!r}")
    return float(v)


def _count(v: object, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_THRESHOLD:
        raise InvalidInput(f"readiness {key} must be a whole number from 1 to "
                           f"{MAX_THRESHOLD}, not {v!r}")
    return v

