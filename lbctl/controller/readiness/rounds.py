"""One app's probe rounds: which running replicas to probe now, and what they answered.

Kept apart from the worker because the choice is the daemon's main cost under load: in ebpf
mode a ready replica is re-probed only every `ebpf_ready_recheck` seconds, while a cheap
question to the kernel (is its listener still in the socket map?) catches a closed listener
within one probe interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lbctl.controller import clock
from lbctl.controller.interfaces import AnswersFor, EbpfPort
from lbctl.controller.planner import Probe
from lbctl.controller.readiness.verdicts import Prober
from lbctl.model import ROLE_REPLICA, AppSpec, Container, Mode, ReplicaState
from lbctl.settings import ProbeSettings

log = logging.getLogger("lbctl.controller")


class ReplicaProbes:
    """The probe verdicts of one app's replicas and the replicas that were ever ready (the
    planner tells a new revision's replica that never got ready from one that failed)."""

    def __init__(self, app: str, questions: AnswersFor, socket_map: EbpfPort | None,
                 settings: ProbeSettings, now: Callable[[], float] = clock.monotonic) -> None:
        self.app = app
        self.questions = questions
        self.socket_map = socket_map
        self.settings = settings
        self.now = now
        self.prober = Prober(settings.failures_to_unhealthy, now)
        self.ever_ready: set[str] = set()

    def forget_missing(self, live: set[str]) -> None:
        self.prober.forget_missing(live)
        self.ever_ready &= live

    def verdicts(self) -> dict[str, Probe]:
        return self.prober.verdicts()

    async def round(self, spec: AppSpec, containers: list[Container], fail: Callable[[str], None],
                    leaving: frozenset[str], only_new: bool) -> bool:
        """Probe running replicas that are not `leaving` (only never-probed ones with
        `only_new`); True when a verdict changed. `fail` records an error the app itself
        must fix (a listener ebpf mode cannot use)."""
        # A replica that joined a sandbox has no network of its own: its traffic crosses the
        # sandbox's bridge.
        by_id = {c.id: c.bridge for c in containers}
        bridges = {c.id: c.bridge or by_id.get(c.joined_to or "") for c in containers}
        answers = self.questions(spec, fail, bridges)
        jobs = []
        probed: list[Container] = []
        now = self.now()
        cheap = await self._still_in_socket_map(spec, containers, leaving, only_new)
        for c in containers:
            if c.role != ROLE_REPLICA or not c.running or c.paused or c.id in leaving:
                continue
            state = self.prober.state(c.id)
            if only_new and state is not None:
                continue
            checked = self.prober.checked_at(c.id)
            if (
                spec.mode is Mode.EBPF
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
            jobs.append(self.prober.check(c, answers))
            probed.append(c)
        if not jobs:
            return False
        results = await asyncio.gather(*jobs)
        changed = False
        for c, (state, did_change) in zip(probed, results, strict=True):
            if state is ReplicaState.READY:
                self.ever_ready.add(c.id)
            if did_change:
                changed = True
                log.info("replica %s", state, extra={"app": c.app, "replica": c.name})
        return changed

    async def _still_in_socket_map(
        self, spec: AppSpec, containers: list[Container], leaving: frozenset[str],
        only_new: bool,
    ) -> dict[str, bool]:
        """ebpf mode, ready replicas between full probes: does the socket map still hold
        their listeners? (container id -> answer; a False makes the full probe run now, so a
        replica that closed its listener is unhealthy within a second, not five.)"""
        out: dict[str, bool] = {}
        if spec.mode is not Mode.EBPF or self.socket_map is None or only_new:
            return out
        for c in containers:
            if (c.role == ROLE_REPLICA and c.running and c.pid and c.id not in leaving
                    and self.prober.state(c.id) is ReplicaState.READY):
                held = await self.socket_map.holds(self.app, c.name, c.pid)
                if held is not None:
                    out[c.id] = held
        return out
