// SPDX-License-Identifier: GPL-2.0
/*
 * lbctl_reuseport: picks the replica for every new TCP connection and every UDP flow of one app.
 *
 * All replicas of an app share one network namespace and listen on the app port with
 * SO_REUSEPORT.  A replica may have several such sockets: TCP and/or UDP, IPv4 and/or IPv6 (or
 * one dual-stack [::] socket that takes IPv4 too).  The kernel forms one reuseport group per
 * (protocol, family, bound address, port), and this SK_REUSEPORT program (loaded with attach
 * type BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) is attached to each of the app's groups.  It runs
 * for every SYN and every UDP datagram that reaches a group, and for every queued connection of
 * a TCP listener that closes, and steers it to a *ready* replica's socket of that same group.
 * With this attach type the kernel migrates a closing listener's queue even when
 * net.ipv4.tcp_migrate_req=0 (verified on 6.18); the sandbox sets the sysctl anyway so that a
 * group without the program migrates by hash instead of resetting.
 *
 * Which group: the packet's own family is the wrong key (a dual-stack AF_INET6 group receives
 * IPv4 packets), so the group is named by its socket, md->sk: family, protocol, bound address
 * and port.  The controller registers a small index per group: a group bound to the wildcard
 * address (the usual case; md->bind_inany) in `wildcard`, an array keyed by protocol and
 * family that the verifier turns into a few loads, any other in `groups`, a hash of the whole
 * key (measured with bench/progcost.py: the hash lookup costs a TCP SYN ~80 ns, the array
 * next to nothing).  Each group has its own double-buffered selection table and round-robin
 * cursor.
 *
 * TCP: exact round-robin over the table; queued connections of a closing listener migrate.
 * UDP: a datagram of a known flow goes to the replica that flow went to, as long as that
 * replica's socket is in `sockets` (ready or draining); a new flow is hashed (md->hash, the
 * 4-tuple hash) over the ready set.  Flows live in a hash map with a last-seen time, which is
 * also what the controller reads to know when a draining UDP replica has gone quiet.  That map
 * never evicts: a spoofed flood of new flows cannot push out a flow that talks (measured with
 * an LRU there: two datagrams per spoofed flow emptied it of every real flow, and a scale or a
 * drain then moved them).  The controller forgets quiet flows; while the map is full, new flows
 * are kept in `overflow`, an LRU (whose eviction takes first what was seen only once).
 *
 * Readiness probes: a SYN from the app's own namespace to its own address, from source port
 * PROBE_PORT_BASE + slot (lbctl_shared.h), goes to that slot's socket, ready or not: the daemon
 * asks each replica, starting ones included (their listeners sit in the socket map before any
 * table names them), and never gets another replica's answer.
 *
 * Every verdict is SK_PASS but a probe's whose slot is empty: when the program selected a
 * socket the kernel uses it, otherwise the kernel's own hash over the group's sockets keeps
 * the client served.  Dropping would turn any gap in the controller's bookkeeping into refused
 * clients.  A probe is refused instead (SK_DROP: no listener, so a reset): an answer from
 * another replica would be a wrong verdict.
 *
 * The controller (lbctl/dataplane/ebpf/) owns the maps; it never reloads this program to change
 * the replica set or the weights, it only rewrites `selection`, `config` and `groups`.  Sizes,
 * keys and struct layouts are in lbctl_shared.h, which Python reads too.
 *
 * GPL-2.0 because bpf_sk_select_reuseport() is a GPL-only helper.
 *
 * Built by bcc 0.26 (lbctl/dataplane/bpf_loader.py, which puts bpf/ on the include path), which
 * has no REUSEPORT_SOCKARRAY and no map reference for a SOCKMAP in bpf_sk_select_reuseport():
 * the map is passed as bpf_pseudo_fd(1, -K), K being the 1-based declaration order of the map
 * (so keep `sockets` declared first).
 */
#include <uapi/linux/bpf.h>

#include "lbctl_shared.h"

