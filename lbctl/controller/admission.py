"""Admission: what must hold before an app is accepted, beyond valid input. Nothing here
changes anything; a refusal is one line for the user (InvalidInput: HTTP 400, exit code 2).

- the host port is not published by another app, nor served by anything else on the host
  (our DNAT would silently steal its traffic), for every address the app publishes;
- an IPv6 publish finds an IPv6 stack and ip6tables on this host;
- the app's mode works on this host now (ebpf needs root, bcc, a header tree, bpffs);
- the image is on the engine (no registry is assumed reachable).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Sequence

from lbctl.controller.ports import EnginePort
from lbctl.dataplane.hostnet import ipv6_unavailable_reason
from lbctl.model import AppSpec, InvalidInput, Mode


class Admission:
    def __init__(
        self,
        engine: EnginePort,
        ebpf_unavailable: Callable[[], str | None],
        port_check: Callable[[AppSpec], None] | None = None,
        ipv6_unavailable: Callable[[], str | None] = ipv6_unavailable_reason,
    ) -> None:
        self.engine = engine
        self.ebpf_unavailable = ebpf_unavailable
        self.port_check = port_check or check_port_free
        self.ipv6_unavailable = ipv6_unavailable

    async def check_new(
        self, new: Sequence[AppSpec], changed: Sequence[AppSpec], others: Sequence[AppSpec]
    ) -> None:
        """Everything for apps to create (`new`) and apps to change (`changed`)."""
        self.check_clashes([*new, *changed], others)
        for spec in new:
            if spec.wants_ipv6:
                reason = self.ipv6_unavailable()
                if reason:
                    raise InvalidInput(f"cannot publish IPv6 on this host: {reason}")
            for pub in spec.publishes:
                if pub.family == 6 and pub.loopback:
                    raise InvalidInput(
                        f"cannot publish {pub}: the kernel does not NAT IPv6 loopback (::1) "
                        "traffic to a container; publish [::] and connect to one of the "
                        "host's IPv6 addresses (or use 127.0.0.1)"
                    )
            self.port_check(spec)
        for spec in [*new, *changed]:
            if spec.mode is Mode.EBPF:
                reason = self.ebpf_unavailable()
                if reason:
                    raise InvalidInput(
                        f"ebpf mode is not available here ({reason}): use --mode iptables"
                    )
        for image in sorted({s.image for s in [*new, *changed]}):
            if not await self.engine.image_exists(image):
                raise InvalidInput(f"image {image} is not on this engine: build or pull it first")

    @staticmethod
    def check_clashes(specs: Sequence[AppSpec], others: Sequence[AppSpec]) -> None:
        for i, spec in enumerate(specs):
            for other in [*others, *specs[:i]]:
                if other.name == spec.name:
                    continue
                for mine in spec.publishes:
                    if any(mine.clashes_with(theirs) for theirs in other.publishes):
                        raise InvalidInput(
                            f"port {mine.host_addr}/{mine.proto} is already "
                            f"published by app {other.name}"
                        )


def check_port_free(spec: AppSpec) -> None:
    """Refuse a host port that something else on the host already serves (Docker's -p, a
    local server), or an address that is not this host's."""
    for pub in spec.publishes:
        kind = socket.SOCK_STREAM if pub.proto == "tcp" else socket.SOCK_DGRAM
        family = socket.AF_INET6 if pub.family == 6 else socket.AF_INET
        with socket.socket(family, kind) as s:
            if family == socket.AF_INET6:
                # [::] must not look taken because of an IPv4 listener: our rules for one
                # family never catch the other's packets.
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((pub.host_ip, pub.host_port))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    raise InvalidInput(
                        f"{pub.host_ip} in publish {pub} is not an address of this host"
                    ) from None
                raise InvalidInput(
                    f"port {pub.host_addr}/{pub.proto} is already in use on this "
                    f"host ({e.strerror})"
                ) from None
