"""What a drain waits for before a replica is stopped, per mode and protocol.

A draining replica is out of the data plane for new clients; what it still serves decides
when stopping it loses nobody:

TCP, both modes: its open connections on the port plus its accept queue
(sockets.established_connections), which it must finish. In iptables mode a connection whose
SYN was DNATed to the replica just before the rules changed is still in its handshake when the
drain first looks (a request socket, owned by no process, that the count cannot see): the
drain never ends before HANDSHAKE_SETTLE, by when such a connection is established and
counted (a handshake between the host and its own bridge takes well under a millisecond;
0.3 s leaves a wide margin on a loaded host and costs a scale-down nothing noticeable).

UDP, ebpf mode: the program keeps every flow the replica had on it while it drains (its socket
stays in the socket map) and places new flows elsewhere; the drain waits until none of its
flows sent a datagram for FLOW_IDLE seconds (EbpfDataplane.active_flows).  Why 2 s: request
and answer protocols (DNS, a QUIC handshake) finish within milliseconds and a client's first
retransmission comes after about 1 s, so a flow quiet for 2 s has nothing in flight; a flow
quiet for longer is a session that pauses, and waiting for its end could only end at the drain
timeout anyway.  Its next datagram is placed on a ready replica (a QUIC client then learns
from a stateless reset that it must reconnect).  The drain timeout bounds it all, as for TCP.

UDP, iptables mode: the rules sync that takes a replica out also deletes its conntrack
entries (lbctl.dataplane.conntrack, as kube-proxy does), so its flows move to the other
replicas with their next datagram; counting its conntrack entries would always find 0.  The
drain waits FLOW_IDLE once, for the answers to datagrams that reached it just before.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from lbctl.controller.ports import ConnectionCounter, EbpfPort
from lbctl.model import AppSpec, Container, Mode

FLOW_IDLE = 2.0
HANDSHAKE_SETTLE = 0.3

# (container, monotonic time its drain began) -> what it still serves; the drain ends at 0.
Pending = Callable[[Container, float], Awaitable[int]]


def pending_for(
    spec: AppSpec, ebpf: EbpfPort | None, open_connections: ConnectionCounter
) -> Pending:
    """What `spec`'s draining replicas still serve (see the module doc)."""
    port = spec.publish.container_port

    async def pending(c: Container, since: float) -> int:
        if c.pid is None:
            return 0
        if spec.publish.proto == "tcp":
            n = await open_connections(c.pid, port)
            if spec.mode is Mode.IPTABLES and time.monotonic() - since < HANDSHAKE_SETTLE:
                return max(n, 1)
            return n
        if spec.mode is Mode.EBPF:
            if ebpf is None:
                return 0
            return await ebpf.active_flows(spec.name, c.name, FLOW_IDLE)
        return 1 if time.monotonic() - since < FLOW_IDLE else 0

    return pending