#define AF_INET6 10
#define IPPROTO_UDP 17

/* ---------------------------------------------------------------------------------- maps */

/* slot -> socket of a replica (ready or draining); value: fd on update, socket cookie on
 * lookup (8-byte values make the cookie readable from user space). */
BPF_TABLE("sockmap", u32, u64, sockets, MAX_SLOTS);
/* Wildcard-bound groups: key (protocol == UDP) * 2 + (family == AF_INET6), value the group's
 * index + 1 (0: none registered).  The port needs no place in the key: the program is only
 * attached to groups on the app's port. */
BPF_ARRAY(wildcard, u32, N_WILDCARD);
/* Groups bound to a specific address.  Written by the controller only, entries added and
 * deleted but never rewritten in place; not preallocated, so a deleted entry is freed only
 * after every program run that saw it. */
BPF_F_TABLE("hash", struct group_key, u32, groups, MAX_GROUPS, BPF_F_NO_PREALLOC);
BPF_ARRAY(selection, u32, MAX_GROUPS * 2 * TABLE_LEN);
BPF_ARRAY(config, u32, MAX_GROUPS * N_CFG);
BPF_TABLE("hash", struct flow_key, struct flow, flows, MAX_FLOWS);
/* Per-CPU so that counting never contends; user space sums over CPUs.  `steered` counts new
 * TCP connections and new UDP flows per slot. */
BPF_PERCPU_ARRAY(steered, u64, MAX_SLOTS);
BPF_PERCPU_ARRAY(reasons, u64, N_REASONS);
/* Round-robin position per group, one per CPU: bcc 0.26 builds for BPF ISA v1/v2, which has
 * no atomic fetch-and-add, and a per-CPU cursor needs none. */
BPF_PERCPU_ARRAY(cursor, u32, MAX_GROUPS);
/* New UDP flows while `flows` is full (see the top of this file). */
BPF_TABLE("lru_hash", struct flow_key, struct flow, overflow, OVERFLOW_FLOWS);

#define SOCKETS_MAP ((void *)bpf_pseudo_fd(1, -1))

/* ------------------------------------------------------------------------------- helpers */

static __always_inline void count_reason(u32 reason)
{
    u64 *n = reasons.lookup(&reason);
    if (n)
        *n += 1;
}

static __always_inline void count_steered(u32 slot)
{
    u64 *n = steered.lookup(&slot);
    if (n)
        *n += 1;
}

/* The index the controller registered for the group md->sk belongs to, or -1. */
static __always_inline int find_group(struct bpf_sock *sk, u32 bind_inany)
{
    if (bind_inany) {
        u32 w = (sk->protocol == IPPROTO_UDP) * 2 + (sk->family == AF_INET6);
        u32 *wp = wildcard.lookup(&w);
        return (wp && *wp) ? (int)(*wp - 1) : -1;
    }
    struct group_key gk = {};
    gk.family = sk->family;
    gk.protocol = sk->protocol;
    gk.port = sk->src_port;
    if (gk.family == AF_INET6) {
        gk.addr[0] = sk->src_ip6[0];
        gk.addr[1] = sk->src_ip6[1];
        gk.addr[2] = sk->src_ip6[2];
        gk.addr[3] = sk->src_ip6[3];
    } else {
        gk.addr[0] = sk->src_ip4;
    }
    u32 *gp = groups.lookup(&gk);
    return gp ? (int)*gp : -1;
}

/* The group's live table: which half the controller flipped to, and its length (0 when no
 * replica is ready, or the config cannot be read). */
static __always_inline u32 read_table(u32 g, u32 *half)
{
    u32 key = g * N_CFG + CFG_ACTIVE;
    u32 *active = config.lookup(&key);
    if (!active)
        return 0; /* cannot happen for an ARRAY; the verifier wants the check */
    *half = *active & 1;
    key = g * N_CFG + (*half ? CFG_LEN1 : CFG_LEN0);
    u32 *lenp = config.lookup(&key);
    if (!lenp)
        return 0;
    return *lenp > TABLE_LEN ? TABLE_LEN : *lenp;
}

