"""What one probe of one replica found: passed, or how it failed.

How it failed decides more than whether: a replica that answers, but not well (a 503 while it
warms up or loses its database, a timeout, a reset), fails *readiness* and is only taken out
of the data plane; one that no longer listens on its port at all (connection refused, no
listening socket) fails *liveness* too, and is replaced after the grace period unless it
comes back (verdicts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Failure(StrEnum):
    STATUS = "status"  # an HTTP answer outside the accepted range
    TIMEOUT = "timeout"  # no connection or no answer within the probe's timeout
    REFUSED = "refused"  # nothing listens (a reset to the SYN)
    RESET = "reset"  # the connection was reset or closed before an answer
    BAD_ANSWER = "bad-answer"  # something that is not HTTP
    NO_LISTENER = "no-listener"  # ebpf mode: no listening socket on the port
    JOINING = "joining"  # ebpf mode: it listens; its socket joins the socket map next pass
    UNSETTLED = "unsettled"  # the bridge's IPv6 address is still tentative (DAD)
    ERROR = "error"  # any other error (detail says which)


# The replica's process does not listen on its port: not only unready, not alive either.
LIVENESS = frozenset({Failure.REFUSED, Failure.NO_LISTENER})


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    failure: Failure | None = None
    status: int | None = None  # the HTTP status, when there was one
    detail: str = ""
    seconds: float = 0.0  # how long the probe took

    @property
    def line(self) -> str:
        """One line for `status` and the logs: "503 on /ready", "timeout: no answer in 1s"."""
        if self.ok:
            return "ok"
        assert self.failure is not None
        return f"{self.failure}: {self.detail}" if self.detail else str(self.failure)

    def to_json(self) -> dict[str, Any]:
        return {"reason": str(self.failure) if self.failure else None, "status": self.status,
                "message": self.line}


OK = ProbeResult(True)


def failed(failure: Failure, detail: str = "", status: int | None = None) -> ProbeResult:
    return ProbeResult(False, failure, status, detail)
