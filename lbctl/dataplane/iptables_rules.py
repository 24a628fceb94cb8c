"""Render lbctl's whole iptables (or ip6tables) ruleset as one restore text. Pure: no I/O.

Modelled on kube-proxy's iptables proxier: every sync renders *all* of lbctl's chains from
the desired state (render_chains) and applies the ones that differ, from the kernel (a full
pass: render) or from the last sync's render kept in memory (the fast path: render_diff),
in a single `iptables-restore --noflush --counters` transaction. Declaring a chain
(`:LBCTL-X - [0:0]`) in a --noflush restore flushes it, so each chain's contents are
replaced atomically (no moment where a published port has no rules), and chains we no
longer need are flushed and deleted (`-X`) in the same transaction.
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

Large services (more than BUCKET backends) are cut into buckets of BUCKET backends, by
position in the sorted backend list, each with chains of its own:
  LBCTL-SVC-<hash>  one statistic rule per bucket (the bucket's share of the weights) jumping
      to LBCTL-SEP-<hash(app#j)>, which holds that bucket's DNAT cascade as above;
  LBCTL-POSTROUTING one `-p T -j LBCTL-SNT-<hash(app#j)>` per bucket, which holds the
      bucket's per-backend source NAT rules (loopback/local client, hairpin);
  LBCTL-FORWARD     one `-p T --ctstate DNAT -j LBCTL-FWD-<hash(app#j)>` per bucket, which
      holds the bucket's per-backend ACCEPT rules.
Why: with iptables-nft, iptables-restore fetches every rule of a chain it changes (45 ms
for a 5,000-rule chain on this host, even for one `-R`), so a chain that changes when one
backend does must stay small. A replica restarting on a new address (same backends, same
order) then rewrites three chains of at most BUCKET rules; the shares are unchanged
(bucket share x share within the bucket = the backend's weight / all weights), and new
connections evaluate fewer statistic rules than in one flat cascade. Up to BUCKET backends
the layout is the flat one above.

Chain names are at most 28 characters: app names go into chains only as a hash
(`LBCTL-SVC-` + base32(sha256(app))[:16], like kube-proxy's KUBE-SVC-*), and the app name
itself is kept in a `-m comment`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service

PREFIX = "LBCTL-"
CHAIN_PREROUTING = "LBCTL-PREROUTING"
CHAIN_OUTPUT = "LBCTL-OUTPUT"
CHAIN_POSTROUTING = "LBCTL-POSTROUTING"
CHAIN_FORWARD = "LBCTL-FORWARD"
CHAIN_INPUT = "LBCTL-INPUT"
SVC_PREFIX = "LBCTL-SVC-"
# Bucket chains of a service with more than BUCKET backends (see "Large services" above).
SEP_PREFIX = "LBCTL-SEP-"  # nat: the DNAT rules of one bucket
SNAT_PREFIX = "LBCTL-SNT-"  # nat: the per-backend POSTROUTING rules of one bucket
FWD_PREFIX = "LBCTL-FWD-"  # filter: the per-backend FORWARD rules of one bucket
# Small enough that rewriting a bucket's chains costs about what a tiny chain does (a few ms),
# large enough that 5,000 backends make ~240 chains, not 15,000: creating a chain costs
# ~0.1 ms in nf_tables and an iptables-save of 15,000 chains took 1.3 s here.
BUCKET = 64
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


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(app: str) -> str:
    """`LBCTL-SVC-` + 16 base32 chars of sha256(app): fits 28 chars for any valid app name
    and cannot collide with a base chain."""
    return SVC_PREFIX + _hash16(app)


def bucket_chain(prefix: str, app: str, bucket: int) -> str:
    """A large service's bucket chain: prefix + 16 base32 chars of sha256("app#bucket")."""
    return prefix + _hash16(f"{app}#{bucket}")


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


def wanted_chains(
    services: Sequence[Service],
    family: Family = IPV4,
    bridge_nets: Mapping[str, Sequence[str]] = {},  # read-only, never mutated
) -> set[tuple[str, str]]:
    """(table, chain) pairs the ruleset for `services` declares; everything else named
    LBCTL-* on the host is stale. No services: no chains at all (full removal)."""
    return set(render_chains(services, family, bridge_nets))