/* Try the table from position idx on; the slot chosen, or -1 when every try failed. */
static __always_inline int select_from(struct sk_reuseport_md *md, u32 g, u32 half, u32 len,
                                       u32 idx)
{
#pragma unroll
    for (int i = 0; i < MAX_TRIES; i++) {
        u32 pos = idx + i;
        if (pos >= len)
            pos -= len;
        if (pos >= TABLE_LEN) /* keeps the verifier sure of the bounds */
            break;
        u32 skey = (g * 2 + half) * TABLE_LEN + pos;
        u32 *slot = selection.lookup(&skey);
        if (!slot)
            break;
        u32 s = *slot;
        if (bpf_sk_select_reuseport(md, SOCKETS_MAP, &s, 0) == 0)
            return s;
        /* The slot's socket is gone (replica died before the controller noticed) or is not
         * in this group: count it and try the next entry. */
        count_reason(R_SELECT_ERROR);
        if (i + 1 >= len)
            break;
    }
    return -1;
}

/* The slot a readiness probe names, or -1 when the SYN is no probe: a source port in the probe
 * range (the TCP header is at md->data) and a source address equal to the destination, which
 * only a connection from the namespace to itself has (the IP header, read relative to the
 * network header: md->data starts at the transport header). */
static __always_inline int probe_slot(struct sk_reuseport_md *md)
{
    u8 *d = (u8 *)(long)md->data;
    if ((void *)(d + 2) > (void *)(long)md->data_end)
        return -1;
    u32 sport = ((u32)d[0] << 8) | d[1];
    if (sport < PROBE_PORT_BASE || sport >= PROBE_PORT_BASE + MAX_SLOTS)
        return -1;
    u8 ver = 0;
    if (bpf_skb_load_bytes_relative(md, 0, &ver, 1, BPF_HDR_START_NET))
        return -1;
    if (ver >> 4 == 4) {
        u32 a[2] = {};  /* saddr, daddr: offset 12 of the IPv4 header */
        if (bpf_skb_load_bytes_relative(md, 12, a, sizeof(a), BPF_HDR_START_NET) || a[0] != a[1])
            return -1;
    } else if (ver >> 4 == 6) {
        u64 a[4] = {};  /* saddr, daddr: offset 8 of the IPv6 header */
        if (bpf_skb_load_bytes_relative(md, 8, a, sizeof(a), BPF_HDR_START_NET) ||
            a[0] != a[2] || a[1] != a[3])
            return -1;
    } else {
        return -1;
    }
    return (int)(sport - PROBE_PORT_BASE);
}

/* A new TCP connection, or a queued one of a closing listener: round-robin over the table. */
static __always_inline int tcp_select(struct sk_reuseport_md *md, u32 g, u32 half, u32 len)
{
    if (md->migrating_sk)
        count_reason(R_MIGRATED);
    if (len == 0) {
        /* No ready replica (all starting, or all draining): the kernel picks among the group's
         * listeners by its own hash; a draining replica serving beats refusing the client.
         * When migrating, the closing listener is already out of the group. */
        count_reason(R_NO_READY_REPLICA);
        return SK_PASS;
    }
    /* Round-robin rather than md->hash: a hash spreads only statistically (1,000 connections
     * over 64 replicas come out +-25% per replica), round-robin spreads and honours weights
     * exactly.  The cursor is per CPU, so two CPUs each walk the table; they start half a
     * table apart so their leftovers do not pile up on the first entries.  No flow affinity is
     * needed: a retransmitted SYN finds its request socket in the established hash before
     * reuseport selection runs, and a syncookie ACK validates on any listener of the group. */
    u32 *pos = cursor.lookup(&g);
    if (!pos)
        return SK_PASS; /* cannot happen for an ARRAY: kernel's choice */
    u32 c = *pos;
    *pos = c + 1;
    u32 idx = (c + bpf_get_smp_processor_id() * ((len + 1) / 2)) % len;
    int s = select_from(md, g, half, len, idx);
    if (s < 0) {
        /* Nothing usable in the table: the kernel's choice keeps the client served. */
        count_reason(R_FALLBACK);
        return SK_PASS;
    }
    /* Steered to the ready replica in slot s. */
    count_steered((u32)s);
    return SK_PASS;
}

