"""What a run of probe results means (readiness.verdicts): thresholds, readiness against
liveness, the last failure; on the loop's virtual clock (tests/controller/conftest.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.controller.readiness.verdicts import Prober
from lbctl.model import ROLE_REPLICA, Container, ReplicaState
from lbctl.model.readiness import ReadinessProbe

PROBE = ReadinessProbe(path="/ready")  # 3 failures out, 1 success in, 0.25 s apart
C = Container(id="c1", name="web-1", app="web", role=ROLE_REPLICA, managed=True, index=1,
              running=True, health=None, ip="10.0.0.2", pid=100, started_at=0.0)
S503 = failed(Failure.STATUS, "503 on /ready", 503)


async def feed(p: Prober, results: list[ProbeResult], probe: ReadinessProbe = PROBE,
               c: Container = C) -> list[ReplicaState]:
    """Each result one interval after the last; the state after each."""
    states = []
    for r in results:
        await asyncio.sleep(probe.interval)

        async def answer(_: Container, r: ProbeResult = r) -> ProbeResult:
            return r

        states.append((await p.check(c, answer, probe))[0])
    return states


async def test_a_replica_is_ready_after_its_success_threshold_and_starting_until() -> None:
    p = Prober(wall=lambda: 1000.0)
    twice = replace(PROBE, success_threshold=2)
    assert await feed(p, [S503, S503, OK, OK], twice) == [ReplicaState.STARTING] * 3 + [
        ReplicaState.READY]
    # Never ready yet: however many failures, it is starting (a rollout gives it
    # ready_timeout), and the last failure says what it waits for.
    rec = p.records["c1"]
    assert rec.to_json()["last_failure"] == {"reason": "status", "status": 503,
                                             "message": "status: 503 on /ready", "at": 1000.0}


async def test_failing_readiness_takes_it_out_at_the_threshold_and_back_at_the_first_pass(
) -> None:
    p = Prober()
    await feed(p, [OK])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    states = await feed(p, [S503, S503, S503, S503, OK])
    assert states == [ReplicaState.READY, ReplicaState.READY, ReplicaState.UNREADY,
                      ReplicaState.UNREADY, ReplicaState.READY]
    # Out on the third failure in a row, 3 intervals after the last pass: 0.75 s by default.
    assert p.verdicts()["c1"].since - t0 == 5 * PROBE.interval  # back in: since the pass
    # One failure between passes is never a verdict.
    assert await feed(p, [S503, OK, S503, S503, OK]) == [ReplicaState.READY] * 5


async def test_a_replica_that_stops_listening_is_unhealthy_not_only_unready() -> None:
    p = Prober()
    await feed(p, [OK])
    refused = failed(Failure.REFUSED, "connection refused")
    assert await feed(p, [refused] * 3) == [ReplicaState.READY] * 2 + [ReplicaState.UNHEALTHY]
    # Listening again but answering 503: alive, so unready (kept), not replaced.
    assert (await feed(p, [S503] * 3))[-1] is ReplicaState.UNREADY
    assert p.records["c1"].failures == 6


async def test_the_engines_health_check_is_liveness() -> None:
    p = Prober()
    await feed(p, [OK])
    sick = replace(C, health="unhealthy")
    assert await feed(p, [OK], c=sick) == [ReplicaState.UNHEALTHY]  # at once, no threshold
    assert await feed(p, [OK], c=replace(C, health="healthy")) == [ReplicaState.READY]


async def test_a_probe_that_raises_is_a_failed_probe_with_the_reason() -> None:
    p = Prober()

    async def boom(_: Container) -> ProbeResult:
        raise OSError("netlink: no such process")

    _, _, result = await p.check(C, boom, PROBE)
    assert result is not None and result.failure is Failure.ERROR
    assert result.line == "error: netlink: no such process"
