"""What a run of probe answers means for a replica, and since when.

A replica is ready when its container runs, its engine health check (if the image has one)
says healthy, and it answers (readiness.answers). A ready replica that fails
`failures_to_unhealthy` probes in a row (two, 0.25 s apart by default) is unhealthy, which
takes it out of the data plane within a second. Each verdict keeps the time it was reached: a
rollout counts a new replica only once it stayed ready long enough, and an unhealthy one is
replaced after a grace period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lbctl.controller import clock
from lbctl.controller.interfaces import Answers
from lbctl.controller.planner import Probe
from lbctl.model import Container, ReplicaState
from lbctl.settings import ProbeSettings


@dataclass
class ProbeRecord:
    state: ReplicaState = ReplicaState.STARTING
    failures: int = 0
    checked_at: float | None = None  # clock time of the last probe
    since: float = 0.0  # clock time when `state` was reached


class Prober:
    """Keeps one verdict per container; `check` turns one probe result into a state."""

    def __init__(self, failures_to_unhealthy: int = ProbeSettings.failures_to_unhealthy,
                 now: Callable[[], float] = clock.monotonic) -> None:
        self.records: dict[str, ProbeRecord] = {}
        self.failures_to_unhealthy = failures_to_unhealthy
        self.now = now

    def state(self, container_id: str) -> ReplicaState | None:
        rec = self.records.get(container_id)
        return rec.state if rec else None

    def failing(self, container_id: str) -> bool:
        """The last probe failed (a verdict may be one probe away)."""
        rec = self.records.get(container_id)
        return rec is not None and rec.failures > 0

    def checked_at(self, container_id: str) -> float | None:
        rec = self.records.get(container_id)
        return rec.checked_at if rec else None

    def verdicts(self) -> dict[str, Probe]:
        return {cid: Probe(r.state, r.since) for cid, r in self.records.items()}

    def forget_missing(self, live: set[str]) -> None:
        for cid in list(self.records):
            if cid not in live:
                del self.records[cid]

    async def check(self, c: Container, answers: Answers) -> tuple[ReplicaState, bool]:
        """Probe one replica; returns (state, changed). An exception from `answers` (a
        netlink error, a vanished /proc entry) is a failed probe, never a failed pass."""
        now = self.now()
        rec = self.records.setdefault(c.id, ProbeRecord(since=now))
        rec.checked_at = now
        before = rec.state
        if c.health == "unhealthy":
            rec.state, rec.failures = ReplicaState.UNHEALTHY, self.failures_to_unhealthy
        elif c.health == "starting":
            rec.state = ReplicaState.STARTING
        else:
            try:
                ok = await answers(c)
            except Exception:
                ok = False
            if ok:
                rec.state, rec.failures = ReplicaState.READY, 0
            else:
                rec.failures += 1
                if before is ReplicaState.READY and rec.failures < self.failures_to_unhealthy:
                    pass  # one lost probe on a busy host is not yet a verdict
                elif before is not ReplicaState.STARTING:
                    rec.state = ReplicaState.UNHEALTHY
        if rec.state is not before:
            rec.since = now
        return rec.state, rec.state is not before
