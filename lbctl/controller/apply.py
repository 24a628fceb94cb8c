"""One app's share of the host's data planes: a plan applied in an order that never misroutes.

eBPF first (a replica joins the selection table before the DNAT could send it traffic), then
the host rules; hairpin mode on the bridge ports of the DNAT targets lbctl created. What goes
where is decided before (controller.planner, controller.backends); this only applies it and
says which replicas are in the data plane now.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from lbctl.controller import backends
from lbctl.controller.hostrules import HostRules
from lbctl.controller.interfaces import EbpfPort, Hairpin
from lbctl.controller.metrics import Metrics
from lbctl.controller.planner import AppPlan, Desired, is_host_namespace
from lbctl.model import ROLE_REPLICA, AppSpec, Container, Mode
from lbctl.model.dataplane import Bound, Service
from lbctl.model.errors import EbpfError, ListenerError

log = logging.getLogger("lbctl.controller")


class AppDataplane:
    """The data planes as one app's worker sees them: the shared host rules, the eBPF data
    plane (None where this host has none), hairpin mode, and the sync metrics."""

    def __init__(self, app: str, hostrules: HostRules, ebpf: EbpfPort | None,
                 ebpf_unavailable: Callable[[], str | None], hairpin: Hairpin | None,
                 metrics: Metrics) -> None:
        self.app = app
        self.hostrules = hostrules
        self.ebpf = ebpf
        self.ebpf_unavailable = ebpf_unavailable
        self.hairpin = hairpin
        self.metrics = metrics
        self.hairpinned: set[str] = set()  # containers whose bridge port was looked at

    def unavailable(self, mode: Mode) -> str | None:
        """Why `mode` cannot serve on this host now (None: it can)."""
        if mode is not Mode.EBPF:
            return None
        return self.ebpf_unavailable() if self.ebpf is not None else "disabled"

    def forget_missing(self, live: set[str]) -> None:
        self.hairpinned &= live

    async def sync(self, desired: Desired, p: AppPlan, containers: list[Container],
                   leaving: frozenset[str], held: Iterable[Container],
                   fail: Callable[[str], None]) -> frozenset[str] | None:
        """The data planes to the plan; returns the ids of the replicas now in them (None:
        left as they were, while the sandbox is repaired). Raises when either data plane
        fails, so that no retirement starts on a half-synced app.

        `leaving`: containers retiring (they stay in the socket map to drain); `held`:
        containers still running while they retire (a deleted app keeps their bridges);
        `fail`: records an error the app itself must fix (a listener ebpf mode cannot use)."""
        spec = desired.spec
        if spec is None:
            await self.hostrules.set(self.app, self._draining_service(desired, held))
            return frozenset()
        if spec.mode is Mode.EBPF and (is_host_namespace(p.sandbox) or spec.activated):
            # `--network host` and socket activation: listeners of the host's namespace are
            # the published port (the replicas' own, or the ones lbctl handed them); no rule
            # of lbctl's stands between (nor ever did: such an app never had one).
            await self._sync_ebpf(spec, p, containers, leaving, fail, netns_pid=os.getpid())
            await self.hostrules.set(self.app, None)
            return frozenset(c.id for c in p.backends)
        if spec.mode is Mode.EBPF:
            if p.sandbox is None or p.sandbox.ip is None or p.sandbox.pid is None:
                # Being repaired: leave the rules as they are. A SYN to the lost sandbox's
                # address goes unanswered and is retried by the client until the new one
                # (usually on the same address) is up, where a REJECT would fail it at once.
                if self.app not in self.hostrules.apps():
                    await self.hostrules.set(
                        self.app, Service(self.app, spec.publish, (), (), spec.extra_publishes))
                return None
            await self._sync_ebpf(spec, p, containers, leaving, fail)
        await self._hairpin(spec, p)
        await self.hostrules.set(self.app, backends.service(spec, p))
        return frozenset(c.id for c in p.backends)

    # ---- the traffic hold (ebpf mode; iptables mode holds with its rules) -------------------

    async def hold_sockets(self, spec: AppSpec, p: AppPlan) -> list[Bound]:
        """Where the app's replicas listen, as a hold container must copy it: read from the
        first running replica in the app's namespace that listens (empty: none does yet)."""
        if self.ebpf is None or p.sandbox is None:
            return []
        for c in p.backends:
            if c.pid and c.role == ROLE_REPLICA:
                found = await self.ebpf.bound(c.pid, spec.publish.container_port,
                                              spec.publish.proto)
                if found:
                    return found
        return []

    async def holding(self, p: AppPlan) -> frozenset[str]:
        """The hold containers whose listeners the socket map holds (after a sync)."""
        if self.ebpf is None:
            return frozenset()
        out = set()
        for c in p.holds:
            if c.pid and await self.ebpf.holds(self.app, c.name, c.pid):
                out.add(c.id)
        return frozenset(out)

    async def held(self, spec: AppSpec, p: AppPlan) -> int:
        """Connections the hold containers hold now (their accept queues)."""
        if self.ebpf is None:
            return 0
        n = 0
        for c in p.holds:
            if c.pid:
                n += await self.ebpf.queued(c.pid, spec.publish.container_port)
        return n

    async def remove(self) -> None:
        """The app's last containers are gone: so are its rules and its eBPF objects."""
        await self.hostrules.set(self.app, None)
        if self.ebpf is not None and self.app in self.ebpf.pinned_apps():
            await self.ebpf.remove(self.app)

    def _draining_service(self, desired: Desired, held: Iterable[Container]) -> Service | None:
        """A deleted app's rules while its containers drain: no backend (new connections are
        refused), but its bridges, so that route_localnet stays on them until the last
        drain ends: 127.0.0.1 clients' open connections need it to the end."""
        gone = desired.gone
        bridges = tuple(sorted({c.bridge for c in held if c.running and c.bridge}))
        if gone is None or not bridges or gone.host_listeners:
            return None  # (an app whose listeners are the host's never had a rule)
        return Service(gone.name, gone.publish, (), bridges, gone.extra_publishes)

    async def _sync_ebpf(self, spec: AppSpec, p: AppPlan, containers: list[Container],
                         leaving: frozenset[str], fail: Callable[[str], None],
                         netns_pid: int | None = None) -> None:
        """`netns_pid`: a process in the replicas' namespace (default: the sandbox)."""
        if netns_pid is None:
            assert p.sandbox is not None and p.sandbox.pid is not None
            netns_pid = p.sandbox.pid
        assert self.ebpf is not None
        probed = spec.readiness.path is not None and spec.publish.proto == "tcp"
        ready, drains, probing = backends.ebpf_members(p, containers, leaving, spec.activated,
                                                       probed)
        # An activated app's listeners are bound to HOST_PORT (the others' to the container
        # port, which `--network host` makes the same).
        port = spec.publish.host_port if spec.activated else spec.publish.container_port
        with self.metrics.sync_seconds.labels(dataplane="ebpf").time():
            try:
                await self.ebpf.sync(self.app, port, netns_pid, ready, drains,
                                     spec.publish.proto, probing=probing,
                                     holds=backends.hold_members(p))
            except ListenerError as e:
                fail(str(e))  # the app must change, not lbctl
            except EbpfError:
                self.metrics.sync_errors.labels(dataplane="ebpf").inc()
                raise

    async def _hairpin(self, spec: AppSpec, p: AppPlan) -> None:
        """Hairpin mode on the bridge port of each DNAT target lbctl created, once per
        container (lbctl.dataplane.hairpin): without it, a replica calling the published
        address and sent to itself is not served where bridges pass netfilter. Best effort:
        other clients are served either way, so a failure is logged, not the pass's."""
        if self.hairpin is None:
            return
        targets = [p.sandbox] if spec.mode is Mode.EBPF and p.sandbox else list(p.backends)
        for c in targets:
            if c.id in self.hairpinned or not c.managed or not c.pid:
                continue
            self.hairpinned.add(c.id)
            try:
                changed = await self.hairpin(c.pid)
            except Exception as e:
                log.warning("cannot set hairpin mode on %s's bridge port: %s", c.name, e,
                            extra={"app": self.app, "replica": c.name})
                continue
            if changed:
                log.debug("hairpin mode on %s", ", ".join(changed),
                          extra={"app": self.app, "replica": c.name})
