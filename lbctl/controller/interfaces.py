"""What the controller needs from the world, as Protocols: the engine, the eBPF data plane, the
host's rules, the host-port placeholders and the host facts probes and drains ask about. The
real implementations (lbctl.runtime, lbctl.dataplane) satisfy them structurally and the daemon
injects them; the controller never imports an adapter (tests/controller/test_imports.py), so
tests put fakes here to drive it without an engine or a kernel (tests/controller/fakes.py,
checked against these by mypy).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from lbctl.controller.readiness.outcome import ProbeResult
from lbctl.model import AppSpec, Container, Publish
from lbctl.model.dataplane import Bound, Member, Service
from lbctl.model.log_lines import LogLine
from lbctl.model.runtime import (
    CreateRequest,
    EngineEvent,
    ImageFacts,
    NetworkFacts,
    NetworkSpec,
    PathEntry,
    VolumeFacts,
)


class EnginePort(Protocol):
    url: str

    async def list_containers(self, app: str | None = None) -> list[Container]: ...

    async def create_and_start(self, req: CreateRequest) -> str: ...

    async def stop_and_remove(self, container_id: str, grace: int) -> None: ...

    async def ensure_network(self, spec: NetworkSpec) -> bool: ...

    async def remove_network(self, name: str, labels: Mapping[str, str]) -> bool: ...

    async def image_exists(self, image: str) -> bool: ...

    async def image_facts(self, image: str) -> ImageFacts | None: ...

    async def cpu_count(self) -> int | None: ...

    async def network(self, name: str) -> NetworkFacts | None: ...

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool: ...

    async def volume(self, name: str) -> VolumeFacts | None: ...

    async def remove_volume(self, name: str) -> bool: ...

    async def count_labelled(self, kind: str, label: str, value: str) -> int: ...

    async def logs_tail(self, container_id: str, lines: int = 3) -> str: ...

    def logs(self, container_id: str, *, follow: bool, since: int | None = None,
             tail: int | None = None) -> AsyncIterator[LogLine]: ...

    def events(self) -> AsyncIterator[EngineEvent | None]: ...

    def forget(self, container_id: str) -> None: ...


class EbpfPort(Protocol):
    async def sync(
        self,
        app: str,
        port: int,
        netns_pid: int,
        ready: Sequence[Member],
        draining: Sequence[Member] = (),
        proto: str = "tcp",
        probing: Sequence[Member] = (),
        holds: Sequence[Member] = (),
    ) -> None: ...

    async def probe_socket(
        self, app: str, replica: str, pid: int, family: int
    ) -> tuple[socket.socket, str] | None: ...

    async def bound(self, pid: int, port: int, proto: str = "tcp") -> list[Bound]: ...

    async def queued(self, pid: int, port: int) -> int: ...

    async def has_listener(
        self, pid: int, port: int, name: str | None = None, proto: str = "tcp"
    ) -> bool: ...

    async def active_flows(self, app: str, replica: str, within: float) -> int: ...

    async def counters(self, app: str) -> dict[str, int]: ...

    async def holds(self, app: str, replica: str, pid: int) -> bool | None: ...

    async def reasons(self, app: str) -> dict[str, int]: ...

    async def remove(self, app: str) -> None: ...

    def pinned_apps(self) -> list[str]: ...


class ActivationPort(Protocol):
    """Socket activation's hand-over (lbctl.dataplane.activation.ActivationServer): a Unix
    socket per replica of an activated app, through which the daemon hands it listeners of
    the host's namespace; the shim the replicas run in front of their image's entrypoint."""

    shim: Path

    def unavailable(self) -> str | None: ...

    def serve(self, app: str, replica: str, publishes: Sequence[Publish]) -> Path: ...

    def keep(self, app: str, replicas: Collection[str]) -> None: ...

    def remove(self, app: str) -> None: ...

    async def own_listener(self, pid: int, port: int, proto: str) -> bool: ...

    async def accepts(self, sock: socket.socket, address: tuple[str, int], pid: int,
                      timeout: float) -> str | None: ...

    async def shut_down(self, pid: int, port: int, proto: str) -> int: ...


class RulesPort(Protocol):
    async def sync(self, services: Sequence[Service], full: bool = False) -> Mapping[str, str]:
        """The host's rules to `services`; returns app -> error for the apps whose rules
        are not (all) in, which the others' sync did not wait for (lbctl.dataplane.iptables.
        quarantine); raises when the sync failed whole."""
        ...

    async def counters(self) -> dict[tuple[str, str], int]: ...


class Placeholder(Protocol):
    """A socket bound to a host port on an app's behalf (lbctl.dataplane.hostports)."""

    def close(self) -> None: ...


class HostPortHolder(Protocol):
    """Holds each app's host ports with placeholder sockets while the app exists, so that
    nothing else on the host binds them unnoticed (lbctl.dataplane.hostports.HostPorts)."""

    def check_spec(self, spec: AppSpec) -> None: ...

    def reserve(self, publishes: Sequence[Publish]) -> list[Placeholder]: ...

    def hold(self, app: str, publishes: Sequence[Publish],
             socks: Sequence[Placeholder]) -> None: ...

    def ensure_all(self, apps: Mapping[str, Sequence[Publish]]) -> None: ...

    def retry(self) -> None: ...

    def release(self, app: str) -> None: ...

    def conflict(self, app: str) -> str | None: ...


class HostFiles(Protocol):
    """The components of a host path as the engine's mount namespace has them, from `/`
    down, symlinks not followed (lbctl.runtime.hostfiles); OSError when they cannot be
    read."""

    async def walk(self, path: str) -> list[PathEntry]: ...


class Hairpin(Protocol):
    """Puts the bridge ports of a container's namespace in hairpin mode (lbctl.dataplane.
    hairpin); returns the ports it changed."""

    async def __call__(self, pid: int) -> list[str]: ...


class ConnectionCounter(Protocol):
    """Open TCP connections a replica still has on its port (what a TCP drain waits to reach
    0; UDP drains are in lbctl.controller.draining). `host`: its listeners are the host's
    (socket activation), and so are the connections they accepted."""

    async def __call__(self, pid: int, port: int, host: bool = False) -> int: ...


class FlowForgetter(Protocol):
    """Deletes the conntrack entries of connections NATed to a backend address and port
    (lbctl.dataplane.conntrack.forget_backend): what a drained iptables-mode replica leaves
    behind, which Docker would otherwise delete racily when it stops."""

    async def __call__(self, ip: str, port: int, proto: str = "tcp") -> int: ...


class Ipv6Settled(Protocol):
    """Whether the IPv6 address of a host bridge left duplicate address detection (lbctl.
    dataplane.hostnet.ipv6_settled): a tentative one does not serve yet."""

    def __call__(self, iface: str | None, /) -> bool: ...


# Whether one replica answers now, and how it failed (readiness.answers builds one per app's
# spec).
Answers = Callable[[Container], Awaitable[ProbeResult]]


class AnswersFor(Protocol):
    """How the replicas of `spec` are asked whether they serve (readiness.answers.Questions;
    tests put one that answers as they like). `fail` records an error the app must fix;
    `bridges` maps a container id to the bridge its DNAT traffic crosses."""

    def __call__(self, spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> Answers: ...
