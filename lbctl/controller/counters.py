"""The kernel's per-replica connection counters (rule counters, eBPF maps), as status and
scrapes read them: one read at a time, reused while it is fresh.

A read of the rule counters (`iptables-save -c`) waits for the data plane's lock, the lock
every sync takes. Read once per status request and per scrape, 100 clients at once queued
100 reads in front of the sync that takes a dead replica out (5 s late, reproduced). Here
they share one read in flight (single-flight) and its result for `max_age`
(settings.ApiSettings.counters_max_age): at most one read ever waits on that lock, so a sync
waits behind one read at most, whatever the number of clients. A client that goes away does
not cancel the read the others wait for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lbctl.controller import clock
from lbctl.controller.apps import AppsService
from lbctl.controller.interfaces import EbpfPort, RulesPort
from lbctl.controller.metrics import Metrics
from lbctl.model import Mode

log = logging.getLogger("lbctl.controller")

# app -> replica -> new connections the data plane sent it
Counts = dict[str, dict[str, int]]


class KernelCounters:
    def __init__(self, rules: RulesPort, ebpf: EbpfPort | None, apps: AppsService,
                 metrics: Metrics, max_age: float,
                 now: Callable[[], float] = clock.monotonic) -> None:
        self.rules = rules
        self.ebpf = ebpf
        self.apps = apps
        self.metrics = metrics
        self.max_age = max_age
        self.now = now
        self._value: Counts | None = None
        self._read_at = 0.0  # clock time the cached read ended
        self._inflight: asyncio.Task[Counts] | None = None
        self.reads = 0  # reads of the kernel so far (tests, and the proof of sharing)

    async def read(self) -> Counts:
        """The counters, at most `max_age` old (counted from the end of their read: what
        comes before it is the wait for the data plane's lock); also feeds the metrics."""
        if self._value is not None and self.now() - self._read_at <= self.max_age:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._read(), name="kernel counters")
        # shield: a waiter cancelled (its client went away) leaves the read to the others.
        return await asyncio.shield(self._inflight)

    async def _read(self) -> Counts:
        try:
            out = await self._read_kernel()
        finally:
            self._inflight = None
        self._value, self._read_at = out, self.now()
        return out

    async def _read_kernel(self) -> Counts:
        self.reads += 1
        out: Counts = {}
        try:
            for (app, replica), n in (await self.rules.counters()).items():
                out.setdefault(app, {})[replica] = n
        except Exception as e:
            log.warning("reading iptables counters: %s", e)
        if self.ebpf is not None:
            pinned = set(self.ebpf.pinned_apps())
            for app in sorted(self.apps.names() & pinned):
                rec = self.apps.record(app)
                if rec is None or rec.spec.mode is not Mode.EBPF:
                    continue
                try:
                    out[app] = await self.ebpf.counters(app)
                    for reason, n in (await self.ebpf.reasons(app)).items():
                        self.metrics.bpf_reasons.values[(app, reason)] = n
                except Exception as e:
                    log.warning("reading eBPF counters of %s: %s", app, e)
        live = set(self.apps.state.apps)  # not a deleted one's (forget_app dropped it)
        for app, per in out.items():
            if app in live:
                for replica, n in per.items():
                    self.metrics.connections.values[(app, replica)] = n
        return out
