"""What the controller asks of a container engine and hears back, in the controller's words:
a container to create (`CreateRequest`), a network to ensure (`NetworkSpec`) or to know about
(`NetworkFacts`), and a normalized event (`EngineEvent`). lbctl.runtime turns them into the
engine's JSON and back; the controller never imports it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbctl.model.options import RunOptions


@dataclass(frozen=True)
class CreateRequest:
    name: str
    image: str
    labels: Mapping[str, str]
    env: Mapping[str, str]
    command: Sequence[str] = ()
    join: str | None = None  # id of a container whose network namespace this one shares
    sysctls: Mapping[str, str] | None = None
    ulimits: Sequence[Mapping[str, Any]] = ()
    extra_host_config: Mapping[str, Any] = field(default_factory=dict)
    # docker run's options (volumes, limits, health check, ...); `options.network` is not
    # read: `networks` says where the container goes.
    options: RunOptions = field(default_factory=RunOptions)
    # Networks to join, in order (none: the default bridge); ignored with `join`.
    networks: Sequence[str] = ()
    # Names the container answers to on user-defined networks (the app's name).
    aliases: Sequence[str] = ()


@dataclass(frozen=True)
class ImageFacts:
    """What an image says of itself (its inspect's Config): its labels, and what a container
    of it runs when the create names no entrypoint or command (socket activation puts its
    shim in front of exactly that)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkSpec:
    """A bridge network lbctl creates when it is missing: lbctl's own (controller.template) or
    one a compose file declares (controller.admission.Resources)."""

    name: str
    labels: Mapping[str, str]
    ipv6_subnet: str | None = None  # IPv6 enabled with this subnet
    bridge: str | None = None  # host bridge interface name, where the engine lets us pick
    # lbctl's own network: one of this name without `labels` is someone else's, and is
    # refused rather than used (a compose file's network is used as it is found).
    owned: bool = False


@dataclass(frozen=True)
class NetworkFacts:
    """What admission needs to know of an existing network."""

    driver: str  # bridge, overlay, macvlan, ...
    ipv6: bool  # IPv6 enabled: containers there get an IPv6 address
    managed: bool = False  # labelled lbctl.managed=true: lbctl created it


@dataclass(frozen=True)
class VolumeFacts:
    """What the members' policy needs to know of an existing named volume: whose it is
    (labels) and whether it is a plain volume (a local-driver volume with options can bind
    any host path: `-o type=none -o o=bind -o device=/etc`)."""

    driver: str
    options: Mapping[str, str]
    labels: Mapping[str, str]


@dataclass(frozen=True)
class PathEntry:
    """One component of a host path as the engine's mount namespace has it (lstat: a link
    is not followed), from `/` down: what the members' policy judges a bind source by."""

    path: str
    kind: str  # "dir", "file", "symlink", "missing" or "other" (device, socket, fifo)
    uid: int = 0
    gid: int = 0
    mode: int = 0  # permission bits, sticky included
    acl: bool = False  # an access ACL may grant more than the group bits show


@dataclass(frozen=True)
class EngineEvent:
    action: str  # normalized: "health_status" for every health_status: ... variant
    container_id: str
    app: str | None
    signal: int | None = None  # for "kill": the signal the engine is about to send
    kind: str = "container"  # or "network" (container_id is then the network's id)

    @property
    def changes_identity(self) -> bool:
        """The container's PID, address or name may differ afterwards: what was cached about
        it is stale. (`kill` and health changes leave them as they are; the `die` that
        follows a fatal kill says so itself.)"""
        return self.action not in ("kill", "health_status", "pause", "unpause")

    @property
    def fatal(self) -> bool:
        """The container is going away (a kill with a terminating signal, die, stop, oom)."""
        if self.action == "kill":
            return self.signal in (2, 3, 9, 15)
        return self.action in ("die", "stop", "oom", "pause")
