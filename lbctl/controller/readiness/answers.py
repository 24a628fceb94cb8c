"""How a replica of a given app is asked whether it serves: per mode, protocol and probe kind.

iptables mode: each replica has addresses of its own, so a probe connects to the replica's
address of each family the app publishes (a replica listening on IPv4 alone must not take
IPv6 clients it cannot answer): a TCP connect, or the HTTP GET of the app's readiness path.
UDP has no handshake: a running (and healthy) replica is all that is known.

ebpf mode: the replicas share the sandbox's address and port, so a connect would be answered
by whichever replica the program picks. The TCP kind therefore looks for a socket of the app's
protocol on the port in the replica's own processes (in whatever families it binds, every one
with SO_REUSEPORT); the HTTP kind asks through the replica's slot in the socket map
(EbpfPort.probe_socket: a source port the program steers to that slot), once its listener is
in the map; before that, a replica found listening is `joining` (the next pass inserts it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

from lbctl.controller.interfaces import Answers, EbpfPort, Ipv6Settled
from lbctl.controller.readiness import http
from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.model import AppSpec, Container, Mode
from lbctl.model.errors import ListenerError


class Questions:
    """The probe of each app's replicas (an interfaces.AnswersFor): the eBPF data plane for
    listeners and probe sockets, the host for whether a bridge's IPv6 address settled."""

    def __init__(self, ebpf: EbpfPort | None, ipv6_settled: Ipv6Settled) -> None:
        self.ebpf = ebpf
        self.ipv6_settled = ipv6_settled

    def __call__(self, spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> Answers:
        """The probe for `spec`'s replicas; `fail` records an error the app itself must fix.

        `bridges`: container id -> the bridge its DNAT traffic crosses (its own, or its
        sandbox's in ebpf mode). An app that publishes IPv6 is not served over IPv6 while
        that bridge's address is tentative (hostnet.ipv6_settled), so no replica of it is
        ready then.
        """
        probe = spec.readiness
        port = spec.publish.container_port
        proto = spec.publish.proto
        families = sorted({p.family for p in spec.publishes})
        ebpf, settled = self.ebpf, self.ipv6_settled
        http_kind = probe.path is not None and proto == "tcp"

        async def listening(c: Container) -> bool:
            assert ebpf is not None and c.pid is not None
            try:
                return await ebpf.has_listener(c.pid, port, c.name, proto)
            except ListenerError as e:
                fail(str(e))
                return False

        async def answers(c: Container) -> ProbeResult:
            if 6 in families and not settled(bridges.get(c.id, c.bridge)):
                return failed(Failure.UNSETTLED, "the bridge's IPv6 address is tentative")
            if spec.mode is Mode.EBPF:
                if ebpf is None or c.pid is None:
                    return failed(Failure.NO_LISTENER, "no process to ask")
                if not http_kind:
                    if await listening(c):
                        return OK
                    return failed(Failure.NO_LISTENER, f"nothing listens on {port}/{proto}")
                result = OK
                for family in families:
                    got = await ebpf.probe_socket(spec.name, c.name, c.pid, family)
                    if got is None:
                        if await listening(c):
                            return failed(Failure.JOINING, "listening, not in the socket map yet")
                        return failed(Failure.NO_LISTENER, f"nothing listens on {port}/{proto}")
                    sock, address = got
                    result = await http.ask(sock, (address, port), probe)
                    if not result.ok:
                        return result
                return result
            if proto == "udp":
                return OK
            addresses = [c.ip if f == 4 else c.ip6 for f in families]
            if not all(addresses):
                return failed(Failure.ERROR, "no address of every published family yet")
            result = OK
            for ip in addresses:
                assert ip is not None
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                result = await http.ask(http.new_socket(family, http_kind), (ip, port), probe)
                if not result.ok:
                    return result
            return result

        return answers
