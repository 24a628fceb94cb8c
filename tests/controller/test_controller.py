"""The controller against fakes at the engine and data-plane boundaries: one app's trouble
never touches another, retirements run beside passes, deletions survive a restart, rollouts
go one step at a time and roll back by themselves. (tests/e2e runs the same on the real
engine and kernel.)"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from lbctl.controller.interfaces import Answers
from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.model import AppSpec, Container
from lbctl.model.runtime import EngineEvent
from lbctl.model.spec import Mode
from lbctl.settings import Settings
from tests.controller.fakes import FAST, FakeEngine, harness, spec


def worker_settings(**fields: Any) -> Settings:
    return replace(FAST, worker=replace(FAST.worker, **fields))


async def test_apps_converge_and_a_crashed_replica_is_replaced(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("web", 3), spec("api", 2, port=18001)])
        await h.until(lambda: h.rules.backends("web") == ["web-1", "web-2", "web-3"])
        await h.until(lambda: h.rules.backends("api") == ["api-1", "api-2"])
        dead = h.engine.kill("web-2")
        await h.until(lambda: "web-2" not in h.rules.backends("web"), 1.0, "dead one out")
        await h.until(lambda: len(h.engine.running("web")) == 3 and dead.id not in
                      h.engine.containers, 2.0, "replacement")
        assert [c.name for c in h.engine.running("web")] == ["web-1", "web-2", "web-3"]
    finally:
        await h.stop()


async def test_a_failing_sandbox_create_does_not_hold_another_app(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.fail_create = lambda req: (
        'Conflict. The container name "/bad-sandbox" is already in use'
        if req.name == "bad-sandbox" else None)
    h = harness(tmp_path, engine)
    await h.start()
    try:
        await h.apps.apply([spec("bad", 2, mode=Mode.EBPF), spec("good", 2, port=18001)])
        await h.until(lambda: h.rules.backends("good") == ["good-1", "good-2"])
        w = h.controller.worker("bad")
        assert w is not None
        await h.until(lambda: w.view.pass_error is not None, what="bad app's error")
        assert "already in use" in (w.view.pass_error or "")
        engine.kill("good-1")
        took = await h.until(lambda: h.rules.backends("good") == ["good-2"], 1.0)
        await h.until(lambda: h.rules.backends("good") == ["good-1", "good-2"], 2.0)
        # On the loop's clock (virtual): the event took it out, not a periodic pass
        assert took < h.settings.worker.resync_interval, took
    finally:
        await h.stop()


async def test_remove_errors_and_slow_stops_stay_with_their_app(tmp_path: Path) -> None:
    engine = FakeEngine()
    # "slow" ignores SIGTERM: every stop takes its whole grace; "err" cannot be removed
    engine.remove_delay = lambda c: 2.0 if c.app == "slow" else 0.0
    engine.remove_error = lambda c: "removal of container failed: device busy" \
        if c.app == "err" else None
    h = harness(tmp_path, engine)
    await h.start()
    try:
        await h.apps.apply([spec("slow", 12), spec("err", 2, port=18001),
                            spec("ok", 2, port=18002)])
        await h.until(lambda: len(h.rules.backends("slow")) == 12
                      and len(h.rules.backends("err")) == 2 and len(h.rules.backends("ok")) == 2)
        await h.apps.scale("slow", 1)
        await h.apps.scale("err", 1)
        await h.until(lambda: h.rules.backends("slow") == ["slow-1"], 1.0)
        engine.kill("ok-2")
        out = await h.until(lambda: h.rules.backends("ok") == ["ok-1"], 1.0, "ok-2 out")
        back = await h.until(lambda: h.rules.backends("ok") == ["ok-1", "ok-2"], 2.0,
                             "ok-2 back")
        slow_left = len([c for c in engine.containers.values() if c.c.app == "slow"])
        # On the loop's clock: ok-2 was out at once and back before the slow stops (2 s
        # each) ended; they went on meanwhile, in parallel, not one after another
        assert out < h.settings.worker.resync_interval and slow_left > 1, (out, slow_left)
        assert out + back < 2.0, (out, back)
        await h.until(lambda: len([c for c in engine.containers.values()
                                   if c.c.app == "slow"]) == 1, 4.0, "slow ones gone")
    finally:
        await h.stop()


async def test_an_unhealthy_replica_is_replaced_after_the_grace(tmp_path: Path) -> None:
    engine = FakeEngine()
    sick: set[str] = set()

    def answers(spec: AppSpec, fail: Callable[[str], None],
                bridges: Mapping[str, str | None]) -> Answers:
        async def probe(c: Container) -> ProbeResult:
            return OK if c.running and c.name not in sick else failed(Failure.REFUSED)
        return probe

    h = harness(tmp_path, engine, settings=worker_settings(unhealthy_grace=0.3),
                answers=answers)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2)])
        await h.until(lambda: h.rules.backends("web") == ["web-1", "web-2"])
        old = next(c.id for c in engine.running("web") if c.name == "web-2")
        sick.add("web-2")
        await h.until(lambda: h.rules.backends("web") == ["web-1"], 1.0, "sick one out")
        # replaced by a new container (it gets the next free index while the old drains)
        await h.until(lambda: len(engine.running("web")) == 2
                      and old not in engine.containers, 3.0, "replacement")
        sick.clear()
        await h.until(lambda: len(h.rules.backends("web")) == 2, 2.0)
    finally:
        await h.stop()


async def test_rm_survives_a_restart_and_drains_on_the_old_port(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.remove_delay = lambda c: 0.5
    h = harness(tmp_path, engine)
    await h.start()
    await h.apps.apply([spec("web", 3, port=18100)])
    await h.until(lambda: len(h.rules.backends("web")) == 3)
    await h.apps.delete("web")
    await h.until(lambda: h.rules.backends("web") == [], 1.0, "rules gone first")
    await h.stop()  # the daemon dies in the middle of the drains
    assert engine.running("web"), "the test must restart with replicas left"
    asked: list[int] = []

    async def counting(pid: int, port: int, host: bool = False) -> int:
        asked.append(port)
        return 0

    h2 = harness(tmp_path, engine, open_connections=counting)
    await h2.start()
    try:
        await asyncio.wait_for(h2.apps.wait_gone("web", 5), 6)
        assert engine.running("web") == []
        assert "web" not in h2.apps.state.deleted
        # drained on the container port, remembered from the deleted spec
        assert asked and set(asked) == {80}, asked
    finally:
        await h2.stop()


async def test_multi_app_apply_is_all_or_nothing(tmp_path: Path) -> None:
    from lbctl.model import InvalidInput

    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("a", 1), spec("b", 1, port=18001)])
        before = (tmp_path / "state.json").read_bytes()
        try:
            await h.apps.apply([spec("a", 3), spec("b", 1, port=18002)])  # b's port: refused
        except InvalidInput as e:
            assert "b exists with publish" in str(e)
        else:
            raise AssertionError("a changed publish must be refused")
        assert (tmp_path / "state.json").read_bytes() == before
        assert h.apps.spec("a").replicas == 1
    finally:
        await h.stop()


async def test_a_failed_rules_sync_is_retried_and_nothing_stops_meanwhile(
    tmp_path: Path,
) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2)])
        await h.until(lambda: len(h.rules.backends("web")) == 2)
        h.rules.fail_next = 3
        await h.apps.scale("web", 1)
        await asyncio.sleep(0.05)
        assert len(h.engine.running("web")) == 2, "no replica stops before its sync succeeded"
        await h.until(lambda: h.rules.backends("web") == ["web-1"], 5.0)
        await h.until(lambda: len(h.engine.running("web")) == 1, 3.0)
    finally:
        await h.stop()


async def test_an_app_whose_rules_are_refused_fails_alone_with_its_error_in_status(
    tmp_path: Path,
) -> None:
    """The host rules left one app out of the shared transaction (quarantine): that app's
    status says why, and nothing of it stops while its new rules are not in; the other app
    syncs and fails over as ever; once its rules are accepted, the error goes."""
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("bad", 2), spec("good", 2, port=18001)])
        await h.until(lambda: len(h.rules.backends("bad")) == 2)
        h.rules.refuse = {"bad": "iptables-restore refused its rules: Bad IP address"}
        await h.apps.scale("bad", 1)
        await h.until(lambda: h.hostrules.error("bad") is not None, what="bad refused")
        report = {a["name"]: a for a in await h.status.report()}
        assert report["bad"]["error"] == "iptables-restore refused its rules: Bad IP address"
        assert report["good"]["error"] is None
        assert h.rules.backends("bad") == ["bad-1", "bad-2"]  # its previous rules
        assert len(h.engine.running("bad")) == 2, "no replica stops before its rules are in"
        h.engine.kill("good-1")
        await h.until(lambda: h.rules.backends("good") == ["good-2"], 1.0, "good fails over")
        h.rules.refuse = {}
        h.hostrules.resync()  # what the periodic full sync does
        await h.until(lambda: h.rules.backends("bad") == ["bad-1"], 5.0)
        await h.until(lambda: len(h.engine.running("bad")) == 1, 3.0)
        assert (await h.status.report("bad"))[0]["error"] is None
    finally:
        await h.stop()


async def test_a_wedged_engine_fails_passes_and_stops_liveness(tmp_path: Path) -> None:
    engine = FakeEngine()
    h = harness(tmp_path, engine, settings=worker_settings(pass_timeout=0.3))
    await h.start()
    try:
        await h.apps.apply([spec("web", 1)])
        await h.until(lambda: len(h.rules.backends("web")) == 1)
        h.controller.last_discovery = asyncio.get_running_loop().time()
        assert h.controller.alive(1.0)
        engine.hang = True
        w = h.controller.worker("web")
        assert w is not None
        await h.until(lambda: w.view.pass_error is not None, 2.0)
        assert "longer than" in (w.view.pass_error or "")
        await asyncio.sleep(1.1)
        assert not h.controller.alive(1.0), "a wedged engine must stop the watchdog"
        engine.hang = False
    finally:
        await h.stop()


# ---- rollouts ---------------------------------------------------------------------------


def _images(engine: FakeEngine, app: str) -> list[str]:
    return sorted(f.image for f in engine.containers.values()
                  if f.c.app == app and f.c.running)


async def test_rolling_update_replaces_one_at_a_time_and_completes(tmp_path: Path) -> None:
    h = harness(tmp_path)
    await h.start()
    try:
        policy = {"monitor": 0.1}
        await h.apps.apply([spec("web", 4, update=policy)])
        await h.until(lambda: len(h.rules.backends("web")) == 4)
        most = 0

        def watch() -> bool:
            nonlocal most
            most = max(most, len(h.rules.backends("web")))
            ro = h.apps.state.apps["web"].rollout
            return ro is not None and str(ro.state) == "complete"

        assert (await h.apps.apply([spec("web", 4, image="img:2", update=policy)])) == {
            "web": "rolling"}
        await h.until(watch, 10.0, "rollout complete")
        assert _images(h.engine, "web") == ["img:2"] * 4
        assert most <= 5, "start-first with parallelism 1: never more than one extra serving"
        rec = h.apps.record("web")
        assert rec is not None and rec.revision == 2
        assert [r.number for r in rec.history] == [1, 2]
    finally:
        await h.stop()


async def test_a_crashing_new_image_rolls_back_by_itself(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.exit_on_start = lambda req: 127 if req.image == "img:2" else None
    h = harness(tmp_path, engine)
    await h.start()
    try:
        await h.apps.apply([spec("web", 3)])
        await h.until(lambda: len(h.rules.backends("web")) == 3)
        await h.apps.apply([spec("web", 3, image="img:2")])
        await h.until(lambda: (ro := h.apps.state.apps["web"].rollout) is not None
                      and str(ro.state) == "rolled-back", 5.0, "rollback")
        ro = h.apps.state.apps["web"].rollout
        assert ro is not None and "exited with code 127" in ro.message
        assert h.apps.spec("web").image == "img:1"
        await h.until(lambda: _images(engine, "web") == ["img:1"] * 3
                      and len(h.rules.backends("web")) == 3, 5.0)
    finally:
        await h.stop()


async def test_a_drained_iptables_replica_loses_its_conntrack_entries_before_its_stop(
    tmp_path: Path,
) -> None:
    """Docker deletes a leaving container's entries racily (lbctl.dataplane.conntrack): lbctl
    deletes them first, once the replica is drained and while it still runs; never in ebpf
    mode, where the address is the sandbox's and serves every replica."""
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("web", 3), spec("fast", 2, mode=Mode.EBPF, port=18001)])
        await h.until(lambda: len(h.rules.backends("web")) == 3)
        await h.until(lambda: len(h.engine.running("fast")) == 2)
        leaving = {c.ip for c in h.engine.running("web") if c.name == "web-3"}
        await h.apps.scale("web", 1)
        await h.apps.scale("fast", 1)
        await h.until(lambda: len(h.engine.running("web")) == 1
                      and len(h.engine.running("fast")) == 1, 3.0, "scaled down")
        forgotten = {ip for ip, _, _, _ in h.conntrack.forgotten}
        assert leaving <= forgotten and len(forgotten) == 2, h.conntrack.forgotten
        assert all(port == 80 and proto == "tcp" and alive
                   for _, port, proto, alive in h.conntrack.forgotten), h.conntrack.forgotten
    finally:
        await h.stop()


