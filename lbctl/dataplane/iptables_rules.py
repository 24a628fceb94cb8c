"""Render lbctl's whole iptables (or ip6tables) ruleset as one restore text. Pure: no I/O.

Modelled on kube-proxy's iptables proxier: every sync renders *all* of lbctl's chains from
the desired state and applies them in a single `iptables-restore --noflush --counters`
transaction. Declaring a chain (`:LBCTL-X - [0:0]`) in a --noflush restore flushes it, so
each chain's contents are replaced atomically (no moment where a published port has no
rules), and chains we no longer need are flushed and deleted (`-X`) in the same transaction.
Nothing outside chains named `LBCTL-*` is ever written here; the jump rules that hook our
chains into the built-in chains are listed in `JUMPS` and managed by the I/O layer.

IPv6 has the same chains, names and shapes in ip6tables: `for_family()` cuts each app's
`Service` down to one family (its publishes of that family, its backends' addresses of that
family) and `render(..., family=IPV6)` writes /128 matches, `[addr]:port` targets and
icmp6 rejects. What differs is said where it differs below.

Chain layout (T = tcp|udp, P = host port, p = container port)::

  nat PREROUTING  -> LBCTL-PREROUTING   traffic from other hosts (and containers)
      one rule per publish on a non-loopback address:
      [-d HOST_IP/32 | -m addrtype --dst-type LOCAL] -p T --dport P -> LBCTL-SVC-<hash(app)>
      (loopback-published services get no rule here: only local clients may reach them)
  nat OUTPUT      -> LBCTL-OUTPUT       local clients, 127.0.0.1 included; same matches.
      IPv6: never ::1. The kernel cannot NAT IPv6 loopback traffic to another host or
      namespace (a reply de-NATed to ::1 arrives on a bridge and is dropped as a martian;
      there is no route_localnet for IPv6, measured on this kernel with br_netfilter on and
      off), so a `[::]` publish leaves ::1 alone and `[::1]` gets no NAT rule at all.
  LBCTL-SVC-<hash> one DNAT rule per backend, comment "app/replica":
      rule i of N: -m statistic --mode random --probability 1/(N-i)  (10 decimals)
      the last rule has no statistic match, so every new connection gets a backend.
      The DNAT rule's packet counter = new connections sent to that replica (nat only sees
      the first packet of a connection); it is carried over across restores with [pkts:bytes].
  nat POSTROUTING -> LBCTL-POSTROUTING  source NAT where the reply would not come back to us:
      * IPv4 loopback clients: -s 127.0.0.0/8 -d BACKEND -p T --dport p -j MASQUERADE, for
        services reachable on loopback (127.x or 0.0.0.0): a DNATed 127.0.0.1 client must
        not reach the container with a 127.0.0.1 source address. IPv6: every local client
        (-m addrtype --src-type LOCAL, DNATed): a reply to the host's own non-loopback
        address, de-NATed on its way in, is dropped otherwise (measured; IPv4 does not need
        it);
      * hairpin, for services containers can reach (any non-loopback publish):
        -s BACKEND -d BACKEND ... --ctstate DNAT -j MASQUERADE: a replica (or, in ebpf
        mode, any replica of the sandbox) that the DNAT sent its own connection back to
        would otherwise see a packet from its own address and drop it (kube-proxy does the
        same). With br_netfilter such a packet is bridged back out of the port it came in
        by, so the backend's bridge port also needs hairpin_mode=1 (lbctl.dataplane.hairpin
        sets it on the containers lbctl creates);
      * the same bridge, where bridged traffic skips netfilter (no br_netfilter, or its
        bridge-nf-call-ip(6)tables=0): -s NET -d NET ... --ctstate DNAT -m physdev !
        --physdev-is-bridged -j MASQUERADE per network NET of a backend's bridge: another
        container on that bridge gets the reply straight from the backend, past the NAT it
        has to go back through. Bridged packets (br_netfilter on) do pass conntrack, so
        there the client keeps its address. Measured in a namespace of its own with
        br_netfilter on and off (tests/dataplane/test_hairpin.py).
  filter FORWARD  -> LBCTL-FORWARD      -d BACKEND -p T --dport p --ctstate DNAT
      --ctorigdstport P --ctdir ORIGINAL -j ACCEPT, and the same for the replies
      (-s BACKEND --sport p ... --ctdir REPLY), for services reachable from other hosts
      (Docker's FORWARD policy is DROP). Never a blanket ACCEPT.
  filter INPUT    -> LBCTL-INPUT
      * services with 0 backends: REJECT (tcp-reset / icmp(6)-port-unreachable) on the host
        port, so a client is refused at once and the port never falls through to whatever
        else might listen on the host;
      * IPv4, per bridge with route_localnet=1: drop packets from that bridge to 127.0.0.0/8
        that are not replies/DNATed (kube-proxy's CVE-2020-8558 guard: route_localnet would
        otherwise let containers reach the host's loopback-only services).

Chain names are at most 28 characters: app names go into chains only as a hash
(`LBCTL-SVC-` + base32(sha256(app))[:16], like kube-proxy's KUBE-SVC-*), and the app name
itself is kept in a `-m comment`.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from lbctl.model import Publish

PREFIX = "LBCTL-"
CHAIN_PREROUTING = "LBCTL-PREROUTING"
CHAIN_OUTPUT = "LBCTL-OUTPUT"
CHAIN_POSTROUTING = "LBCTL-POSTROUTING"
CHAIN_FORWARD = "LBCTL-FORWARD"
CHAIN_INPUT = "LBCTL-INPUT"
SVC_PREFIX = "LBCTL-SVC-"
MAX_CHAIN_LEN = 28

# (table, built-in chain, our chain): the hooks. Each is a single rule inserted at position 1
# of the built-in chain (ahead of Docker's rules), carrying JUMP_COMMENT so it is recognisably
# ours in `iptables-save` output.
JUMP_COMMENT = "lbctl"
JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", CHAIN_PREROUTING),
    ("nat", "OUTPUT", CHAIN_OUTPUT),
    ("nat", "POSTROUTING", CHAIN_POSTROUTING),
    ("filter", "FORWARD", CHAIN_FORWARD),
    ("filter", "INPUT", CHAIN_INPUT),
)
BASE_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": (CHAIN_PREROUTING, CHAIN_OUTPUT, CHAIN_POSTROUTING),
    "filter": (CHAIN_FORWARD, CHAIN_INPUT),
}
TABLES = ("nat", "filter")


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

    @property
    def publishes(self) -> tuple[Publish, ...]:
        return (self.publish, *self.extra_publishes)


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
        out.append(Service(s.app, pubs[0], backends, s.bridges, tuple(pubs[1:])))
    return out


def jump_spec(target: str) -> list[str]:
    """The rule (minus `-A CHAIN`) that hooks `target` into its built-in chain."""
    return ["-m", "comment", "--comment", JUMP_COMMENT, "-j", target]


def svc_chain(app: str) -> str:
    """`LBCTL-SVC-` + 16 base32 chars of sha256(app): fits 28 chars for any valid app name
    and cannot collide with a base chain."""
    digest = base64.b32encode(hashlib.sha256(app.encode()).digest()).decode()
    return SVC_PREFIX + digest[:16]


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


def wanted_chains(services: Sequence[Service]) -> set[tuple[str, str]]:
    """(table, chain) pairs the ruleset for `services` declares; everything else named
    LBCTL-* on the host is stale. No services: no chains at all (full removal)."""
    if not services:
        return set()
    chains = {(t, c) for t, names in BASE_CHAINS.items() for c in names}
    chains |= {("nat", svc_chain(s.app)) for s in services if s.backends}
    return chains


def chain_table(chain: str) -> str:
    """Table a bare LBCTL chain name lives in, by lbctl's naming scheme."""
    return "filter" if chain in BASE_CHAINS["filter"] else "nat"


