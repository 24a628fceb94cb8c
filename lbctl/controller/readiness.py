"""How a replica of a given app is asked whether it serves: per mode and protocol.

ebpf mode: a socket of the app's protocol on the port in the replica's own processes (replicas
share the sandbox's address, so a connect would not tell them apart), in whatever families
the replica binds, every one of them with SO_REUSEPORT: a TCP listener, or an unconnected UDP
socket; iptables mode: a TCP connect to the replica's address; UDP has no handshake there, so
a running (and healthy) replica is all that is known.
"""

from __future__ import annotations

from collections.abc import Callable

from lbctl.controller.ports import EbpfPort
from lbctl.controller.probes import Answers, tcp_probe
from lbctl.dataplane.ebpf import ListenerError
from lbctl.model import AppSpec, Container, Mode


def answers_for(
    spec: AppSpec, ebpf: EbpfPort | None, fail: Callable[[str], None]
) -> Answers:
    """The probe for `spec`'s replicas; `fail` records an error the app itself must fix."""
    port = spec.publish.container_port

    async def answers(c: Container) -> bool:
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
        if not c.ip:
            return False
        return await tcp_probe(c.ip, port)

    return answers
