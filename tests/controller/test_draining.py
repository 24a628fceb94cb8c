"""What a drain waits for, per mode and protocol, and a retirement following it: logic with
fakes for the data plane and the engine (the kernel side, active_flows() against real
flows, is in tests/dataplane/test_ebpf_listeners.py; a whole drain under UDP load in
tests/e2e/test_ebpf_udp.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from lbctl.controller import retire
from lbctl.controller.draining import Drains, Pending
from lbctl.controller.interfaces import ConnectionCounter, EbpfPort, EnginePort
from lbctl.model import AppSpec, Container, Mode, Publish
from lbctl.model.dataplane import Bound, Member
from lbctl.model.log_lines import LogLine
from lbctl.model.runtime import (
    CreateRequest,
    EngineEvent,
    ImageFacts,
    NetworkFacts,
    NetworkSpec,
    VolumeFacts,
)
from lbctl.settings import DrainSettings

SETTINGS = DrainSettings()
FLOW_IDLE = SETTINGS.flow_idle


def now() -> float:
    return asyncio.get_running_loop().time()


async def forget(ip: str, port: int, proto: str = "tcp") -> int:
    return 0


def drains(ebpf: EbpfPort | None, conns: ConnectionCounter) -> Drains:
    return Drains(ebpf, conns, forget, SETTINGS)


def replica(pid: int | None = 42) -> Container:
    return Container("c1", "web-1", "web", "replica", True, 1, True, None, "10.0.0.2", pid,
                     0.0)  # fmt: skip


def spec(proto: str, mode: Mode) -> AppSpec:
    return AppSpec("web", "img", Publish("127.0.0.1", 80, 8080, proto), 2, mode)


class FakeEbpf:
    def __init__(self, flows: list[int]) -> None:
        self.flows = flows
        self.asked: list[tuple[str, str, float]] = []

    async def active_flows(self, app: str, replica: str, within: float) -> int:
        self.asked.append((app, replica, within))
        return self.flows.pop(0) if len(self.flows) > 1 else self.flows[0]

    async def sync(self, app: str, port: int, netns_pid: int, ready: Sequence[Member],
                   draining: Sequence[Member] = (), proto: str = "tcp",
                   probing: Sequence[Member] = (),
                   holds: Sequence[Member] = ()) -> None: ...

    async def probe_socket(self, app: str, replica: str, pid: int,
                           family: int) -> tuple[socket.socket, str] | None:
        return None

    async def bound(self, pid: int, port: int, proto: str = "tcp") -> list[Bound]:
        return []

    async def queued(self, pid: int, port: int) -> int:
        return 0

    async def has_listener(self, pid: int, port: int, name: str | None = None,
                           proto: str = "tcp") -> bool:
        return True

    async def counters(self, app: str) -> dict[str, int]:
        return {}

    async def reasons(self, app: str) -> dict[str, int]:
        return {}

    async def remove(self, app: str) -> None: ...

    async def holds(self, app: str, replica: str, pid: int) -> bool | None:
        return None

    def pinned_apps(self) -> list[str]:
        return []


class Connections:
    def __init__(self, left: int) -> None:
        self.left = left
        self.asked: list[tuple[int, int]] = []

    async def __call__(self, pid: int, port: int, host: bool = False) -> int:
        self.asked.append((pid, port))
        return self.left


@pytest.mark.parametrize("mode", [Mode.EBPF, Mode.IPTABLES])
async def test_tcp_waits_for_open_connections_in_both_modes(mode: Mode) -> None:
    conns, ebpf = Connections(3), FakeEbpf([9])
    pending = drains(ebpf, conns).pending_for(spec("tcp", mode))
    assert await pending(replica(), now()) == 3
    assert conns.asked == [(42, 8080)] and ebpf.asked == []


async def test_udp_in_ebpf_mode_waits_for_the_replica_s_recent_flows() -> None:
    conns, ebpf = Connections(3), FakeEbpf([5])
    pending = drains(ebpf, conns).pending_for(spec("udp", Mode.EBPF))
    assert await pending(replica(), now()) == 5
    assert ebpf.asked == [("web", "web-1", FLOW_IDLE)] and conns.asked == []


async def test_udp_in_iptables_mode_waits_the_idle_window_once() -> None:
    pending = drains(None, Connections(3)).pending_for(spec("udp", Mode.IPTABLES))
    t = now()
    assert await pending(replica(), t) == 1
    assert await pending(replica(), t - FLOW_IDLE - 0.1) == 0


async def test_a_replica_without_a_pid_has_nothing_to_drain() -> None:
    pending = drains(None, Connections(3)).pending_for(spec("tcp", Mode.EBPF))
    assert await pending(replica(pid=None), now()) == 0


class FakeEngine:
    url = "fake://"

    def __init__(self) -> None:
        self.stopped: list[tuple[str, float]] = []

    async def stop_and_remove(self, container_id: str, grace: int) -> None:
        self.stopped.append((container_id, now()))

    async def list_containers(self, app: str | None = None) -> list[Container]:
        return []

    async def create_and_start(self, req: CreateRequest) -> str:
        return ""

    async def image_exists(self, image: str) -> bool:
        return True

    async def image_facts(self, image: str) -> ImageFacts | None:
        return ImageFacts()

    async def ensure_network(self, spec: NetworkSpec) -> bool:
        return False

    async def remove_network(self, name: str, labels: Mapping[str, str]) -> bool:
        return False

    async def cpu_count(self) -> int | None:
        return None

    async def network(self, name: str) -> NetworkFacts | None:
        return None

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        return False

    async def volume(self, name: str) -> VolumeFacts | None:
        return None

    async def remove_volume(self, name: str) -> bool:
        return False

    async def count_labelled(self, kind: str, label: str, value: str) -> int:
        return 0

    async def logs_tail(self, container_id: str, lines: int = 3) -> str:
        return ""

    async def logs(self, container_id: str, *, follow: bool, since: int | None = None,
                   tail: int | None = None) -> AsyncIterator[LogLine]:
        return
        yield

    async def events(self) -> AsyncIterator[EngineEvent | None]:
        yield None

    def forget(self, container_id: str) -> None: ...


async def retire_one(pending: Pending | None, drain_timeout: float,
                     poll: float = SETTINGS.poll) -> tuple[float, FakeEngine]:
    """Seconds on the loop's (virtual) clock from the retirement's start to the stop."""
    engine, done = FakeEngine(), asyncio.Event()
    settings = DrainSettings(timeout=drain_timeout, poll=poll, stop_grace=1)
    r = retire.Retirements(engine, settings, done.set)
    t0 = now()
    r.start(replica(), pending)
    await asyncio.wait_for(done.wait(), 5)
    assert [cid for cid, _ in engine.stopped] == ["c1"]
    return engine.stopped[0][1] - t0, engine


async def test_a_retirement_stops_the_replica_once_its_flows_went_quiet() -> None:
    ebpf = FakeEbpf([4, 2, 1, 0])  # flows seen lately, at each poll
    pending = drains(ebpf, Connections(0)).pending_for(spec("udp", Mode.EBPF))
    took, _ = await retire_one(pending, drain_timeout=5, poll=0.01)
    # stopped at the 4th poll, when the flows were quiet: 3 polls in, not at the timeout
    assert len(ebpf.asked) == 4 and took == pytest.approx(3 * 0.01)


async def test_the_drain_timeout_bounds_a_replica_whose_flows_never_go_quiet() -> None:
    ebpf = FakeEbpf([7])
    pending = drains(ebpf, Connections(0)).pending_for(spec("udp", Mode.EBPF))
    took, _ = await retire_one(pending, drain_timeout=0.3, poll=0.01)
    # stopped at the first poll past the timeout, and not before
    assert 0.3 <= took < 0.3 + 2 * 0.01, took


async def test_no_pending_no_drain() -> None:
    took, _ = await retire_one(None, drain_timeout=5)
    assert took == 0


# mypy checks these fakes against the Protocols they stand in for (`make lint`).
_ebpf: EbpfPort = FakeEbpf([0])
_engine: EnginePort = FakeEngine()
_conns: ConnectionCounter = Connections(0)
