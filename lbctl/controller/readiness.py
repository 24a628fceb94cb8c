"""How a replica of a given app is asked whether it serves: per mode and protocol.

ebpf mode: a socket of the app's protocol on the port in the replica's own processes (replicas
share the sandbox's address, so a connect would not tell them apart), in whatever families
the replica binds, every one of them with SO_REUSEPORT: a TCP listener, or an unconnected UDP
socket; iptables mode: a TCP connect to each of the replica's addresses whose family the app
publishes; UDP has no handshake there, so a running (and healthy) replica is all that is
known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lbctl.controller.ports import EbpfPort
from lbctl.controller.probes import Answers, tcp_probe
from lbctl.dataplane.hostnet import ipv6_settled
from lbctl.model import AppSpec, Container, Mode
from lbctl.model.errors import ListenerError


def answers_for(
    spec: AppSpec,
    ebpf: EbpfPort | None,
    fail: Callable[[str], None],
    bridges: Mapping[str, str | None] | None = None,
    settled: Callable[[str | None], bool] = ipv6_settled,
) -> Answers:
    """The probe for `spec`'s replicas; `fail` records an error the app itself must fix.

    `bridges`: container id -> the bridge its DNAT traffic crosses (its own, or its
    sandbox's in ebpf mode). An app that publishes IPv6 is not served over IPv6 while that
    bridge's address is tentative (hostnet.ipv6_settled), so no replica of it is ready then.
    """
    port = spec.publish.container_port
    families = {p.family for p in spec.publishes}

    async def answers(c: Container) -> bool:
        if 6 in families and not settled((bridges or {}).get(c.id, c.bridge)):
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
            if not await tcp_probe(ip, port):
                return False
        return True

    return answers
