"""Readiness: which running replicas may take new connections.

A replica is ready when its container runs, its engine health check (if the image has one)
says healthy, and it answers on its port: a TCP connect in iptables mode (each replica has
its own address), a listening socket in its own processes in ebpf mode (replicas share the
sandbox's address, so a connect would not tell them apart). A ready replica that fails two
probes in a row (0.25 s apart) is unhealthy, which takes it out of the data plane within a
second. Each verdict keeps the time it was reached: a rollout counts a new replica only once
it stayed ready long enough, and an unhealthy one is replaced after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lbctl.controller.planner import Probe
from lbctl.model import Container, ReplicaState

FAILURES_TO_UNHEALTHY = 2
CONNECT_TIMEOUT = 0.25

Answers = Callable[[Container], Awaitable[bool]]


@dataclass
class ProbeRecord:
    state: ReplicaState = ReplicaState.STARTING
    failures: int = 0
    checked_at: float = 0.0  # time.monotonic() of the last probe
    since: float = 0.0  # time.monotonic() when `state` was reached


async def tcp_probe(ip: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(ip, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Prober:
    """Keeps one verdict per container; `check` turns one probe result into a state."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.records: dict[str, ProbeRecord] = {}
        self.clock = clock

    def state(self, container_id: str) -> ReplicaState | None:
        rec = self.records.get(container_id)
        return rec.state if rec else None

    def failing(self, container_id: str) -> bool:
        """The last probe failed (a verdict may be one probe away)."""
        rec = self.records.get(container_id)
        return rec is not None and rec.failures > 0

    def checked_at(self, container_id: str) -> float:
        rec = self.records.get(container_id)
        return rec.checked_at if rec else 0.0

    def verdicts(self) -> dict[str, Probe]:
        return {cid: Probe(r.state, r.since) for cid, r in self.records.items()}

    def forget_missing(self, live: set[str]) -> None:
        for cid in list(self.records):
            if cid not in live:
                del self.records[cid]

    async def check(self, c: Container, answers: Answers) -> tuple[ReplicaState, bool]:
        """Probe one replica; returns (state, changed). An exception from `answers` (a
        netlink error, a vanished /proc entry) is a failed probe, never a failed pass."""
        now = self.clock()
        rec = self.records.setdefault(c.id, ProbeRecord(since=now))
        rec.checked_at = now
        before = rec.state
        if c.health == "unhealthy":
            rec.state, rec.failures = ReplicaState.UNHEALTHY, FAILURES_TO_UNHEALTHY
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
                if before is ReplicaState.READY and rec.failures < FAILURES_TO_UNHEALTHY:
                    pass  # one lost probe on a busy host is not yet a verdict
                elif before is not ReplicaState.STARTING:
                    rec.state = ReplicaState.UNHEALTHY
        if rec.state is not before:
            rec.since = now
        return rec.state, rec.state is not before
