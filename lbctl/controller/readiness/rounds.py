"""One app's probes: which running replicas to probe now, and what they answered.

Each replica is probed on its own schedule, the app's readiness interval apart, and at most
one probe of a replica is under way: a replica that hangs until the probe's timeout delays
nobody else's verdict (a round that waited for every answer would hold a failing replica in
the data plane for as long as the slowest one takes). A probe that changes a verdict wakes
the worker (`on_change`), which puts the replica in or takes it out in its next pass.

Kept apart from the worker because the choice is the daemon's main cost under load: in ebpf
mode with the TCP kind (no readiness path), a ready replica's listener is re-read only every
`ebpf_ready_recheck` seconds, while a cheap question to the kernel (is its listener still in
the socket map?) catches a closed listener within one probe interval.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from lbctl.controller import clock
from lbctl.controller.interfaces import Answers, AnswersFor, EbpfPort
from lbctl.controller.metrics import Metrics
from lbctl.controller.planner import Probe
from lbctl.controller.readiness.outcome import Failure, ProbeResult
from lbctl.controller.readiness.verdicts import Prober, ProbeRecord
from lbctl.model import ROLE_REPLICA, AppSpec, Container, Mode, ReplicaState
from lbctl.model.readiness import ReadinessProbe
from lbctl.settings import ProbeSettings

log = logging.getLogger("lbctl.controller")


class ReplicaProbes:
    """The probe verdicts of one app's replicas and the replicas that were ever ready (the
    planner tells a new revision's replica that never got ready from one that failed)."""

    def __init__(self, app: str, questions: AnswersFor, socket_map: EbpfPort | None,
                 settings: ProbeSettings, now: Callable[[], float] = clock.monotonic,
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.questions = questions
        self.socket_map = socket_map
        self.settings = settings
        self.now = now
        self.metrics = metrics
        self.prober = Prober(now)
        self.ever_ready: set[str] = set()
        self.on_change: Callable[[], None] = lambda: None  # the worker's wake
        self.inflight: dict[str, asyncio.Task[bool]] = {}
        self.names: dict[str, str] = {}  # container id -> replica name (for metrics)
        self.joining: set[str] = set()  # listening, not yet in the socket map (woken once)

    @property
    def records(self) -> dict[str, ProbeRecord]:
        return self.prober.records

    def forget_missing(self, live: set[str]) -> None:
        self.prober.forget_missing(live)
        self.ever_ready &= live
        self.joining &= live
        for cid in [cid for cid in self.names if cid not in live]:
            name = self.names.pop(cid)
            if self.metrics is not None and name not in self.names.values():
                self.metrics.forget_replica_probes(self.app, name)
        for cid in [cid for cid in self.inflight if cid not in live]:
            self.inflight.pop(cid).cancel()

    def verdicts(self) -> dict[str, Probe]:
        return self.prober.verdicts()

    async def settle(self) -> None:
        """Until the probes under way now have answered (tests, and a worker that stops)."""
        await asyncio.gather(*self.inflight.values(), return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self.inflight.values())
        self.inflight.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def round(self, spec: AppSpec, containers: list[Container], fail: Callable[[str], None],
                    leaving: frozenset[str], only_new: bool) -> bool:
        """Start the probes that are due: of running replicas that are not `leaving` and
        have none under way, the ones not probed for an interval (with `only_new`: never
        probed, and this waits for their answers, so that a pass plans with a verdict for
        every replica; True when one changed). Otherwise the probes run on their own and wake
        the worker when a verdict changes; this returns False at once."""
        # A replica that joined a sandbox has no network of its own: its traffic crosses the
        # sandbox's bridge.
        by_id = {c.id: c.bridge for c in containers}
        bridges = {c.id: c.bridge or by_id.get(c.joined_to or "") for c in containers}
        answers = self.questions(spec, fail, bridges)
        probe = spec.readiness
        now = self.now()
        cheap = await self._still_in_socket_map(spec, containers, leaving, only_new)
        started: list[asyncio.Task[bool]] = []
        for c in containers:
            if c.role != ROLE_REPLICA or not c.running or c.paused or c.id in leaving:
                continue
            if c.id in self.inflight:
                continue
            state = self.prober.state(c.id)
            if only_new and state is not None:
                continue
            checked = self.prober.checked_at(c.id)
            if not only_new and checked is not None and now - checked < probe.interval * 0.9:
                continue  # probed less than an interval ago (a pass's round in between)
            if (
                spec.mode is Mode.EBPF
                and probe.kind == "tcp"
                and state is ReplicaState.READY
                and c.health != "unhealthy"
                and not self.prober.failing(c.id)
                and cheap.get(c.id, True)
                and checked is not None
                and now - checked < self.settings.ebpf_ready_recheck
            ):
                # A ready replica's listener is in the sockmap, and a closed socket leaves
                # the map by itself (the program then skips its slot), so re-reading the
                # namespace's socket table 4 times a second buys nothing: under a
                # new-connection load it cost the daemon a whole core.
                continue
            self.names[c.id] = c.name
            task = asyncio.create_task(self._one(c, answers, probe),
                                       name=f"probe {c.name}")
            self.inflight[c.id] = task
            task.add_done_callback(functools.partial(self._done, c.id))
            started.append(task)
        if not only_new or not started:
            return False
        return any(await asyncio.gather(*started))

    def _done(self, cid: str, task: asyncio.Task[bool]) -> None:
        if self.inflight.get(cid) is task:
            del self.inflight[cid]
        if task.cancelled():
            return
        if task.exception() is None and task.result():
            self.on_change()

    async def _one(self, c: Container, answers: Answers, probe: ReadinessProbe) -> bool:
        """One probe of `c`; True when its verdict changed (or, the first time, when its
        listener waits to join the socket map: the worker's next pass inserts it, then it
        can be asked)."""
        state, changed, result = await self.prober.check(c, answers, probe)
        if state is ReplicaState.READY:
            self.ever_ready.add(c.id)
        if result is not None:
            self._count(c, result)
        if changed:
            rec = self.prober.records.get(c.id)
            why = rec.last_failure.line if rec and rec.last_failure and state is not \
                ReplicaState.READY else None
            log.info("replica %s", state, extra={"app": c.app, "replica": c.name,
                                                  **({"probe": why} if why else {})})
        joining = result is not None and result.failure is Failure.JOINING
        if not joining:
            self.joining.discard(c.id)
            return changed
        # Once per replica: one outside the app's namespace (adopted without its network
        # mode) would otherwise wake the worker at every probe for good.
        first = c.id not in self.joining
        self.joining.add(c.id)
        return changed or first

    def _count(self, c: Container, result: ProbeResult) -> None:
        if self.metrics is not None:
            self.metrics.observe_probe(self.app, c.name, result.failure, result.seconds)

    async def _still_in_socket_map(
        self, spec: AppSpec, containers: list[Container], leaving: frozenset[str],
        only_new: bool,
    ) -> dict[str, bool]:
        """ebpf mode, TCP kind, ready replicas between full probes: does the socket map
        still hold their listeners? (container id -> answer; a False makes the full probe
        run now, so a replica that closed its listener is out within a second, not five.)"""
        out: dict[str, bool] = {}
        if (spec.mode is not Mode.EBPF or spec.readiness.kind != "tcp"
                or self.socket_map is None or only_new):
            return out
        for c in containers:
            if (c.role == ROLE_REPLICA and c.running and c.pid and c.id not in leaving
                    and self.prober.state(c.id) is ReplicaState.READY
                    and c.id not in self.inflight):
                held = await self.socket_map.holds(self.app, c.name, c.pid)
                if held is not None:
                    out[c.id] = held
        return out
