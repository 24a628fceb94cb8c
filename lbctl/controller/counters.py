"""The kernel's per-replica connection counters (rule counters, eBPF maps), as status and
scrapes read them: one read at a time, shared by everyone who can use it.

A read of the rule counters (`iptables-save -c`) waits for the data plane's lock, the lock
every sync takes. Read once per status request and per scrape, 100 clients at once queued
100 reads in front of the sync that takes a dead replica out (5 s late, reproduced). Here
they share one read in flight (single-flight): scrapes also reuse a read for `max_age`
(settings.ApiSettings.counters_max_age), `status` only one that started after it was asked
(it must count what a client just sent). Reads never overlap, so at most one ever waits on a
lock of the data plane, whatever the number of clients. A client that goes away does not
cancel the read the others wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from lbctl.controller import clock
from lbctl.controller.apps import AppsService
from lbctl.controller.interfaces import EbpfPort, RulesPort
from lbctl.controller.metrics import Metrics
from lbctl.model import Mode
from lbctl.model.names import hold_name

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
        self._value_started = 0.0  # clock time the read of `_value` started
        self._value_read_at = 0.0  # and ended (what comes before is the wait for a lock)
        self._inflight: asyncio.Task[Counts] | None = None
        self._inflight_started = 0.0
        self.reads = 0  # reads of the kernel so far (tests, and the proof of sharing)

    async def read(self, max_age: float | None = None) -> Counts:
        """Counters read at most `max_age` ago (default the settings': what a scrape
        accepts); also feeds the metrics. `max_age=0`: a read that started
        after this call, so that it counts every connection made before the call (`status`
        right after a burst must not show a read taken before it). Reads never overlap: a
        caller that cannot use the one under way waits for it, then the next one starts,
        shared by everyone who waited."""
        age = self.max_age if max_age is None else max_age
        arrived = self.now()
        while True:
            if self._value is not None and (
                self._value_started >= arrived if age == 0
                else self._value_read_at >= arrived - age  # the data's age: when it was read
            ):
                return self._value
            task = self._inflight
            if task is not None and (age > 0 or self._inflight_started >= arrived):
                # shield: a waiter cancelled (its client went away) leaves the read to the
                # others.
                return await asyncio.shield(task)
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
                continue
            self._inflight_started = self.now()
            self._inflight = asyncio.create_task(self._read(self._inflight_started),
                                                 name="kernel counters")

    async def _read(self, started: float) -> Counts:
        try:
            out = await self._read_kernel()
        finally:
            self._inflight = None
        self._value, self._value_started, self._value_read_at = out, started, self.now()
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
                    # A traffic hold's listener is steered to like a replica; it is none.
                    out[app] = {name: n for name, n in (await self.ebpf.counters(app)).items()
                                if not name.startswith(hold_name(app, ""))}
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
