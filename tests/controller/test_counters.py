"""Status and scrapes never hold a sync back: the kernel's counters are read one read at a
time (single-flight) and reused for `counters_max_age`, so a crowd of scrapes queues at most
one read on the rules' lock, the lock the sync that takes a dead replica out needs too.

On fakes whose rules port serializes syncs and counter reads on one lock, as the real one
does (lbctl.dataplane.iptables), with a slow read; on the loop's virtual clock. The same
against a real daemon: tests/e2e/test_faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from tests.controller.fakes import FAST, Harness, harness, spec

READ = 0.5  # seconds one counters read takes (iptables-save -c on a big ruleset, a busy host)
SCRAPERS = 100


async def kill_under_scrapes(h: Harness, scrape: Callable[[], Awaitable[object]]) -> float:
    """Seconds (loop clock) from killing web-2 to its leaving the rules, while SCRAPERS
    clients scrape back to back."""
    await h.apps.apply([spec("web", 3)])
    await h.until(lambda: len(h.rules.backends("web")) == 3)
    h.rules.counts = {("web", "web-1"): 7}
    h.rules.counter_delay = READ
    stop = asyncio.Event()

    async def scraper() -> None:
        while not stop.is_set():
            await scrape()
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(scraper()) for _ in range(SCRAPERS)]
    try:
        await asyncio.sleep(2 * READ)  # the crowd is queued up
        h.engine.kill("web-2")
        return await h.until(lambda: "web-2" not in h.rules.backends("web"), 120.0,
                             "web-2 out")
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_dead_replica_leaves_on_time_under_a_crowd_of_scrapes(tmp_path: Path) -> None:
    h = harness(tmp_path, settings=replace(FAST, api=replace(FAST.api, counters_max_age=0.5)))
    await h.start()
    try:
        left = await kill_under_scrapes(h, lambda: h.status.report())
        reads = h.rules.counter_reads
        # The sync waited behind one read at most (the one in flight), not a queue of them
        assert left <= 2 * READ, left
        # and the crowd shared reads: one per READ + max_age at most, not one per request
        assert reads <= (2 * READ + left) / (READ + 0.5) + 1, reads
        assert (await h.status.report("web"))[0]["replicas"][0]["connections_total"] == 7
    finally:
        await h.stop()
    print(f"\n{SCRAPERS} scrapers, reads of {READ}s: dead replica out in {left:.2f}s "
          f"(loop clock), {reads} kernel reads")


async def test_without_sharing_the_same_crowd_holds_the_sync_back(tmp_path: Path) -> None:
    """What the sharing prevents: every scrape reading the kernel itself queues SCRAPERS
    reads in front of the sync (the 5 s delay reproduced on a real host)."""
    h = harness(tmp_path)
    await h.start()
    try:
        left = await kill_under_scrapes(h, h.rules.counters)
        assert left > 10 * READ, left
    finally:
        await h.stop()


async def test_scrapes_during_a_sync_share_one_read_and_never_fail_it(tmp_path: Path) -> None:
    """A read that waits for a sync in progress (the lock) is the one every concurrent
    scrape waits for; a scrape that gives up (its client left) cancels nothing."""
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2)])
        await h.until(lambda: len(h.rules.backends("web")) == 2)
        h.rules.counts = {("web", "web-1"): 3}
        before = h.rules.counter_reads
        async with h.rules.lock:  # a sync in progress
            waiting = [asyncio.create_task(h.status.report()) for _ in range(SCRAPERS)]
            await asyncio.sleep(1.0)
            waiting[0].cancel()
            assert not any(t.done() for t in waiting[1:])
        results = await asyncio.gather(*waiting[1:])
        assert h.rules.counter_reads == before + 1
        assert all(r[0]["replicas"][0]["connections_total"] == 3 for r in results)
        # a scrape within max_age reuses that read ...
        await h.status.counters.read()  # what /metrics calls
        assert h.rules.counter_reads == before + 1
        # ... a status does not: it counts what was sent before it was asked
        h.rules.counts = {("web", "web-1"): 4}
        (app,) = await h.status.report()
        assert h.rules.counter_reads == before + 2
        assert app["replicas"][0]["connections_total"] == 4
    finally:
        await h.stop()


