"""The traffic hold on the controller's virtual clock: its deadline, its state across a
restart, and in ebpf mode the order that loses nobody (the tables go back before the hold
container stops). tests/e2e/test_pause.py holds real connections under load."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from lbctl.controller.store import StateStore
from lbctl.model import ROLE_HOLD, Container, InvalidInput
from lbctl.model.changes import HoldTraffic, ResumeTraffic
from lbctl.model.spec import Mode
from tests.controller.fakes import FakeEngine, Harness, harness, loop_wall, spec


def service_hold(h: Harness, app: str) -> float | None:
    return next((s.hold_until for s in h.rules.applied if s.app == app), None)


def holds(h: Harness, app: str) -> list[Container]:
    return [f.c for f in h.engine.containers.values()
            if f.c.app == app and f.c.role == ROLE_HOLD]


async def test_an_iptables_hold_ends_by_itself_at_its_deadline(tmp_path: Path) -> None:
    h = harness(tmp_path, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2)])
        await h.until(lambda: h.rules.backends("web") == ["web-1", "web-2"])
        out = await h.apps.hold(HoldTraffic("web", 10.0))
        assert out.result == "paused" and out.hold is not None
        until = out.hold.until
        await h.until(lambda: service_hold(h, "web") == until, 1.0, "the rules hold")
        [app] = await h.status.report("web")
        assert app["hold"] == {"paused": True, "since": out.hold.since, "until": until,
                               "holding": True, "held": None}
        assert h.metrics.paused.labels(app="web")._value.get() == 1
        # Persisted as it is asked for: a restarted daemon holds to the same deadline.
        assert StateStore(tmp_path).load_state().apps["web"].hold == out.hold
        took = await h.until(lambda: service_hold(h, "web") is None, 30.0, "the hold's end")
        ended = loop_wall()
        assert until <= ended < until + 1.0, (ended - until, took)
        assert h.rules.backends("web") == ["web-1", "web-2"]
        rec = h.apps.record("web")
        assert rec is not None and rec.hold is None
        assert (await h.status.report("web"))[0]["hold"] is None
        assert h.metrics.paused.labels(app="web")._value.get() == 0
    finally:
        await h.stop()


async def test_a_restarted_controller_keeps_the_hold_and_its_deadline(tmp_path: Path) -> None:
    h = harness(tmp_path, wall=loop_wall)
    await h.start()
    await h.apps.apply([spec("web", 2)])
    await h.until(lambda: len(h.rules.backends("web")) == 2)
    out = await h.apps.hold(HoldTraffic("web", 20.0))
    assert out.hold is not None
    await h.until(lambda: service_hold(h, "web") == out.hold.until)  # type: ignore[union-attr]
    await h.stop()
    await asyncio.sleep(5)  # no daemon for a while
    again = harness(tmp_path, h.engine, wall=loop_wall)
    await again.start()
    try:
        rec = again.apps.record("web")
        assert rec is not None and rec.hold == out.hold
        await again.until(lambda: service_hold(again, "web") == out.hold.until)  # type: ignore[union-attr]
        await again.until(lambda: service_hold(again, "web") is None, 30.0, "the hold's end")
        assert loop_wall() >= out.hold.until
    finally:
        await again.stop()


async def test_resume_ends_a_hold_and_a_second_resume_changes_nothing(tmp_path: Path) -> None:
    h = harness(tmp_path, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("web", 1)])
        await h.until(lambda: len(h.rules.backends("web")) == 1)
        await h.apps.hold(HoldTraffic("web", 60.0))
        await h.until(lambda: service_hold(h, "web") is not None)
        generation = h.apps.generation("web")
        assert (await h.apps.hold(ResumeTraffic("web"))).result == "resumed"
        await h.until(lambda: service_hold(h, "web") is None, 1.0, "resumed")
        assert (await h.apps.hold(ResumeTraffic("web"))).result == "unchanged"
        assert h.apps.generation("web") == generation + 1  # the second one changed nothing
    finally:
        await h.stop()


async def test_ebpf_holds_in_a_container_and_lets_it_go_after_the_tables(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(loop_wall)
    h = harness(tmp_path, engine, wall=loop_wall)
    tables_at_removal: list[list[str]] = []

    def watch(c: Container) -> float:
        if c.role == ROLE_HOLD:
            tables_at_removal.append(list(h.ebpf.tables["fast"]))
        return 0.0

    engine.remove_delay = watch
    h.ebpf.queue = 7
    await h.start()
    try:
        await h.apps.apply([spec("fast", 2, mode=Mode.EBPF)])
        await h.until(lambda: h.ebpf.tables.get("fast") == ["fast-1", "fast-2"])
        first = await h.apps.hold(HoldTraffic("fast", 30.0))
        assert first.hold is not None
        await h.until(lambda: len(holds(h, "fast")) == 1, 2.0, "a hold container")
        [hold1] = holds(h, "fast")
        await h.until(lambda: h.ebpf.tables["fast"] == [hold1.name], 2.0, "steered to it")
        req = engine.requests[hold1.name]
        assert req.join is not None and req.options.user == "1000"  # as the replicas' owner
        margin = h.settings.worker.hold_exit_margin  # it ends by itself that much later
        assert req.command[:2] == ("hold", str(math.ceil(first.hold.until + margin)))
        assert req.command[2:] == ("0.0.0.0:80",)
        [app] = await h.status.report("fast")
        assert app["hold"]["holding"] and app["hold"]["held"] == 7
        assert h.metrics.held.labels(app="fast")._value.get() == 7

        # Paused again: a hold of the new deadline takes over, then the first one goes.
        second = await h.apps.hold(HoldTraffic("fast", 60.0))
        assert second.hold is not None and second.hold.since == first.hold.since
        await h.until(lambda: len(holds(h, "fast")) == 1 and holds(h, "fast")[0] != hold1,
                      2.0, "the first hold replaced")
        [hold2] = holds(h, "fast")
        assert h.ebpf.tables["fast"] == [hold2.name]
        assert tables_at_removal == [[hold2.name]]  # it stopped once the new one held

        await h.apps.hold(ResumeTraffic("fast"))
        await h.until(lambda: not holds(h, "fast"), 2.0, "the hold gone")
        assert h.ebpf.tables["fast"] == ["fast-1", "fast-2"]
        # The replicas were back in the table before the hold container stopped, so what it
        # held migrated to them.
        assert tables_at_removal[-1] == ["fast-1", "fast-2"]
        assert (await h.status.report("fast"))[0]["hold"] is None
    finally:
        await h.stop()


async def test_an_activated_app_is_not_paused_and_nothing_changes(tmp_path: Path) -> None:
    """Its listeners are lbctl's, in the host's namespace, where no hold container listens:
    one line, the record as it was."""
    h = harness(tmp_path, wall=loop_wall)
    await h.start()
    try:
        await h.apps.apply([spec("act", 2, mode=Mode.EBPF, activation=True)])
        before = h.apps.record("act")
        with pytest.raises(InvalidInput, match="socket activation, which pause does not hold"):
            await h.apps.hold(HoldTraffic("act", 10.0))
        assert h.apps.record("act") == before and holds(h, "act") == []
    finally:
        await h.stop()
