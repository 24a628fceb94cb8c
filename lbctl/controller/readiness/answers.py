"""How a replica of a given app is asked whether it serves: per mode and protocol.

ebpf mode: a socket of the app's protocol on the port in the replica's own processes (replicas
share the sandbox's address, so a connect would not tell them apart), in whatever families
the replica binds, every one of them with SO_REUSEPORT: a TCP listener, or an unconnected UDP
socket; iptables mode: a TCP connect to each of the replica's addresses whose family the app
publishes; UDP has no handshake there, so a running (and healthy) replica is all that is
known.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from lbctl.controller.interfaces import Answers, EbpfPort, Ipv6Settled
from lbctl.model import AppSpec, Container, Mode
from lbctl.model.errors import ListenerError
from lbctl.settings import ProbeSettings


async def tcp_probe(ip: str, port: int, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(ip, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Questions:
    """The probe of each app's replicas (an interfaces.AnswersFor): the eBPF data plane for
    listeners, the host for whether a bridge's IPv6 address settled."""

    def __init__(self, ebpf: EbpfPort | None, ipv6_settled: Ipv6Settled,
                 settings: ProbeSettings) -> None:
        self.ebpf = ebpf
        self.ipv6_settled = ipv6_settled
        self.connect_timeout = settings.connect_timeout

    def __call__(self, spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> Answers:
        """The probe for `spec`'s replicas; `fail` records an error the app itself must fix.

        `bridges`: container id -> the bridge its DNAT traffic crosses (its own, or its
        sandbox's in ebpf mode). An app that publishes IPv6 is not served over IPv6 while
        that bridge's address is tentative (hostnet.ipv6_settled), so no replica of it is
        ready then.
        """
        port = spec.publish.container_port
        families = {p.family for p in spec.publishes}
        ebpf, settled, timeout = self.ebpf, self.ipv6_settled, self.connect_timeout

        async def answers(c: Container) -> bool:
            if 6 in families and not settled(bridges.get(c.id, c.bridge)):
                return False
            if spec.mode is Mode.EBPF:
                if ebpf is None or c.pid is None:
                    return False
                try:
                    return await ebpf.has_listener(c.pid, port, c.name, spec.publish.proto)
                except ListenerError as e:
                    fail(str(e))
                    return False
            if spec.publish.proto == "udp":
                return True
            # Each family the app publishes is asked at the replica's address of that family:
            # a replica listening on IPv4 alone must not take IPv6 clients it cannot answer.
            addresses = [c.ip if f == 4 else c.ip6 for f in sorted(families)]
            if not all(addresses):
                return False
            for ip in addresses:
                assert ip is not None
                if not await tcp_probe(ip, port, timeout):
                    return False
            return True

        return answers