async def test_a_drained_dual_stack_replica_loses_the_entries_of_both_families(
    tmp_path: Path,
) -> None:
    """An app published on IPv4 and IPv6 has conntrack entries naming each replica's two
    addresses, for each protocol it serves: all of them go before the replica stops, or the
    IPv6 flows of a UDP publish keep going to the gone replica until they time out."""
    h = harness(tmp_path)
    await h.start()
    try:
        web = AppSpec.from_json({"name": "web", "image": "img:1", "replicas": 2,
                                 "mode": "iptables",
                                 "publish": ["0.0.0.0:18000:53/udp", "[::]:18000:53/udp"]})
        await h.apps.apply([web])
        await h.until(lambda: len(h.engine.running("web")) == 2)
        for n, f in enumerate(h.engine.containers.values()):  # what the engine reports on
            f.c = dataclasses.replace(f.c, ip6=f"fd00::{n + 1}")  # an IPv6 network
        leaving = next(c for c in h.engine.running("web") if c.name == "web-2")
        await h.apps.scale("web", 1)
        await h.until(lambda: len(h.engine.running("web")) == 1, 3.0, "scaled down")
        assert sorted(h.conntrack.forgotten) == sorted(
            [(leaving.ip, 53, "udp", True), (leaving.ip6, 53, "udp", True)]
        ), h.conntrack.forgotten
    finally:
        await h.stop()