def _probability(weights: Sequence[int], i: int) -> str:
    # kube-proxy's formula generalised to weights: rule i (0-based) takes its weight's share
    # of what the rules before it left, w_i / (w_i + ... + w_n-1); equal weights give
    # 1/(n-i). 10 decimals as kube-proxy prints them.
    rest = sum(weights[i:])
    return f"{weights[i] / rest:0.10f}"


def _dst_match(publish: Publish, family: Family, hook: str) -> list[str]:
    if not publish.wildcard:
        return ["-d", family.host(publish.host_ip)]
    if family.version == 6 and hook == CHAIN_OUTPUT:
        # ::1 is LOCAL too, and cannot be NATed (module doc).
        return ["!", "-d", family.loopback, "-m", "addrtype", "--dst-type", "LOCAL"]
    return ["-m", "addrtype", "--dst-type", "LOCAL"]


def _port_match(proto: str, port: int) -> list[str]:
    return ["-p", proto, "-m", proto, "--dport", str(port)]


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", f'"{text}"']


def render(
    services: Sequence[Service],
    stale_chains: Iterable[str] = (),
    counters: Mapping[tuple[str, str], tuple[int, int]] = {},  # read-only, never mutated
    *,
    unchanged: Collection[tuple[str, str]] = (),
    family: Family = IPV4,
    bridge_nets: Mapping[str, Sequence[str]] = {},  # read-only, never mutated
) -> str:
    """The complete `iptables-restore --noflush --counters` text for lbctl's chains.

    `services` are of `family` already (see for_family).
    `stale_chains`: existing LBCTL-* chains to flush and delete in the same transaction,
    each "table:CHAIN" or a bare name (table then inferred from lbctl's naming scheme).
    `counters`: (app, replica) -> (packets, bytes) to carry over onto the replica's DNAT rule,
    since re-declaring a chain resets its rules' counters.
    `unchanged`: (table, chain) pairs known to hold exactly what `render_chains()` gives for
    them; they are left out of the transaction so their counters are not touched at all
    (kube-proxy's partial sync: a re-sync of the same state then writes nothing).
    `bridge_nets`: bridge -> its networks of `family` (CIDR), for the same-bridge hairpin
    rules; a bridge not in it gets none.
    """
    services = sorted(services, key=lambda s: s.app)
    apps = [s.app for s in services]
    if len(set(apps)) != len(apps):
        raise ValueError(f"duplicate app in services: {apps}")
    wanted = wanted_chains(services)
    for _, chain in wanted:
        assert len(chain) <= MAX_CHAIN_LEN, chain

    stale: dict[str, list[str]] = {t: [] for t in TABLES}
    for item in stale_chains:
        table, sep, chain = item.partition(":")
        if not sep:
            table, chain = chain_table(item), item
        if table not in stale:
            raise ValueError(f"unknown table in stale chain {item!r}")
        if not chain.startswith(PREFIX):
            # Safety net: this transaction must never delete a chain that is not ours.
            raise ValueError(f"refusing to delete foreign chain {item!r}")
        if (table, chain) not in wanted and chain not in stale[table]:
            stale[table].append(chain)

    rules = _chain_rules(services, wanted, counters, family, bridge_nets)
    skip = {c for t, c in unchanged if (t, c) in wanted}
    out: list[str] = []
    for table in TABLES:
        declared = sorted(c for t, c in wanted if t == table)
        # Base chains first in a fixed order, then the per-service chains sorted.
        base = [c for c in BASE_CHAINS[table] if c in declared]
        declared = [c for c in base + [c for c in declared if c not in base] if c not in skip]
        if not declared and not stale[table]:
            continue  # leave a table we have nothing in completely untouched
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for c in [*declared, *stale[table]])
        out.extend(" ".join(r) for c in declared for r in rules[c])
        out.extend(f"-X {c}" for c in stale[table])
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def render_chains(
    services: Sequence[Service],
    family: Family = IPV4,
    bridge_nets: Mapping[str, Sequence[str]] = {},  # read-only, never mutated
) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> its rule lines (without counters), for spotting unchanged chains."""
    wanted = wanted_chains(services)
    rules = _chain_rules(services, wanted, {}, family, bridge_nets)
    return {(t, c): [" ".join(r) for r in rules[c]] for t, c in wanted}


def _chain_rules(
    services: Sequence[Service],
    wanted: set[tuple[str, str]],
    counters: Mapping[tuple[str, str], tuple[int, int]],
    family: Family,
    bridge_nets: Mapping[str, Sequence[str]],
) -> dict[str, list[list[str]]]:
    # Rules are collected per chain and written chain by chain, in declaration order, so the
    # text reads like `iptables-save` output and diffs between syncs stay small.
    rules: dict[str, list[list[str]]] = {c: [] for _, c in wanted}
    services = sorted(services, key=lambda s: s.app)
    if family.version == 4:
        for bridge in sorted(localnet_bridges(services)):
            rules[CHAIN_INPUT].append(
                [
                    "-A", CHAIN_INPUT, "-i", bridge, "-d", "127.0.0.0/8", "!", "-s",
                    "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
                    *_comment(f"route_localnet guard for {bridge}"), "-j", "DROP",
                ]
            )  # fmt: skip
    for s in services:
        proto = s.publish.proto
        if not s.backends:
            for pub in s.publishes:
                # Refuse at once rather than let the port fall through to the host. In INPUT
                # every packet is local already, so a wildcard needs no address match.
                dst = [] if pub.wildcard else ["-d", family.host(pub.host_ip)]
                reject = "tcp-reset" if proto == "tcp" else family.reject_udp
                rules[CHAIN_INPUT].append(
                    [
                        "-A", CHAIN_INPUT, *dst, *_port_match(proto, pub.host_port),
                        *_comment(f"{s.app} has no replicas"),
                        "-j", "REJECT", "--reject-with", reject,
                    ]
                )  # fmt: skip
            continue
        chain = svc_chain(s.app)
        natted = [p for p in s.publishes if is_natted(p)]
        for hook in (CHAIN_PREROUTING, CHAIN_OUTPUT):
            for pub in natted:
                if hook == CHAIN_PREROUTING and not is_remote_reachable(pub):
                    continue
                match = [*_dst_match(pub, family, hook), *_port_match(proto, pub.host_port)]
                rules[hook].append(["-A", hook, *match, *_comment(s.app), "-j", chain])
        n = len(s.backends)
        weights = [max(1, b.weight) for b in s.backends]
        for i, b in enumerate(s.backends):
            stat = (
                []
                if i == n - 1
                else ["-m", "statistic", "--mode", "random", "--probability",
                      _probability(weights, i)]
            )  # fmt: skip
            rule = [
                "-A", chain, *_comment(f"{s.app}/{b.name}"), "-p", proto, *stat,
                "-j", "DNAT", "--to-destination", family.endpoint(b.ip, b.port),
            ]  # fmt: skip
            pkts_bytes = counters.get((s.app, b.name))
            if pkts_bytes is not None:
                rule.insert(0, f"[{pkts_bytes[0]}:{pkts_bytes[1]}]")
            rules[chain].append(rule)
        rules[CHAIN_POSTROUTING].extend(_source_nat(s, natted, family, bridge_nets))
        remote = [p for p in natted if is_remote_reachable(p)]
        for b in s.backends:
            backend = ["-d", family.host(b.ip), *_port_match(proto, b.port)]
            for ct in _ct_matches(remote, family):
                # Only connections we DNATed from this host port to this backend, both ways:
                # the reply rule makes lbctl independent of the engine's own FORWARD rules
                # (Docker accepts its bridges' outbound traffic, other setups may not).
                rules[CHAIN_FORWARD].append(
                    [
                        "-A", CHAIN_FORWARD, *backend, *ct, "--ctdir", "ORIGINAL",
                        *_comment(f"{s.app}/{b.name}"), "-j", "ACCEPT",
                    ]
                )  # fmt: skip
                rules[CHAIN_FORWARD].append(
                    [
                        "-A", CHAIN_FORWARD, "-s", family.host(b.ip), "-p", proto, "-m", proto,
                        "--sport", str(b.port), *ct, "--ctdir", "REPLY",
                        *_comment(f"{s.app}/{b.name} replies"), "-j", "ACCEPT",
                    ]
                )  # fmt: skip

    return rules


def _ct_matches(pubs: Sequence[Publish], family: Family) -> list[list[str]]:
    """One conntrack match per distinct original destination: "DNATed from this publish"."""
    out: list[list[str]] = []
    for pub in pubs:
        orig = [] if pub.wildcard else ["--ctorigdst", family.host(pub.host_ip)]
        ct = ["-m", "conntrack", "--ctstate", "DNAT", *orig,
              "--ctorigdstport", str(pub.host_port)]  # fmt: skip
        if ct not in out:
            out.append(ct)
    return out


def _source_nat(
    s: Service,
    natted: Sequence[Publish],
    family: Family,
    bridge_nets: Mapping[str, Sequence[str]],
) -> list[list[str]]:
    """LBCTL-POSTROUTING rules of one service with backends (module doc: loopback or local
    clients, hairpin to the backend itself, same-bridge clients where bridging skips
    netfilter)."""
    proto = s.publish.proto
    port = s.backends[0].port
    out: list[list[str]] = []
    remote = [p for p in natted if is_remote_reachable(p)]
    hairpin_ports = sorted({p.host_port for p in remote})
    for b in s.backends:
        backend = ["-d", family.host(b.ip), *_port_match(proto, b.port)]
        if family.version == 4 and any(is_loopback_reachable(p) for p in natted):
            out.append(
                [
                    "-A", CHAIN_POSTROUTING, "-s", "127.0.0.0/8", *backend,
                    *_comment(f"{s.app}/{b.name} loopback client"), "-j", "MASQUERADE",
                ]
            )  # fmt: skip
        if family.version == 6 and natted:
            out.append(
                [
                    "-A", CHAIN_POSTROUTING, "-m", "addrtype", "--src-type", "LOCAL", *backend,
                    "-m", "conntrack", "--ctstate", "DNAT",
                    *_comment(f"{s.app}/{b.name} local client"), "-j", "MASQUERADE",
                ]
            )  # fmt: skip
        for host_port in hairpin_ports:
            out.append(
                [
                    "-A", CHAIN_POSTROUTING, "-s", family.host(b.ip), *backend,
                    "-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", str(host_port),
                    *_comment(f"{s.app}/{b.name} hairpin"), "-j", "MASQUERADE",
                ]
            )  # fmt: skip
    for bridge in s.bridges:
        for net in bridge_nets.get(bridge, ()):
            for host_port in hairpin_ports:
                out.append(
                    [
                        "-A", CHAIN_POSTROUTING, "-s", net, "-d", net, *_port_match(proto, port),
                        "-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", str(host_port),
                        "-m", "physdev", "!", "--physdev-is-bridged",
                        *_comment(f"{s.app} clients on {bridge}"), "-j", "MASQUERADE",
                    ]
                )  # fmt: skip
    return out


# --- reading `iptables-save -c` back (pure: the I/O layer hands in the text) ---------------


@dataclass(frozen=True)
class SavedRule:
    """One `-A` line of `iptables-save -c` output."""

    chain: str
    packets: int
    bytes: int
    args: tuple[str, ...]  # everything after `-A CHAIN`, shell-unquoted

    def option(self, name: str) -> str | None:
        """The value following option `name` (e.g. "--comment"), or None."""
        for i, arg in enumerate(self.args[:-1]):
            if arg == name:
                return self.args[i + 1]
        return None

    @property
    def target(self) -> str | None:
        return self.option("-j")


@dataclass
class SavedTable:
    chains: list[str]
    rules: list[SavedRule]


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse `iptables-save [-c]` output into tables of chains and rules (comments skipped)."""
    tables: dict[str, SavedTable] = {}
    current: SavedTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], SavedTable([], []))
            continue
        if current is None:
            raise ValueError(f"iptables-save line outside a table: {line!r}")
        if line.startswith(":"):
            current.chains.append(line[1:].split()[0])
            continue
        packets = nbytes = 0
        if line.startswith("["):
            counts, _, line = line.partition("] ")
            p, _, b = counts[1:].partition(":")
            packets, nbytes = int(p), int(b)
        tokens = shlex.split(line)
        if len(tokens) < 2 or tokens[0] != "-A":
            raise ValueError(f"unexpected iptables-save line: {raw!r}")
        current.rules.append(SavedRule(tokens[1], packets, nbytes, tuple(tokens[2:])))
    return tables