/* A UDP datagram: a known flow stays on its replica, a new one is hashed over the table. */
static __always_inline int udp_select(struct sk_reuseport_md *md, u32 g, u32 half, u32 len)
{
    struct flow_key fk = {.hash = md->hash, .group = g};
    u64 now = bpf_ktime_get_ns();
    struct flow *f = flows.lookup(&fk);
    if (!f)
        f = overflow.lookup(&fk);
    if (f) {
        u32 s = f->slot;
        if (bpf_sk_select_reuseport(md, SOCKETS_MAP, &s, 0) == 0) {
            /* A known flow stays on its replica, ready or draining: a QUIC connection or a DNS
             * exchange must not change servers mid-way.  Not counted in `steered`, which
             * counts flows, not datagrams. */
            if (now - f->seen_ns > SEEN_GRANULARITY)
                f->seen_ns = now;
            return SK_PASS;
        }
        /* Its replica's socket left the map (stopped, unhealthy, or the slot went to a socket
         * of another group): the flow starts anew on a ready replica below. */
        count_reason(R_FLOW_MOVED);
    }
    if (len == 0) {
        /* No ready replica: the kernel's hash over the group, as for TCP.  Not recorded, so
         * the flow is placed by the table once a replica is ready. */
        count_reason(R_NO_READY_REPLICA);
        return SK_PASS;
    }
    /* Hashed, not round-robined: a flow the maps forgot comes back to the same replica as
     * long as the table is unchanged. */
    int s = select_from(md, g, half, len, md->hash % len);
    if (s < 0) {
        /* Nothing usable in the table: the kernel's hash keeps the client served. */
        count_reason(R_FALLBACK);
        return SK_PASS;
    }
    if (f) {
        /* In place: the entry it has, wherever it is, and no allocation. */
        f->slot = (u32)s;
        f->seen_ns = now;
    } else {
        struct flow nf = {.slot = (u32)s, .seen_ns = now};
        /* BPF_NOEXIST: a full `flows` refuses (E2BIG) rather than evict; then `overflow`. */
        if (flows.insert(&fk, &nf) != 0)
            overflow.update(&fk, &nf);
    }
    /* Steered the new flow to the ready replica in slot s. */
    count_steered((u32)s);
    return SK_PASS;
}

/* ------------------------------------------------------------------------------- program */

int lbctl_select(struct sk_reuseport_md *md)
{
    struct bpf_sock *sk = md->sk;
    if (!sk)
        return SK_PASS; /* the kernel always sets it; the check costs nothing */
    if (sk->protocol != IPPROTO_UDP && !md->migrating_sk) {
        int ps = probe_slot(md);
        if (ps >= 0) {
            /* Whatever the tables say, and even before the group is registered: a starting
             * replica is probed before it gets traffic.  Not counted in `steered`. */
            u32 s = (u32)ps;
            if (bpf_sk_select_reuseport(md, SOCKETS_MAP, &s, 0) != 0)
                return SK_DROP;
            count_reason(R_PROBE);
            return SK_PASS;
        }
    }
    int g = find_group(sk, md->bind_inany);
    if (g < 0) {
        /* A group the controller has not registered yet (its first listener is being
         * inserted) or no longer serves: the kernel's own hash keeps the client served. */
        count_reason(R_NO_GROUP);
        return SK_PASS;
    }
    if (g >= MAX_GROUPS)
        return SK_PASS; /* the controller never writes one; the verifier wants the bound */
    u32 half = 0;
    u32 len = read_table(g, &half);
    if (sk->protocol == IPPROTO_UDP)
        return udp_select(md, g, half, len);
    return tcp_select(md, g, half, len);
}
