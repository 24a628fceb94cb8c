"""What a run of probe answers means for a replica, and since when.

A replica is ready when its container runs, its engine health check (if the image has one)
says healthy, and it passed `success_threshold` probes in a row (the app's readiness probe,
lbctl.model.readiness). A ready replica that fails `failure_threshold` probes in a row leaves
the data plane: as `unready` when it answers but not well (a status outside the range, a
timeout, a reset), and comes back when it passes again, never replaced for it (readiness is
not liveness, as in Kubernetes); as `unhealthy` when it no longer listens on its port at all
(outcome.LIVENESS) or its engine health check (the image's HEALTHCHECK, `--health-cmd`: the
app's liveness check) says unhealthy, and is then replaced after the grace period unless it
recovers. A replica that never was ready stays `starting` whatever its probes say: a rollout
gives it `ready_timeout`, and the last failure tells what it is waiting for.

Each verdict keeps the time it was reached: a rollout counts a new replica only once it stayed
ready long enough, and an unhealthy one is replaced after a grace period. Every record also
keeps the last failure (what, when), which `status` shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lbctl.controller import clock
from lbctl.controller.interfaces import Answers
from lbctl.controller.planner import Probe
from lbctl.controller.readiness.outcome import LIVENESS, Failure, ProbeResult, failed
from lbctl.model import Container, ReplicaState
from lbctl.model.readiness import ReadinessProbe


@dataclass
class ProbeRecord:
    state: ReplicaState = ReplicaState.STARTING
    failures: int = 0  # failed probes in a row
    successes: int = 0  # passing probes in a row
    checked_at: float | None = None  # clock time of the last probe
    since: float = 0.0  # clock time when `state` was reached
    last: ProbeResult | None = None  # the last probe's result
    last_failure: ProbeResult | None = None
    last_failure_at: float | None = None  # epoch seconds

    def to_json(self) -> dict[str, Any]:
        """For `status`: the last probe's verdict and the last failure."""
        failure = self.last_failure
        return {
            "verdict": None if self.last is None else "pass" if self.last.ok else "fail",
            "failures": self.failures,
            "last_failure": None if failure is None else {
                **failure.to_json(), "at": self.last_failure_at},
        }  # fmt: skip


class Prober:
    """Keeps one verdict per container; `check` turns one probe result into a state."""

    def __init__(self, now: Callable[[], float] = clock.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.records: dict[str, ProbeRecord] = {}
        self.now = now
        self.wall = wall

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

    async def check(self, c: Container, answers: Answers,
                    probe: ReadinessProbe) -> tuple[ReplicaState, bool, ProbeResult | None]:
        """Probe one replica; returns (state, changed, the probe's result: None when the
        engine's health check decided). An exception from `answers` (a netlink error, a
        vanished /proc entry) is a failed probe, never a failed pass."""
        rec = self.records.setdefault(c.id, ProbeRecord(since=self.now()))
        before = rec.state
        result: ProbeResult | None = None
        if c.health == "unhealthy":
            rec.state, rec.failures, rec.successes = ReplicaState.UNHEALTHY, 0, 0
            rec.checked_at = self.now()
        elif c.health == "starting":
            rec.state = ReplicaState.STARTING
            rec.checked_at = self.now()
        else:
            t0 = self.now()
            try:
                result = await answers(c)
            except Exception as e:
                result = failed(Failure.ERROR, str(e).splitlines()[0] if str(e) else
                                type(e).__name__)
            result = ProbeResult(result.ok, result.failure, result.status, result.detail,
                                 max(0.0, self.now() - t0))
            rec.checked_at = self.now()
            self.record(rec, result, probe)
        if rec.state is not before:
            rec.since = self.now()
        return rec.state, rec.state is not before, result

    def record(self, rec: ProbeRecord, result: ProbeResult, probe: ReadinessProbe) -> None:
        """One probe's result into the record's state (the thresholds of `probe`)."""
        rec.last = result
        if result.ok:
            rec.successes += 1
            rec.failures = 0
            if rec.state is ReplicaState.READY or rec.successes >= probe.success_threshold:
                rec.state = ReplicaState.READY
            return
        rec.failures += 1
        rec.successes = 0
        rec.last_failure, rec.last_failure_at = result, self.wall()
        if rec.state is ReplicaState.STARTING or rec.failures < probe.failure_threshold:
            return  # not ready yet; or one lost probe on a busy host is not yet a verdict
        rec.state = (ReplicaState.UNHEALTHY if result.failure in LIVENESS
                     else ReplicaState.UNREADY)