def chain_table(chain: str) -> str:
    """Table a bare LBCTL chain name lives in, by lbctl's naming scheme."""
    return "filter" if chain in BASE_CHAINS["filter"] or chain.startswith(FWD_PREFIX) else "nat"


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
    chains = render_chains(services, family, bridge_nets)
    stale: list[tuple[str, str]] = []
    for item in stale_chains:
        table, sep, chain = item.partition(":")
        if not sep:
            table, chain = chain_table(item), item
        if table not in TABLES:
            raise ValueError(f"unknown table in stale chain {item!r}")
        if not chain.startswith(PREFIX):
            # Safety net: this transaction must never delete a chain that is not ours.
            raise ValueError(f"refusing to delete foreign chain {item!r}")
        if (table, chain) not in chains and (table, chain) not in stale:
            stale.append((table, chain))
    write = [key for key in chains if key not in unchanged]
    return restore_text(chains, write, stale, counters)


def render_diff(
    old: Mapping[tuple[str, str], Sequence[str]],
    new: Mapping[tuple[str, str], Sequence[str]],
    counters: Mapping[tuple[str, str], tuple[int, int]] = {},  # read-only, never mutated
) -> str:
    """The transaction that turns the ruleset `old` (render_chains() of the last successful
    sync) into `new`: only the chains whose rules differ are re-declared and refilled, chains
    that are gone are flushed and deleted, everything else is left alone. "" if equal.

    This is the fast path: it needs nothing read from the kernel except the counters of the
    DNAT rules it rewrites (`counters`, see changed_dnat_chains)."""
    write = [key for key, lines in new.items() if old.get(key) != lines]
    stale = [key for key in old if key not in new]
    return restore_text(new, write, stale, counters)


def changed_dnat_chains(
    old: Mapping[tuple[str, str], Sequence[str]],
    new: Mapping[tuple[str, str], Sequence[str]],
) -> list[str]:
    """The nat chains of `old` whose DNAT rules a render_diff(old, new) rewrites or deletes:
    the only places a replica's counter can be lost, so the only ones whose counters must be
    read first. A replica whose rule is in a chain left alone kept its rule, and its counter."""
    return sorted(
        c for (t, c), lines in old.items()
        if t == "nat" and c.startswith((SVC_PREFIX, SEP_PREFIX)) and new.get((t, c)) != lines
        and any(_DNAT_LINE.match(line) for line in lines)
    )  # fmt: skip


def restore_text(
    chains: Mapping[tuple[str, str], Sequence[str]],
    write: Collection[tuple[str, str]],
    stale: Collection[tuple[str, str]],
    counters: Mapping[tuple[str, str], tuple[int, int]] = {},  # read-only, never mutated
) -> str:
    """One transaction: declare (which flushes) and fill the `write` chains of `chains`, flush
    and delete the `stale` ones. A table we have nothing to do in is not mentioned at all.

    Chain declarations come first in each table, so a jump may name a chain declared in the
    same transaction; a stale chain is deleted after the chains that jumped to it were
    rewritten without the jump."""
    out: list[str] = []
    for table in TABLES:
        declared = _ordered(table, [c for t, c in write if t == table])
        gone = _ordered(table, [c for t, c in stale if t == table])
        if not declared and not gone:
            continue
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for c in [*declared, *gone])
        for c in declared:
            assert len(c) <= MAX_CHAIN_LEN, c
            out.extend(_with_counter(line, counters) for line in chains[(table, c)])
        out.extend(f"-X {c}" for c in gone)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _ordered(table: str, chains: Iterable[str]) -> list[str]:
    # Base chains first in a fixed order, then the others sorted: the text reads like
    # `iptables-save` output and stays the same from one sync to the next.
    names = set(chains)
    base = [c for c in BASE_CHAINS[table] if c in names]
    return base + sorted(names - set(base))


# A DNAT rule as _dnat_chain renders it: `-A CHAIN -m comment --comment "app/replica" ...`.
_DNAT_LINE = re.compile(r'^-A \S+ -m comment --comment "([^"/]+)/([^"]+)" .* -j DNAT ')


def _with_counter(line: str, counters: Mapping[tuple[str, str], tuple[int, int]]) -> str:
    m = _DNAT_LINE.match(line) if counters else None
    pkts_bytes = counters.get((m.group(1), m.group(2))) if m else None
    return line if pkts_bytes is None else f"[{pkts_bytes[0]}:{pkts_bytes[1]}] {line}"


