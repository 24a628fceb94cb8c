"""Which replicas a probe round asks, with fakes for the answers and the socket map."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from lbctl.controller import interfaces
from lbctl.controller.interfaces import EbpfPort
from lbctl.controller.readiness.rounds import ReplicaProbes
from lbctl.model import ROLE_REPLICA, AppSpec, Container, Mode, Publish, ReplicaState
from lbctl.settings import ProbeSettings


class Map:
    """The socket map's answer per replica (None: no program loaded)."""

    def __init__(self) -> None:
        self.held: dict[str, bool | None] = {}

    async def holds(self, app: str, replica: str, pid: int) -> bool | None:
        return self.held.get(replica, True)


class Answers:
    """What each replica answers (an interfaces.AnswersFor), and who was asked."""

    def __init__(self) -> None:
        self.ok: dict[str, bool] = {}
        self.asked: list[str] = []

    def __call__(self, spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> interfaces.Answers:
        return self.ask

    async def ask(self, c: Container) -> bool:
        self.asked.append(c.name)
        return self.ok.get(c.name, True)


def no_fail(message: str) -> None:
    raise AssertionError(message)


_answers: interfaces.AnswersFor = Answers()  # checked by mypy against the Protocol


def _c(name: str, running: bool = True) -> Container:
    return Container(id=f"id-{name}", name=name, app="web", role=ROLE_REPLICA, managed=True,
                     index=1, running=running, health=None, ip="10.0.0.2", pid=100,
                     started_at=0.0)


SPEC = AppSpec("web", "img", Publish("127.0.0.1", 80, 8080, "tcp"), 2, Mode.EBPF)


async def test_ready_ebpf_replicas_are_asked_only_when_the_map_lost_them() -> None:
    sockmap, answers = Map(), Answers()
    probes = ReplicaProbes("web", answers, cast(EbpfPort, sockmap), ProbeSettings())
    cs = [_c("web-1"), _c("web-2"), _c("web-3", running=False)]
    assert await probes.round(SPEC, cs, no_fail, frozenset(), only_new=True)
    assert answers.asked == ["web-1", "web-2"]  # a stopped replica is never probed
    assert probes.ever_ready == {"id-web-1", "id-web-2"}
    answers.asked.clear()
    assert not await probes.round(SPEC, cs, no_fail, frozenset(), only_new=False)
    assert answers.asked == []  # both listeners still in the map: no socket-table read
    sockmap.held["web-2"] = False
    answers.ok["web-2"] = False
    await probes.round(SPEC, cs, no_fail, frozenset(), only_new=False)
    assert answers.asked == ["web-2"]
    # one lost probe is not a verdict yet; the second is
    assert probes.verdicts()["id-web-2"].state is ReplicaState.READY
    assert await probes.round(SPEC, cs, no_fail, frozenset(), only_new=False)
    assert probes.verdicts()["id-web-2"].state is ReplicaState.UNHEALTHY
    assert "id-web-2" in probes.ever_ready  # it was ready once


async def test_leaving_replicas_are_left_alone_and_gone_ones_forgotten() -> None:
    answers = Answers()
    probes = ReplicaProbes("web", answers, None, ProbeSettings())
    spec = AppSpec("web", "img", Publish("127.0.0.1", 80, 8080, "tcp"), 2, Mode.IPTABLES)
    cs = [_c("web-1"), _c("web-2")]
    await probes.round(spec, cs, no_fail, frozenset({"id-web-2"}), only_new=False)
    assert answers.asked == ["web-1"]
    await probes.round(spec, cs, no_fail, frozenset(), only_new=False)
    assert answers.asked == ["web-1", "web-1", "web-2"]  # iptables mode asks every round
    probes.forget_missing({"id-web-2"})
    assert set(probes.verdicts()) == {"id-web-2"} and probes.ever_ready == {"id-web-2"}
