"""Where an app answers on the host: docker's `-p` syntax, parsed and validated.

IPv6 host addresses go in brackets, as with docker: `[::]:80:8080`, `[2001:db8::1]:80:8080`
(`[::1]` parses, and admission refuses it: the kernel cannot NAT IPv6 loopback). One publish
is one address family (`0.0.0.0` is every IPv4 address, `[::]` every IPv6 one); an app that
answers on both gives two (see `validate_publishes`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lbctl.model.errors import InvalidInput

SYNTAX = "[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
# An app's publishes share its replicas' one port; a handful covers every family and
# address a host has, and the bound keeps a hostile body from making thousands of rules.
MAX_PUBLISHES = 8


@dataclass(frozen=True)
class Publish:
    """Where an app answers on the host, and where its replicas listen."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: object) -> Publish:
        """Parse docker's `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]` (host IP defaults to
        127.0.0.1: publishing to every interface must be asked for, as 0.0.0.0 or [::])."""
        if not isinstance(text, str) or not text:
            raise InvalidInput(f"publish must look like {SYNTAX}")
        spec, slash, proto = text.partition("/")
        proto = proto if slash else "tcp"  # "8080:80/" names no protocol: refused below
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"invalid protocol {proto!r} in publish {text!r}: use tcp or udp")
        if spec.startswith("["):
            addr, bracket, rest = spec[1:].partition("]")
            parts = rest.split(":")
            if not bracket or len(parts) != 3 or parts[0]:
                raise InvalidInput(
                    f"invalid publish {text!r}: use [IPV6]:HOST_PORT:CONTAINER_PORT"
                )
            ip = _ipv6(addr, text)
            host_port, container_port = parts[1], parts[2]
        else:
            parts = spec.split(":")
            if len(parts) == 2:
                ip, host_port, container_port = "127.0.0.1", parts[0], parts[1]
            elif len(parts) == 3:
                ip = _ipv4(parts[0], text)
                host_port, container_port = parts[1], parts[2]
            elif len(parts) > 3 and "." not in spec:
                raise InvalidInput(
                    f"invalid publish {text!r}: put an IPv6 address in brackets, "
                    "e.g. [::]:8080:8080"
                )
            else:
                raise InvalidInput(f"invalid publish {text!r}: use {SYNTAX}")
        return cls(ip, _port(host_port, text), _port(container_port, text), proto)

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.host_ip else 4

    @property
    def wildcard(self) -> bool:
        """Every address of its family (0.0.0.0 or ::)."""
        return self.host_ip in ("0.0.0.0", "::")

    @property
    def loopback(self) -> bool:
        """Only local clients can reach it (127.0.0.0/8 or ::1)."""
        return ipaddress.ip_address(self.host_ip).is_loopback

    @property
    def host_addr(self) -> str:
        """HOST_IP:HOST_PORT as a client writes it ([::1]:8080 for IPv6)."""
        host = f"[{self.host_ip}]" if self.family == 6 else self.host_ip
        return f"{host}:{self.host_port}"

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.container_port}/{self.proto}"

    def clashes_with(self, other: Publish) -> bool:
        """Both would catch the same packets: same family, protocol and host port, and the
        same address or a wildcard on either side."""
        if (self.proto, self.host_port, self.family) != (
            other.proto, other.host_port, other.family
        ):
            return False
        return self.wildcard or other.wildcard or self.host_ip == other.host_ip


def parse_publishes(raw: object) -> tuple[Publish, ...]:
    """One publish (a string) or several (a list of strings, as `-p` given more than once or
    a TOML array), validated together."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise InvalidInput(f"publish must look like {SYNTAX}, or be a list of those")
    return validate_publishes([Publish.parse(p) for p in items])


def validate_publishes(pubs: Sequence[Publish]) -> tuple[Publish, ...]:
    """An app's publishes reach one port of its replicas: they share the container port and
    protocol, and none overlaps another (`0.0.0.0:80` already holds `127.0.0.1:80`)."""
    if not pubs:
        raise InvalidInput(f"an app needs a publish: {SYNTAX}")
    if len(pubs) > MAX_PUBLISHES:
        raise InvalidInput(f"at most {MAX_PUBLISHES} publishes per app, not {len(pubs)}")
    first = pubs[0]
    for i, p in enumerate(pubs):
        if (p.container_port, p.proto) != (first.container_port, first.proto):
            raise InvalidInput(
                f"publish {p} and {first} differ in CONTAINER_PORT/protocol: an app's "
                "replicas listen on one port; run a second app for another"
            )
        for q in pubs[:i]:
            if p.clashes_with(q):
                raise InvalidInput(f"publish {p} overlaps {q}: give each address once")
    return tuple(pubs)


def _ipv4(text: str, whole: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidInput(f"invalid host IP {text!r} in publish {whole!r}") from None


def _ipv6(text: str, whole: str) -> str:
    if "%" in text:
        raise InvalidInput(f"invalid host IPv6 address {text!r} in publish {whole!r}: no "
                           "%zone (a published address is the host's, on every link)")
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        raise InvalidInput(f"invalid host IPv6 address {text!r} in publish {whole!r}") from None
    # Link-local addresses need a zone and are never DNATed across links; a mapped IPv4
    # address is an IPv4 publish in disguise; multicast is no host address.
    if ip.is_link_local or ip.ipv4_mapped is not None or ip.is_multicast:
        raise InvalidInput(
            f"host IPv6 address {text!r} in publish {whole!r} cannot be published: use [::] "
            "or a global/ULA address of this host"
        )
    return str(ip)


def _port(text: str, whole: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"invalid port {text!r} in publish {whole!r}: use 1-65535")
    return int(text)
