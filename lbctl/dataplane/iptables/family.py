"""What differs between the iptables and the ip6tables rulesets of the same services, and who
can reach a publish through the kernel's NAT.

IPv6 has the same chains, names and shapes in ip6tables: `for_family()` cuts each app's
`Service` down to one family (its publishes of that family, its backends' addresses of that
family) and `render(..., family=IPV6)` writes /128 matches, `[addr]:port` targets and
icmp6 rejects. What differs is said where it differs below.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from lbctl.model import Publish
from lbctl.model.dataplane import Service


@dataclass(frozen=True)
class Family:
    """What differs between the iptables and the ip6tables rendering of the same services."""

    version: int  # 4 or 6
    tool: str  # "iptables" or "ip6tables": also the prefix of -save and -restore
    host_len: int  # prefix length of one address
    loopback: str  # the loopback network
    reject_udp: str  # what a UDP port with no backends answers

    def host(self, ip: str) -> str:
        return f"{ip}/{self.host_len}"

    def endpoint(self, ip: str, port: int) -> str:
        return f"[{ip}]:{port}" if self.version == 6 else f"{ip}:{port}"


IPV4 = Family(4, "iptables", 32, "127.0.0.0/8", "icmp-port-unreachable")
IPV6 = Family(6, "ip6tables", 128, "::1/128", "icmp6-port-unreachable")
FAMILIES = {4: IPV4, 6: IPV6}


def for_family(services: Iterable[Service], family: Family) -> list[Service]:
    """Each service as the `family` ruleset sees it: only its publishes of that family, and
    its backends by their address of that family (a backend without one is left out).
    Services with no publish of the family are dropped."""
    out = []
    for s in services:
        pubs = [p for p in s.publishes if p.family == family.version]
        if not pubs:
            continue
        if family.version == 4:
            backends = tuple(b for b in s.backends if b.ip)
        else:
            backends = tuple(replace(b, ip=b.ip6, ip6=None) for b in s.backends if b.ip6)
        out.append(Service(s.app, pubs[0], backends, s.bridges, tuple(pubs[1:]), s.hold_until))
    return out


def is_loopback_reachable(publish: Publish) -> bool:
    """Local IPv4 clients can reach the service through a loopback address (127.x or
    0.0.0.0), which takes route_localnet and a MASQUERADE. IPv6 loopback is never NATed."""
    return publish.family == 4 and (publish.wildcard or publish.loopback)


def is_remote_reachable(publish: Publish) -> bool:
    """Other hosts (and containers) can reach it: any host IP except loopback ones."""
    return not publish.loopback


def is_natted(publish: Publish) -> bool:
    """The kernel's NAT can serve it at all: everything but IPv6 loopback (see above)."""
    return not (publish.family == 6 and publish.loopback)


def localnet_bridges(services: Iterable[Service]) -> frozenset[str]:
    """Bridges that need route_localnet=1: DNAT of 127.0.0.1 traffic to a backend on them, or
    to a container on them that drains such connections (a service with bridges and no
    backend: a deleted app's)."""
    return frozenset(
        b
        for s in services
        if any(is_loopback_reachable(p) for p in s.publishes)
        for b in s.bridges
        if b
    )
