"""Which replicas a probe round asks, and when, with fakes for the answers and the socket map
(on the loop's virtual clock, tests/controller/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import cast

from lbctl.controller import interfaces
from lbctl.controller.interfaces import EbpfPort
from lbctl.controller.metrics import Metrics
from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.controller.readiness.rounds import ReplicaProbes
from lbctl.model import ROLE_REPLICA, AppSpec, Container, Mode, Publish, ReplicaState
from lbctl.model.readiness import ReadinessProbe
from lbctl.settings import ProbeSettings


class Map:
    """The socket map's answer per replica (None: no program loaded)."""

    def __init__(self) -> None:
        self.held: dict[str, bool | None] = {}

    async def holds(self, app: str, replica: str, pid: int) -> bool | None:
        return self.held.get(replica, True)


class Answers:
    """What each replica answers (an interfaces.AnswersFor), how long it takes, and who was
    asked."""

    def __init__(self) -> None:
        self.result: dict[str, ProbeResult] = {}
        self.delay: dict[str, float] = {}
        self.asked: list[str] = []

    def __call__(self, spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> interfaces.Answers:
        return self.ask

    async def ask(self, c: Container) -> ProbeResult:
        self.asked.append(c.name)
        await asyncio.sleep(self.delay.get(c.name, 0.001))
        return self.result.get(c.name, OK)


def no_fail(message: str) -> None:
    raise AssertionError(message)


_answers: interfaces.AnswersFor = Answers()  # checked by mypy against the Protocol


def _c(name: str, running: bool = True) -> Container:
    return Container(id=f"id-{name}", name=name, app="web", role=ROLE_REPLICA, managed=True,
                     index=1, running=running, health=None, ip="10.0.0.2", pid=100,
                     started_at=0.0)


SPEC = AppSpec("web", "img", Publish("127.0.0.1", 80, 8080, "tcp"), 2, Mode.EBPF)
HTTP = replace(SPEC, readiness=ReadinessProbe(path="/ready"))


async def rounds(probes: ReplicaProbes, spec: AppSpec, cs: list[Container], n: int,
                 leaving: frozenset[str] = frozenset()) -> None:
    """n rounds the way the worker's probe loop runs them: one interval apart."""
    for _ in range(n):
        await asyncio.sleep(spec.readiness.interval)
        await probes.round(spec, cs, no_fail, leaving, only_new=False)
        await probes.settle()


async def test_ready_ebpf_replicas_are_asked_only_when_the_map_lost_them() -> None:
    sockmap, answers = Map(), Answers()
    probes = ReplicaProbes("web", answers, cast(EbpfPort, sockmap), ProbeSettings())
    cs = [_c("web-1"), _c("web-2"), _c("web-3", running=False)]
    assert await probes.round(SPEC, cs, no_fail, frozenset(), only_new=True)
    assert answers.asked == ["web-1", "web-2"]  # a stopped replica is never probed
    assert probes.ever_ready == {"id-web-1", "id-web-2"}
    answers.asked.clear()
    await rounds(probes, SPEC, cs, 1)
    assert answers.asked == []  # both listeners still in the map: no socket-table read
    sockmap.held["web-2"] = False
    answers.result["web-2"] = failed(Failure.NO_LISTENER)
    await rounds(probes, SPEC, cs, 1)
    assert answers.asked == ["web-2"]
    # one lost probe is not a verdict yet (3 in a row by default); the third is
    await rounds(probes, SPEC, cs, 1)
    assert probes.verdicts()["id-web-2"].state is ReplicaState.READY
    await rounds(probes, SPEC, cs, 1)
    assert probes.verdicts()["id-web-2"].state is ReplicaState.UNHEALTHY  # it stopped listening
    assert "id-web-2" in probes.ever_ready  # it was ready once


async def test_an_http_probe_asks_ready_ebpf_replicas_every_interval() -> None:
    answers = Answers()
    probes = ReplicaProbes("web", answers, cast(EbpfPort, Map()), ProbeSettings())
    cs = [_c("web-1")]
    await probes.round(HTTP, cs, no_fail, frozenset(), only_new=True)
    answers.asked.clear()
    await rounds(probes, HTTP, cs, 4)
    assert answers.asked == ["web-1"] * 4  # no socket-map shortcut: the answer is the point


async def test_leaving_replicas_are_left_alone_and_gone_ones_forgotten() -> None:
    answers = Answers()
    metrics = Metrics()
    probes = ReplicaProbes("web", answers, None, ProbeSettings(), metrics=metrics)
    spec = AppSpec("web", "img", Publish("127.0.0.1", 80, 8080, "tcp"), 2, Mode.IPTABLES)
    cs = [_c("web-1"), _c("web-2")]
    await rounds(probes, spec, cs, 1, leaving=frozenset({"id-web-2"}))
    assert answers.asked == ["web-1"]
    await rounds(probes, spec, cs, 1)
    assert answers.asked == ["web-1", "web-1", "web-2"]  # iptables mode asks every round
    assert 'lbctl_replica_probe_total{app="web",replica="web-1",result="ok"} 2.0' in \
        metrics.render().decode()
    probes.forget_missing({"id-web-2"})
    assert set(probes.verdicts()) == {"id-web-2"} and probes.ever_ready == {"id-web-2"}
    assert 'replica="web-1"' not in metrics.render().decode()  # its series went with it


async def test_a_replica_that_hangs_delays_nobody_elses_verdict() -> None:
    """web-1 takes the probe's whole timeout to answer; web-2 starts failing fast: web-2 is
    out after 3 intervals, as if web-1 were not there, and web-1 is asked once per timeout,
    never twice at once."""
    answers = Answers()
    probes = ReplicaProbes("web", answers, None, ProbeSettings())
    spec = AppSpec("web", "img", Publish("127.0.0.1", 80, 8080, "tcp"), 2, Mode.IPTABLES,
                   readiness=ReadinessProbe(path="/ready"))
    cs = [_c("web-1"), _c("web-2")]
    await probes.round(spec, cs, no_fail, frozenset(), only_new=True)
    changed: list[float] = []
    loop = asyncio.get_running_loop()
    probes.on_change = lambda: changed.append(loop.time())
    answers.delay["web-1"] = 1.0
    answers.result["web-2"] = failed(Failure.STATUS, "503 on /ready", 503)
    answers.asked.clear()
    t0 = loop.time()
    for _ in range(8):  # the worker's loop: a round every interval, never waiting for one
        await asyncio.sleep(spec.readiness.interval)
        await probes.round(spec, cs, no_fail, frozenset(), only_new=False)
    await probes.settle()
    assert probes.verdicts()["id-web-2"].state is ReplicaState.UNREADY
    assert changed and changed[0] - t0 <= 3 * spec.readiness.interval + 0.01, changed
    assert answers.asked.count("web-1") == 2  # one probe under way at a time