def _dnat_rules(saved: Mapping[str, SavedTable]) -> list[SavedRule]:
    nat = saved.get("nat")
    if nat is None:
        return []
    return [r for r in nat.rules if r.chain.startswith(SVC_PREFIX) and r.target == "DNAT"]


def dnat_counters(saved: Mapping[str, SavedTable]) -> dict[tuple[str, str], tuple[int, int]]:
    """(app, replica) -> (packets, bytes) of each replica's DNAT rule, from its "app/replica"
    comment: what `render(counters=...)` carries over, and what counters() reports."""
    result: dict[tuple[str, str], tuple[int, int]] = {}
    for rule in _dnat_rules(saved):
        app, sep, replica = (rule.option("--comment") or "").partition("/")
        if sep:
            p, b = result.get((app, replica), (0, 0))
            result[(app, replica)] = (p + rule.packets, b + rule.bytes)
    return result


def dnat_endpoints(saved: Mapping[str, SavedTable], proto: str) -> set[tuple[str, int]]:
    """(ip, port) of every backend our rules DNAT `proto` traffic to (survives restarts, unlike
    the daemon's memory: used to find the backends a sync removed)."""
    result: set[tuple[str, int]] = set()
    for rule in _dnat_rules(saved):
        dest = rule.option("--to-destination")
        if rule.option("-p") == proto and dest and ":" in dest:
            ip, _, port = dest.rpartition(":")
            result.add((ip.strip("[]"), int(port)))  # IPv6 targets read [addr]:port
    return result


def service_endpoints(services: Iterable[Service], proto: str) -> set[tuple[str, int]]:
    """(ip, port) of every `proto` backend in `services`."""
    return {(b.ip, b.port) for s in services if s.publish.proto == proto for b in s.backends}
