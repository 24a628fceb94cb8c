"""What an app's worker last saw and did, kept for `lbctl status` so a status request never
waits on the engine or on a pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lbctl.controller.planner import AppPlan
from lbctl.controller.readiness.verdicts import ProbeRecord
from lbctl.model import Container


@dataclass
class CrashReport:
    """A replica that exited before it was ready: the one line `run`/`update` fail with."""

    replica: str
    exit_code: int | None
    log: str
    at: float  # epoch seconds
    revision: int | None

    @property
    def line(self) -> str:
        code = f"exited with code {self.exit_code}" if self.exit_code is not None else "exited"
        return f"{self.replica} {code}" + (f": {self.log}" if self.log else "")

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "exit_code": self.exit_code, "log": self.log,
                "at": self.at, "revision": self.revision, "message": self.line}


@dataclass
class ReleaseReport:
    """The last release command the worker ran or watched: what `status` shows, and the one
    line a failed one fails its rollout (or a first `run`) with."""

    revision: int
    state: str  # running, succeeded, failed
    exit_code: int | None = None
    log: str = ""
    at: float = 0.0  # epoch seconds it started (running) or ended
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "state": self.state, "exit_code": self.exit_code,
                "log": self.log, "at": self.at, "message": self.message}


@dataclass
class AppView:
    """What the worker last saw and did: `status` reads it, never the engine."""

    containers: list[Container] = field(default_factory=list)
    plan: AppPlan = field(default_factory=AppPlan)
    in_dataplane: frozenset[str] = frozenset()
    planned_generation: int = -1
    error: str | None = None  # the app cannot run as specified (until its spec changes)
    # A replica create the members' policy refused (its bind source changed since the app
    # was accepted); cleared by the next create it allows.
    refused: str | None = None
    error_generation: int = -1
    pass_error: str | None = None  # the last pass failed (cleared by the next good one)
    last_event: str | None = None
    crash: CrashReport | None = None
    synced: bool = False  # one pass went through
    # container id -> its readiness record (the probes' own, live: a probe updates it).
    probes: Mapping[str, ProbeRecord] = field(default_factory=dict)
    holding: bool = False  # the data plane holds new connections (the traffic hold is in)
    held: int | None = None  # connections a hold container holds now (ebpf mode)
    release: ReleaseReport | None = None
