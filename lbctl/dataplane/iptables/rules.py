"""What each of lbctl's chains holds for a set of services: render_chains(), pure (no I/O).

Modelled on kube-proxy's iptables proxier: every sync renders *all* of lbctl's chains from the
desired state, and restore.py turns the chains that differ into one transaction.

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
  raw PREROUTING, OUTPUT -> LBCTL-HOLD-PREROUTING, LBCTL-HOLD-OUTPUT   (jumped to by TCP
      SYNs only) the traffic hold of a paused app (lbctl pause): per publish, as the nat
      rules match it, `-m time --datestop DEADLINE -j DROP`. A new connection's SYN is
      dropped before conntrack or NAT see it, so nothing is refused or reset: the client
      sends it again (after 1, 3, 7, 15, 31, 63 s with Linux's defaults) and is served by the
      first retry after the hold. The deadline is in the rule (UTC, to the second): the hold
      ends by itself even when no daemon runs to remove it;
  filter INPUT    -> LBCTL-INPUT
      * services with 0 backends: REJECT (tcp-reset / icmp(6)-port-unreachable) on the host
        port, so a client is refused at once and the port never falls through to whatever
        else might listen on the host;
      * IPv4, per bridge with route_localnet=1: drop packets from that bridge to 127.0.0.0/8
        that are not replies/DNATed (kube-proxy's CVE-2020-8558 guard: route_localnet would
        otherwise let containers reach the host's loopback-only services).

Large services (more than BUCKET backends: IptablesSettings.bucket, 64 by default) are cut
into buckets of BUCKET backends, by
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
the layout is the flat one above.  Why 64 by default: small enough that rewriting a bucket's chains
costs about what a tiny chain does (a few ms), large enough that 5,000 backends make ~240
chains, not 15,000: creating a chain costs ~0.1 ms in nf_tables and an iptables-save of
15,000 chains took 1.3 s here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from lbctl.dataplane.iptables.chains import (
    BASE_CHAINS,
    CHAIN_FORWARD,
    CHAIN_HOLD_OUTPUT,
    CHAIN_HOLD_PREROUTING,
    CHAIN_INPUT,
    CHAIN_OUTPUT,
    CHAIN_POSTROUTING,
    CHAIN_PREROUTING,
    FWD_PREFIX,
    GUARD_COMMENT,
    SEP_PREFIX,
    SNAT_PREFIX,
    bucket_chain,
    chain_table,
    svc_chain,
)
from lbctl.dataplane.iptables.family import (
    IPV4,
    Family,
    is_loopback_reachable,
    is_natted,
    is_remote_reachable,
    localnet_bridges,
)
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service
from lbctl.settings import IptablesSettings


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
    bucket: int = IptablesSettings.bucket,
    raw: bool = True,
) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> its rule lines (without counters): every chain lbctl wants for
    `services`, and what the applier keeps in memory between syncs. No services: {}.
    `cache`: the buckets of the previous render, reused where nothing they depend on
    changed (the result is the same with or without it).  `bucket`: backends per bucket
    chain (module doc, "Large services"). `raw`: declare the traffic hold's raw chains even
    while no service holds (False: only when one does; a host where no app was ever paused
    never gets a raw table from lbctl, whose hooks every packet would cross)."""
    if not services:
        return {}
    apps = [s.app for s in services]
    if len(set(apps)) != len(apps):
        raise ValueError(f"duplicate app in services: {sorted(apps)}")
    if bucket < 1:
        raise ValueError(f"bucket must be at least 1, not {bucket}")
    rules = _chain_rules(services, family, bridge_nets, cache or RenderCache(), bucket)
    if not raw and not any(rules[c] for c in BASE_CHAINS["raw"]):
        for c in BASE_CHAINS["raw"]:
            del rules[c]
    if cache is not None:
        cache.rotate()
    return {(chain_table(c), c): lines for c, lines in rules.items()}


def wanted_chains(
    services: Sequence[Service],
    family: Family = IPV4,
    bridge_nets: Mapping[str, Sequence[str]] = {},  # read-only, never mutated
) -> set[tuple[str, str]]:
    """(table, chain) pairs the ruleset for `services` declares; everything else named
    LBCTL-* on the host is stale. No services: no chains at all (full removal)."""
    return set(render_chains(services, family, bridge_nets))


def _buckets(backends: Sequence[Backend], size: int) -> list[Sequence[Backend]]:
    """Backends by position, `size` at a time; one bucket (a flat chain) up to `size`."""
    return [backends[i:i + size] for i in range(0, len(backends), size)]


def _statistic(weights: Sequence[int], i: int) -> list[str]:
    if i == len(weights) - 1:
        return []  # the last rule matches unconditionally: every connection gets a backend
    return ["-m", "statistic", "--mode", "random", "--probability", _probability(weights, i)]


def _chain_rules(
    services: Sequence[Service],
    family: Family,
    bridge_nets: Mapping[str, Sequence[str]],
    cache: RenderCache,
    bucket_size: int,
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
                    *_comment(GUARD_COMMENT + bridge), "-j", "DROP",
                ]
            ))  # fmt: skip
    for s in services:
        proto = s.publish.proto
        if s.hold_until is not None and proto == "tcp":
            for hook, chain in ((CHAIN_PREROUTING, CHAIN_HOLD_PREROUTING),
                                (CHAIN_OUTPUT, CHAIN_HOLD_OUTPUT)):
                rules[chain].extend(_hold_rules(s, s.hold_until, family, hook, chain))
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
        buckets = _buckets(s.backends, bucket_size)
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


def _hold_rules(s: Service, until: float, family: Family, hook: str, chain: str) -> list[str]:
    """The hold's DROP of new connections to each publish (module doc), matched as the nat
    `hook`'s rules match it (a loopback publish takes no remote client)."""
    stop = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(until))
    out = []
    for pub in s.publishes:
        if hook == CHAIN_PREROUTING and not is_remote_reachable(pub):
            continue
        match = [*_dst_match(pub, family, hook), "-p", "tcp", "-m", "tcp", "--dport",
                 str(pub.host_port)]
        out.append(" ".join(["-A", chain, *match, "-m", "time", "--datestop", stop,
                             *_comment(f"{s.app} paused"), "-j", "DROP"]))
    return out


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
