"""What a drain waits for before a replica is stopped, per mode and protocol.

A draining replica is out of the data plane for new clients; what it still serves decides
when stopping it loses nobody:

TCP, both modes: its open connections on the port plus its accept queue
(sockets.established_connections), which it must finish. In iptables mode a connection whose
SYN was DNATed to the replica just before the rules changed is still in its handshake when the
drain first looks (a request socket, owned by no process, that the count cannot see): the
drain never ends before `handshake_settle`, by when such a connection is established and
counted (a handshake between the host and its own bridge takes well under a millisecond;
0.3 s leaves a wide margin on a loaded host and costs a scale-down nothing noticeable).

UDP, ebpf mode: the program keeps every flow the replica had on it while it drains (its socket
stays in the socket map) and places new flows elsewhere; the drain waits until none of its
flows sent a datagram for `flow_idle` seconds (EbpfDataplane.active_flows).  Why 2 s: request
and answer protocols (DNS, a QUIC handshake) finish within milliseconds and a client's first
retransmission comes after about 1 s, so a flow quiet for 2 s has nothing in flight; a flow
quiet for longer is a session that pauses, and waiting for its end could only end at the drain
timeout anyway.  Its next datagram is placed on a ready replica (a QUIC client then learns
from a stateless reset that it must reconnect).  The drain timeout bounds it all, as for TCP.

UDP, iptables mode: the rules sync that takes a replica out also deletes its conntrack
entries (lbctl.dataplane.conntrack, as kube-proxy does), so its flows move to the other
replicas with their next datagram; counting its conntrack entries would always find 0.  The
drain waits `flow_idle` once, for the answers to datagrams that reached it just before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from lbctl.controller import clock
from lbctl.controller.interfaces import ConnectionCounter, EbpfPort, FlowForgetter
from lbctl.model import AppSpec, Container, Mode
from lbctl.settings import DrainSettings

log = logging.getLogger("lbctl.controller")

# (container, clock time its drain began) -> what it still serves; the drain ends at 0.
Pending = Callable[[Container, float], Awaitable[int]]
# Run once a replica is drained, before its stop.
BeforeStop = Callable[[Container], Awaitable[None]]


class Drains:
    """What draining replicas still serve, and what goes before they stop; the same for every
    app (each call is given the app's spec)."""

    def __init__(self, ebpf: EbpfPort | None, open_connections: ConnectionCounter,
                 forget_flows: FlowForgetter, settings: DrainSettings,
                 now: Callable[[], float] = clock.monotonic) -> None:
        self.ebpf = ebpf
        self.open_connections = open_connections
        self.forget_flows = forget_flows
        self.settings = settings
        self.now = now

    def pending_for(self, spec: AppSpec) -> Pending:
        """What `spec`'s draining replicas still serve (see the module doc)."""
        # An activated replica serves listeners of the host's namespace on HOST_PORT.
        port = spec.publish.host_port if spec.activated else spec.publish.container_port
        ebpf, settle, idle = self.ebpf, self.settings.handshake_settle, self.settings.flow_idle

        async def pending(c: Container, since: float) -> int:
            if c.pid is None:
                return 0
            if spec.publish.proto == "tcp":
                n = await self.open_connections(c.pid, port, spec.activated)
                if spec.mode is Mode.IPTABLES and self.now() - since < settle:
                    return max(n, 1)
                return n
            if spec.mode is Mode.EBPF:
                if ebpf is None:
                    return 0
                return await ebpf.active_flows(spec.name, c.name, idle)
            return 1 if self.now() - since < idle else 0

        return pending

    def before_stop(self, spec: AppSpec) -> BeforeStop | None:
        """iptables mode: a drained replica's conntrack entries go before it stops (why:
        lbctl.dataplane.conntrack). Never in ebpf mode, where a replica's address is the
        sandbox's and its entries are every replica's connections."""
        if spec.mode is not Mode.IPTABLES:
            return None
        served = sorted({(p.container_port, p.proto) for p in spec.publishes})

        async def forget(c: Container) -> None:
            # Both families: an IPv6 publish's entries name the replica's IPv6 address.
            for ip in (c.ip, c.ip6):
                for port, proto in served:
                    if ip is not None:
                        n = await self.forget_flows(ip, port, proto)
                        log.debug("forgot %d conntrack entries of %s at %s", n, c.name, ip,
                                  extra={"app": spec.name, "replica": c.name})

        return forget
