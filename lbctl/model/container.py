"""Containers as the engine shows them, and the states lbctl reports for replicas.

Engine differences (Docker or Podman, health in one field or another, `container:<id>`
network modes) are smoothed over in lbctl.runtime before a `Container` is built, so nothing
above the runtime parses engine syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ReplicaState(StrEnum):
    """What lbctl reports for a replica. Readiness is not liveness (as in Kubernetes): an
    `unready` replica fails its readiness probe and is out of the data plane until it passes
    again, but it is alive and kept; an `unhealthy` one is not alive (its engine health check
    says so, it no longer listens on its port, or it is frozen) and is replaced after a grace
    period unless it recovers."""

    STARTING = "starting"  # running, not ready yet (never was since it started)
    READY = "ready"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    UNREADY = "unready"


@dataclass(frozen=True)
class Container:
    """One container labelled `lbctl.app`."""

    id: str
    name: str
    app: str
    role: str  # ROLE_REPLICA, ROLE_SANDBOX, ROLE_HOLD or ROLE_RELEASE
    managed: bool  # created by lbctl (never remove one that is not)
    index: int | None  # replica index for managed replicas
    running: bool
    health: str | None  # "healthy", "unhealthy", "starting", or None when the image has none
    ip: str | None  # address on its network (the sandbox's for ebpf-mode replicas)
    pid: int | None  # init PID on the host, for socket discovery
    started_at: float | None  # epoch seconds
    paused: bool = False  # frozen by `docker pause`: alive, but answers nobody
    joined_to: str | None = None  # id of the container whose network namespace it joined
    bridge: str | None = None  # host bridge interface its network lives on (docker0, br-...)
    spec_hash: str | None = None  # the spec revision it was created from (lbctl.spec-hash)
    revision: int | None = None  # that revision's number (lbctl.revision)
    exit_code: int | None = None  # for a container that is not running: how it ended
    stop_timeout: int | None = None  # seconds it was created to get between TERM and KILL
    ip6: str | None = None  # global IPv6 address on that network, where it has IPv6
    hold: str | None = None  # a hold container's deadline (lbctl.hold-until: model.hold_tag)
