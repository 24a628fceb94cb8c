"""Readiness: which running replicas may take new connections.

A replica is ready when its container runs, its engine health check (if the image has one)
says healthy, and it answers on its port: a TCP connect in iptables mode (each replica has
its own address), a listening socket in its own processes in ebpf mode (replicas share the
sandbox's address, so a connect would not tell them apart). A ready replica that fails two
probes in a row (0.25 s apart) is unhealthy, which takes it out of the data plane within a
second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lbctl.model import Container, ReplicaState

FAILURES_TO_UNHEALTHY = 2
CONNECT_TIMEOUT = 0.25


@dataclass
class ProbeRecord:
    state: ReplicaState = ReplicaState.STARTING
    failures: int = 0
    checked_at: float = 0.0  # time.monotonic() of the last probe


async def tcp_probe(ip: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Prober:
    """Keeps one verdict per container; `check` turns one probe result into a state."""

    def __init__(self) -> None:
        self.records: dict[str, ProbeRecord] = {}

    def state(self, container_id: str) -> ReplicaState | None:
        rec = self.records.get(container_id)
        return rec.state if rec else None

    def checked_at(self, container_id: str) -> float:
        rec = self.records.get(container_id)
        return rec.checked_at if rec else 0.0

    def forget_missing(self, live: set[str]) -> None:
        for cid in list(self.records):
            if cid not in live:
                del self.records[cid]

    async def check(
        self, c: Container, answers: Callable[[Container], Awaitable[bool]]
    ) -> tuple[ReplicaState, bool]:
        """Probe one replica; returns (state, changed)."""
        rec = self.records.setdefault(c.id, ProbeRecord())
        rec.checked_at = time.monotonic()
        before = rec.state
        if c.health == "unhealthy":
            rec.state, rec.failures = ReplicaState.UNHEALTHY, FAILURES_TO_UNHEALTHY
        elif c.health == "starting":
            rec.state = ReplicaState.STARTING
        elif await answers(c):
            rec.state, rec.failures = ReplicaState.READY, 0
        else:
            rec.failures += 1
            if before is ReplicaState.READY and rec.failures < FAILURES_TO_UNHEALTHY:
                pass  # one lost probe on a busy host is not yet a verdict
            elif before is not ReplicaState.STARTING:
                rec.state = ReplicaState.UNHEALTHY
        return rec.state, rec.state is not before
