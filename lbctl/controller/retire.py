"""Retiring a container: drain it, then stop and remove it, as a task of its own.

A drain waits (bounded by the drain timeout) until the replica serves nothing any more: no
open connection on its port, or for UDP no flow active lately (lbctl.controller.draining
says what counts); a stop waits up to the stop grace for the process to exit. Both can take
seconds, so they never run inside a worker's pass: scaling 64 -> 1 an image that ignores
SIGTERM must not hold the app's own failover, let alone another app's. The worker starts a
retirement only after a successful sync took the container out of the data plane, and is
woken when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from lbctl.controller import clock
from lbctl.controller.draining import BeforeStop, Pending
from lbctl.controller.interfaces import EnginePort
from lbctl.model import Container
from lbctl.settings import DrainSettings

log = logging.getLogger("lbctl.controller")


@dataclass
class Retirement:
    container: Container
    started: float  # clock time it began
    pending: Pending | None = None  # what it still serves; None: nothing to drain
    task: asyncio.Task[None] | None = None
    surplus: bool = False  # retired for being too many: may be taken back while it drains
    drained: bool = False
    error: str | None = None
    # Run once it is drained, before the stop (iptables mode: forget its conntrack entries).
    before_stop: BeforeStop | None = None


class Retirements:
    """The retirements of one app's containers, keyed by container id."""

    def __init__(
        self,
        engine: EnginePort,
        settings: DrainSettings,
        on_done: Callable[[], None],
        now: Callable[[], float] = clock.monotonic,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_done = on_done
        self.now = now
        self.active: dict[str, Retirement] = {}
        # Removed, but perhaps still in a list the worker took before the removal ended:
        # planned as retiring (never retired twice) until the engine no longer lists them.
        self.removed: set[str] = set()

    def grace_of(self, c: Container) -> int:
        """The app's own --stop-timeout when it has one (its process needs that long to
        finish), else the daemon's --stop-grace."""
        return self.settings.stop_grace if c.stop_timeout is None else c.stop_timeout

    def ids(self) -> frozenset[str]:
        return frozenset(self.active) | frozenset(self.removed)

    def reclaimable(self) -> frozenset[str]:
        return frozenset(cid for cid, r in self.active.items() if r.surplus and not r.drained)

    def stopping(self) -> frozenset[str]:
        return frozenset(cid for cid, r in self.active.items() if r.drained)

    def reclaim(self, cid: str) -> bool:
        """Take a draining replica back into service; False once it is being stopped."""
        r = self.active.get(cid)
        if r is None or r.drained or r.task is None:
            return False
        r.task.cancel()
        del self.active[cid]
        log.info("replica back in service", extra={"app": r.container.app,
                                                   "replica": r.container.name})
        return True

    def start(
        self,
        c: Container,
        pending: Pending | None,
        surplus: bool = False,
        before_stop: BeforeStop | None = None,
    ) -> None:
        """Drain `c` while `pending` says it serves something (no drain when None: a sandbox,
        or a deleted app's replica whose port is unknown), then stop and remove it."""
        if c.id in self.active:
            return
        r = Retirement(c, self.now(), pending, surplus=surplus, before_stop=before_stop)
        r.task = asyncio.create_task(self._run(r), name=f"retire {c.name}")
        self.active[c.id] = r

    def forget_missing(self, live: set[str]) -> None:
        self.removed &= live

    async def cancel_all(self) -> None:
        tasks = [r.task for r in self.active.values() if r.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, r: Retirement) -> None:
        c = r.container
        fields = {"app": c.app, "replica": c.name}
        try:
            if c.running and c.pid is not None and r.pending is not None:
                log.info("draining replica", extra=fields)
                await self._drain(r, r.pending)
            r.drained = True
            if c.running and r.before_stop is not None:
                try:
                    await r.before_stop(c)
                except Exception as e:  # best effort: the stop must happen regardless
                    log.warning("before stopping %s: %s", c.name, e, extra=fields)
            delay = 0.5
            for attempt in range(1, self.settings.remove_attempts + 1):
                try:
                    log.info("removing container", extra=fields)
                    await self.engine.stop_and_remove(c.id, self.grace_of(c))
                    self.removed.add(c.id)
                    return
                except Exception as e:
                    r.error = str(e)
                    log.warning("removing %s failed (attempt %d): %s", c.name, attempt, e,
                                extra=fields)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            # Whatever happened, the next pass sees the container's true state: gone, or
            # still there (and then planned again, with a fresh retirement).
            if self.active.get(c.id) is r:
                self.active.pop(c.id, None)
            self.on_done()

    async def _drain(self, r: Retirement, pending: Pending) -> None:
        deadline = r.started + self.settings.timeout
        while True:
            try:
                left = await pending(r.container, r.started)
            except Exception:
                return
            if left == 0:
                return
            if self.now() >= deadline:
                log.warning("drain timeout: stopping it with %d connection(s) or flow(s) "
                            "still active", left,
                            extra={"app": r.container.app, "replica": r.container.name})
                return
            await asyncio.sleep(self.settings.poll)