async def test_a_network_created_on_the_engine_resyncs_the_host_rules(tmp_path: Path) -> None:
    """Docker puts its FORWARD jumps above lbctl's when it creates a network; the event makes
    the host rules sync at once (a sync puts lbctl's jumps first again), not at the 30 s
    periodic resync."""
    h = harness(tmp_path)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2)])
        await h.until(lambda: len(h.rules.backends("web")) == 2)
        await asyncio.sleep(0.2)  # the passes that brought web up are over
        before = h.rules.syncs
        h.engine.events_q.put_nowait(EngineEvent("create", "net1", None, kind="network"))
        took = await h.until(lambda: h.rules.syncs > before, 1.0, "a sync after the event")
        # On the loop's clock: the event's sync, long before the periodic one
        assert took < h.settings.hostrules.resync_interval / 100, took
    finally:
        await h.stop()


async def test_a_deleted_app_keeps_its_bridges_in_the_rules_until_its_drains_end(
    tmp_path: Path,
) -> None:
    """route_localnet must stay on a bridge while a deleted app's replicas drain 127.0.0.1
    clients' connections: its rules keep the bridges (and no backend) until the last drain."""
    open_conns = {"n": 1}

    async def draining(pid: int, port: int, host: bool = False) -> int:
        return open_conns["n"]

    h = harness(tmp_path, open_connections=draining)
    await h.start()
    try:
        await h.apps.apply([spec("web", 2)])
        await h.until(lambda: len(h.rules.backends("web")) == 2)
        await h.apps.delete("web")

        def rules() -> list[object]:
            return [s for s in h.rules.applied if s.app == "web"]

        await h.until(lambda: h.rules.backends("web") == [] and bool(rules()), 1.0,
                      "backends out, rules kept")
        await asyncio.sleep(0.3)
        (svc,) = rules()
        assert svc.backends == () and svc.bridges == ("docker0",)  # type: ignore[attr-defined]
        assert len(h.engine.running("web")) == 2, "still draining"
        open_conns["n"] = 0
        await h.until(lambda: not rules() and not h.engine.running("web"), 3.0,
                      "rules gone with the last drain")
    finally:
        await h.stop()
