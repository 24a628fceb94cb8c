"""What the controller asks of a data plane, in the controller's words: the host rules'
`Service` of an app (its published addresses and the `Backend`s behind them) and the
`Member`s of an ebpf app's selection table. The data planes (lbctl.dataplane) take these;
the controller builds them (controller.backends) without importing any data plane."""

from __future__ import annotations

from dataclasses import dataclass

from lbctl.model.publish import Publish


@dataclass(frozen=True)
class Backend:
    """One replica the data plane may send new connections to."""

    name: str  # replica name, e.g. "web-2" (rule comments, counters)
    ip: str  # container IPv4 (after for_family(.., 6): its IPv6 address)
    port: int  # container port
    # Share of new connections relative to the other backends (a canary's weight); the
    # statistic rules turn weights into probabilities, 1:1:1 into kube-proxy's 1/(n-i).
    weight: int = 1
    ip6: str | None = None  # container IPv6, where its network has IPv6


@dataclass(frozen=True)
class Service:
    """One published app: the host addresses it answers on and the replicas behind it."""

    app: str
    publish: Publish
    backends: tuple[Backend, ...]  # stable order (the controller sorts by name)
    # Host bridges of the backends; route_localnet goes on each. More than one when an app's
    # backends live on several networks (lbctl's replicas on docker0 beside containers that
    # `docker-compose up` started on its project's br-<id> and lbctl adopted).
    bridges: tuple[str, ...]
    # Further publishes of the app (model.AppSpec.extra_publishes): same container port and
    # protocol, another address or family.
    extra_publishes: tuple[Publish, ...] = ()
    # The app's traffic hold (epoch seconds, lbctl.model.hold): new connections to its
    # publishes wait until then (iptables mode: their SYNs are dropped, and sent again).
    hold_until: float | None = None

    @property
    def publishes(self) -> tuple[Publish, ...]:
        return (self.publish, *self.extra_publishes)


@dataclass(frozen=True)
class Bound:
    """Where and as whom a replica's listener is bound: what another socket must copy to join
    its reuseport group (the kernel groups sockets of one family, v6only setting, address,
    port and owner)."""

    family: int  # 4 or 6
    addr: str  # "0.0.0.0", "::", "10.1.2.3" (compressed)
    port: int
    v6only: bool
    uid: int

    @property
    def text(self) -> str:
        """ADDR:PORT, an IPv6 address in brackets, "/v6only" for an IPv6-only socket (what
        the hold container's `pause hold` takes)."""
        if self.family == 4:
            return f"{self.addr}:{self.port}"
        return f"[{self.addr}]:{self.port}" + ("/v6only" if self.v6only else "")


@dataclass(frozen=True)
class Member:
    name: str  # replica name, e.g. "web-2"
    pid: int  # host PID of the replica container's init process
    weight: int = 1