BucketRules = tuple[list[str], list[str], list[str]]  # DNAT, source NAT, FORWARD lines


class RenderCache:
    """The bucket chains of the last render, for the next one. A bucket whose backends and
    service facts are unchanged gets back the very same line lists: rendering 5,000 backends
    was most of a fast sync's CPU, and equal lists that are the same objects compare at
    once in the applier's diff. Pure (keyed by everything the lines depend on), so it needs
    no invalidation; it holds only the buckets the last render used."""

    def __init__(self) -> None:
        self._last: dict[tuple[object, ...], BucketRules] = {}
        self._next: dict[tuple[object, ...], BucketRules] = {}

    def get(self, key: tuple[object, ...]) -> BucketRules | None:
        hit = self._last.get(key)
        if hit is not None:
            self._next[key] = hit
        return hit

    def put(self, key: tuple[object, ...], rules: BucketRules) -> None:
        self._next[key] = rules

    def rotate(self) -> None:
        self._last, self._next = self._next, {}


def render_chains(
    services: Sequence[Service],
    family: Family = IPV4,
    bridge_nets: Mapping[str, Sequence[str]] = {},  # read-only, never mutated
    cache: RenderCache | None = None,
) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> its rule lines (without counters): every chain lbctl wants for
    `services`, and what the applier keeps in memory between syncs. No services: {}.
    `cache`: the buckets of the previous render, reused where nothing they depend on
    changed (the result is the same with or without it)."""
    if not services:
        return {}
    apps = [s.app for s in services]
    if len(set(apps)) != len(apps):
        raise ValueError(f"duplicate app in services: {sorted(apps)}")
    rules = _chain_rules(services, family, bridge_nets, cache or RenderCache())
    if cache is not None:
        cache.rotate()
    return {(chain_table(c), c): lines for c, lines in rules.items()}


def _buckets(backends: Sequence[Backend]) -> list[Sequence[Backend]]:
    """Backends by position, BUCKET at a time; one bucket (a flat chain) up to BUCKET."""
    return [backends[i:i + BUCKET] for i in range(0, len(backends), BUCKET)]


def _statistic(weights: Sequence[int], i: int) -> list[str]:
    if i == len(weights) - 1:
        return []  # the last rule matches unconditionally: every connection gets a backend
    return ["-m", "statistic", "--mode", "random", "--probability", _probability(weights, i)]


def _chain_rules(
    services: Sequence[Service],
    family: Family,
    bridge_nets: Mapping[str, Sequence[str]],
    cache: RenderCache,
) -> dict[str, list[str]]:
    # Rules are collected per chain and written chain by chain, in declaration order, so the
    # text reads like `iptables-save` output and diffs between syncs stay small.
    rules: dict[str, list[str]] = {c: [] for names in BASE_CHAINS.values() for c in names}
    services = sorted(services, key=lambda s: s.app)
    if family.version == 4:
        for bridge in sorted(localnet_bridges(services)):
            rules[CHAIN_INPUT].append(" ".join(
                [
                    "-A", CHAIN_INPUT, "-i", bridge, "-d", "127.0.0.0/8", "!", "-s",
                    "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
                    *_comment(f"route_localnet guard for {bridge}"), "-j", "DROP",
                ]
            ))  # fmt: skip
    for s in services:
        proto = s.publish.proto
        if not s.backends:
            for pub in s.publishes:
                # Refuse at once rather than let the port fall through to the host. In INPUT
                # every packet is local already, so a wildcard needs no address match.
                dst = [] if pub.wildcard else ["-d", family.host(pub.host_ip)]
                reject = "tcp-reset" if proto == "tcp" else family.reject_udp
                rules[CHAIN_INPUT].append(" ".join(
                    [
                        "-A", CHAIN_INPUT, *dst, *_port_match(proto, pub.host_port),
                        *_comment(f"{s.app} has no replicas"),
                        "-j", "REJECT", "--reject-with", reject,
                    ]
                ))  # fmt: skip
            continue
        chain = svc_chain(s.app)
        natted = [p for p in s.publishes if is_natted(p)]
        for hook in (CHAIN_PREROUTING, CHAIN_OUTPUT):
            for pub in natted:
                if hook == CHAIN_PREROUTING and not is_remote_reachable(pub):
                    continue
                match = [*_dst_match(pub, family, hook), *_port_match(proto, pub.host_port)]
                rules[hook].append(" ".join(["-A", hook, *match, *_comment(s.app), "-j", chain]))
        remote = [p for p in natted if is_remote_reachable(p)]
        cts = [" ".join(ct) for ct in _ct_matches(remote, family)]
        ctx = (s.app, proto, *_snat_context(natted, family))
        buckets = _buckets(s.backends)
        if len(buckets) == 1:
            rules[chain] = _dnat_chain(s, chain, s.backends, family)
            for b in s.backends:
                rules[CHAIN_POSTROUTING].extend(_snat_of(*ctx, b, CHAIN_POSTROUTING, family))
            for b in s.backends:
                rules[CHAIN_FORWARD].extend(_backend_forward(s, b, CHAIN_FORWARD, cts, family))
        else:
            rules[chain] = []
            weights = [sum(max(1, b.weight) for b in bucket) for bucket in buckets]
            for j, bucket in enumerate(buckets):
                tag = _comment(f"{s.app} bucket {j}")
                sep = bucket_chain(SEP_PREFIX, s.app, j)
                rules[chain].append(" ".join(
                    ["-A", chain, *tag, "-p", proto, *_statistic(weights, j), "-j", sep]))
                snt = bucket_chain(SNAT_PREFIX, s.app, j)
                fwd = bucket_chain(FWD_PREFIX, s.app, j)
                key = (family.version, ctx, tuple(cts), j, tuple(bucket))
                hit = cache.get(key)
                if hit is None:
                    hit = (
                        _dnat_chain(s, sep, bucket, family),
                        [r for b in bucket for r in _snat_of(*ctx, b, snt, family)],
                        [r for b in bucket for r in _backend_forward(s, b, fwd, cts, family)],
                    )
                    cache.put(key, hit)
                rules[sep], snat, accept = hit
                if snat:
                    rules[snt] = snat
                    rules[CHAIN_POSTROUTING].append(" ".join(
                        ["-A", CHAIN_POSTROUTING, "-p", proto, *tag, "-j", snt]))
                if accept:
                    # Every rule of the bucket matches DNATed connections only: the rest of
                    # the forwarded traffic skips the bucket in one rule.
                    rules[fwd] = accept
                    rules[CHAIN_FORWARD].append(" ".join(
                        ["-A", CHAIN_FORWARD, "-p", proto, "-m", "conntrack", "--ctstate",
                         "DNAT", *tag, "-j", fwd]))  # fmt: skip
        rules[CHAIN_POSTROUTING].extend(
            " ".join(r) for r in _bridge_snat(s, natted, family, bridge_nets))
    return rules


def _dnat_chain(s: Service, chain: str, backends: Sequence[Backend], family: Family) -> list[str]:
    """One DNAT rule per backend, kube-proxy's statistic cascade (module doc). The per-backend
    rules are formatted directly (not joined from tokens): they are nearly all of a large
    render, which the fast path does on every sync."""
    weights = [max(1, b.weight) for b in backends]
    proto = s.publish.proto
    out = []
    for i, b in enumerate(backends):
        stat = " ".join(["", *_statistic(weights, i)])
        out.append(
            f'-A {chain} -m comment --comment "{s.app}/{b.name}" -p {proto}{stat} '
            f"-j DNAT --to-destination {family.endpoint(b.ip, b.port)}"
        )
    return out


def _backend_forward(
    s: Service, b: Backend, chain: str, cts: Sequence[str], family: Family
) -> list[str]:
    proto, host, port = s.publish.proto, family.host(b.ip), b.port
    out: list[str] = []
    for ct in cts:
        # Only connections we DNATed from this host port to this backend, both ways: the
        # reply rule makes lbctl independent of the engine's own FORWARD rules (Docker
        # accepts its bridges' outbound traffic, other setups may not).
        out.append(
            f"-A {chain} -d {host} -p {proto} -m {proto} --dport {port} {ct} --ctdir ORIGINAL "
            f'-m comment --comment "{s.app}/{b.name}" -j ACCEPT'
        )
        out.append(
            f"-A {chain} -s {host} -p {proto} -m {proto} --sport {port} {ct} --ctdir REPLY "
            f'-m comment --comment "{s.app}/{b.name} replies" -j ACCEPT'
        )
    return out


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


def _snat_context(
    natted: Sequence[Publish], family: Family
) -> tuple[bool, bool, tuple[int, ...]]:
    """What the source NAT rules of every backend of a service share (module doc: loopback
    or local clients, hairpin to the backend itself); worked out once per service, not per
    backend: parsing the publish addresses was most of a 5,000-backend render."""
    loopback = family.version == 4 and any(is_loopback_reachable(p) for p in natted)
    local = family.version == 6 and bool(natted)
    hairpin_ports = tuple(sorted({p.host_port for p in natted if is_remote_reachable(p)}))
    return loopback, local, hairpin_ports


def _snat_of(
    app: str, proto: str, loopback: bool, local: bool, hairpin_ports: Sequence[int],
    b: Backend, chain: str, family: Family,
) -> list[str]:  # fmt: skip
    host = family.host(b.ip)
    backend = f"-d {host} -p {proto} -m {proto} --dport {b.port}"
    tag = f'-m comment --comment "{app}/{b.name}'
    out: list[str] = []
    if loopback:
        out.append(f'-A {chain} -s 127.0.0.0/8 {backend} {tag} loopback client" -j MASQUERADE')
    if local:
        out.append(
            f"-A {chain} -m addrtype --src-type LOCAL {backend} -m conntrack --ctstate DNAT "
            f'{tag} local client" -j MASQUERADE'
        )
    for host_port in hairpin_ports:
        out.append(
            f"-A {chain} -s {host} {backend} -m conntrack --ctstate DNAT --ctorigdstport "
            f'{host_port} {tag} hairpin" -j MASQUERADE'
        )
    return out


def _bridge_snat(
    s: Service,
    natted: Sequence[Publish],
    family: Family,
    bridge_nets: Mapping[str, Sequence[str]],
) -> list[list[str]]:
    """Clients on a backend's own bridge, where bridged traffic skips netfilter (module
    doc); per network, so they stay in LBCTL-POSTROUTING whatever the backend count."""
    proto = s.publish.proto
    port = s.backends[0].port
    hairpin_ports = sorted({p.host_port for p in natted if is_remote_reachable(p)})
    out: list[list[str]] = []
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


# A token of iptables-save output: "a quoted string" or a bare word, each ending at a space.
_TOKEN = re.compile(r'"([^"\\]*)"(?=\s|$)|([^\s"\'\\]+)(?=\s|$)|(\S+)')


def _split(line: str) -> list[str]:
    """shlex.split for what iptables-save writes, ten times faster: a periodic full pass
    parses ~25,000 rules at 5,000 backends. Anything unusual (escapes, glued quotes) goes
    to shlex itself."""
    tokens = []
    for m in _TOKEN.finditer(line):
        quoted, bare, odd = m.groups()
        if odd is not None:
            return shlex.split(line)
        tokens.append(quoted if quoted is not None else bare)
    return tokens


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
        tokens = _split(line)
        if len(tokens) < 2 or tokens[0] != "-A":
            raise ValueError(f"unexpected iptables-save line: {raw!r}")
        current.rules.append(SavedRule(tokens[1], packets, nbytes, tuple(tokens[2:])))
    return tables


def parse_listing(text: str) -> SavedTable:
    """Parse `iptables -S CHAIN -v` output (rules carry `-c PACKETS BYTES`) into one table."""
    table = SavedTable([], [])
    for raw in text.splitlines():
        tokens = _split(raw)
        if len(tokens) < 2 or tokens[0] != "-A":
            continue  # -N / -P lines
        packets = nbytes = 0
        for i, tok in enumerate(tokens[:-2]):
            if tok == "-c":
                packets, nbytes = int(tokens[i + 1]), int(tokens[i + 2])
                tokens = tokens[:i] + tokens[i + 3:]
                break
        table.rules.append(SavedRule(tokens[1], packets, nbytes, tuple(tokens[2:])))
    if table.rules:
        table.chains.append(table.rules[0].chain)
    return table


def _dnat_rules(saved: Mapping[str, SavedTable]) -> list[SavedRule]:
    nat = saved.get("nat")
    if nat is None:
        return []
    return [
        r for r in nat.rules
        if r.chain.startswith((SVC_PREFIX, SEP_PREFIX)) and r.target == "DNAT"
    ]  # fmt: skip


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
