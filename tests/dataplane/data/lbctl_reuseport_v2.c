// SPDX-License-Identifier: GPL-2.0
// The program as lbctl released it before bpf/lbctl_shared.h (sizes written in the C, 256
// slots, lbctl_select one function): tests/dataplane/test_ebpf_listeners.py upgrades a host
// running it.
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
 * 4-tuple hash) over the ready set.  Flows live in an LRU map with a last-seen time, which is
 * also what the controller reads to know when a draining UDP replica has gone quiet.
 *
 * The controller (lbctl/dataplane/ebpf/) owns the maps; it never reloads this program to change
 * the replica set or the weights, it only rewrites `selection`, `config` and `groups`.
 *
 * GPL-2.0 because bpf_sk_select_reuseport() is a GPL-only helper.
 *
 * Built by bcc 0.26 (lbctl/dataplane/bpf_loader.py), which has no REUSEPORT_SOCKARRAY and no
 * map reference for a SOCKMAP in bpf_sk_select_reuseport(): the map is passed as
 * bpf_pseudo_fd(1, -K), K being the 1-based declaration order of the map (so keep `sockets`
 * declared first).
 */
#include <uapi/linux/bpf.h>

/* 64 replicas at most (model.MAX_REPLICAS), each with up to two sockets of the app's protocol
 * (IPv4 and IPv6), plus room for draining ones and replacements. */
#define MAX_SLOTS 256
/* Reuseport groups of one app: tcp/udp x v4/v6 on the wildcard address, plus a few bound to a
 * specific address. */
#define MAX_GROUPS 8
/* One selection table per group and half: slot ids, a replica of weight w appears w times
 * (scaled to fit). */
#define TABLE_LEN 256
/* A slot whose socket just closed (the controller has not caught up yet) fails selection;
 * the next entries of the table are tried before giving up. */
#define MAX_TRIES 4
/* UDP flows remembered; the least recently used is forgotten first, and a forgotten flow is
 * hashed again, which sends it to the same replica as long as the table did not change. */
#define MAX_FLOWS 65536
/* A flow's last-seen time is rewritten at most this often (ns): a busy flow does not dirty its
 * entry's cache line on every datagram, and the controller's idle window is seconds. */
#define SEEN_GRANULARITY 10000000ULL

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* Keys of `config`, N_CFG per group (group g uses [g*N_CFG, (g+1)*N_CFG)).  Two selection
 * tables per group live side by side in `selection` (see sel_key()); CFG_ACTIVE says which one
 * the program reads and CFG_LEN0/CFG_LEN1 their lengths.  The controller writes the inactive
 * table and its length, then flips CFG_ACTIVE with one 4-byte store: a connection sees either
 * the whole old set or the whole new one, never a mix (e.g. a new length over old entries). */
#define CFG_ACTIVE 0
#define CFG_LEN0 1
#define CFG_LEN1 2
#define N_CFG 4

/* Keys of `reasons` (keep in step with REASONS in lbctl/dataplane/ebpf/table.py). */
#define R_NO_READY 0     /* table empty: the kernel's own hash choice was used */
#define R_SELECT_ERROR 1 /* a selected slot had no usable socket (closed, wrong group) */
#define R_FALLBACK 2     /* every try failed: the kernel's own hash choice was used */
#define R_MIGRATED 3     /* a queued connection of a closing listener was handed over */
#define R_NO_GROUP 4     /* a group the controller has not registered: kernel's choice */
#define R_FLOW_MOVED 5   /* a UDP flow's replica left the socket map: hashed again */
#define N_REASONS 8

/* What names a reuseport group, read from its socket (md->sk).  Addresses are in network
 * byte order as the socket holds them; an IPv4 address in addr[0], the rest zero. */
struct group_key {
    u32 family;
    u32 protocol;
    u32 port; /* host byte order */
    u32 addr[4];
};

/* A UDP flow: its 4-tuple hash within a group (a collision only makes two flows share a
 * replica, as a plain hash would). */
struct flow_key {
    u32 hash;
    u32 group;
};

struct flow {
    u32 slot;
    u32 pad;
    u64 seen_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the flow's latest datagram */
};

/* slot -> socket of a replica (ready or draining); value: fd on update, socket cookie on
 * lookup (8-byte values make the cookie readable from user space). */
BPF_TABLE("sockmap", u32, u64, sockets, MAX_SLOTS);
/* Wildcard-bound groups: key (protocol == UDP) * 2 + (family == AF_INET6), value the group's
 * index + 1 (0: none registered).  The port needs no place in the key: the program is only
 * attached to groups on the app's port. */
BPF_ARRAY(wildcard, u32, 4);
/* Groups bound to a specific address.  Written by the controller only, entries added and
 * deleted but never rewritten in place; not preallocated, so a deleted entry is freed only
 * after every program run that saw it. */
BPF_F_TABLE("hash", struct group_key, u32, groups, MAX_GROUPS, BPF_F_NO_PREALLOC);
BPF_ARRAY(selection, u32, MAX_GROUPS * 2 * TABLE_LEN);
BPF_ARRAY(config, u32, MAX_GROUPS * N_CFG);
BPF_TABLE("lru_hash", struct flow_key, struct flow, flows, MAX_FLOWS);
/* Per-CPU so that counting never contends; user space sums over CPUs.  `steered` counts new
 * TCP connections and new UDP flows per slot. */
BPF_PERCPU_ARRAY(steered, u64, MAX_SLOTS);
BPF_PERCPU_ARRAY(reasons, u64, N_REASONS);
/* Round-robin position per group, one per CPU: bcc 0.26 builds for BPF ISA v1/v2, which has
 * no atomic fetch-and-add, and a per-CPU cursor needs none. */
BPF_PERCPU_ARRAY(cursor, u32, MAX_GROUPS);

#define SOCKETS_MAP ((void *)bpf_pseudo_fd(1, -1))

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

static __always_inline u32 sel_key(u32 group, u32 table, u32 pos)
{
    return (group * 2 + table) * TABLE_LEN + pos;
}

/* Try the table from position idx on; the slot chosen, or -1 when every try failed. */
static __always_inline int select_from(struct sk_reuseport_md *md, u32 group, u32 table,
                                       u32 len, u32 idx)
{
#pragma unroll
    for (int i = 0; i < MAX_TRIES; i++) {
        u32 pos = idx + i;
        if (pos >= len)
            pos -= len;
        if (pos >= TABLE_LEN) /* keeps the verifier sure of the bounds */
            break;
        u32 skey = sel_key(group, table, pos);
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

int lbctl_select(struct sk_reuseport_md *md)
{
    struct bpf_sock *sk = md->sk;
    if (!sk)
        return SK_PASS; /* the kernel always sets it; the check costs nothing */
    u32 protocol = sk->protocol;
    u32 g;
    if (md->bind_inany) {
        u32 w = (protocol == IPPROTO_UDP) * 2 + (sk->family == AF_INET6);
        u32 *wp = wildcard.lookup(&w);
        if (!wp || *wp == 0) {
            /* A group the controller has not registered yet (its first listener is being
             * inserted) or no longer serves: the kernel's own hash keeps the client served. */
            count_reason(R_NO_GROUP);
            return SK_PASS;
        }
        g = *wp - 1;
    } else {
        struct group_key gk = {};
        gk.family = sk->family;
        gk.protocol = protocol;
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
        if (!gp) {
            /* Not registered (as above): the kernel's own hash. */
            count_reason(R_NO_GROUP);
            return SK_PASS;
        }
        g = *gp;
    }
    if (g >= MAX_GROUPS)
        return SK_PASS; /* the controller never writes one; the verifier wants the bound */

    u32 key = g * N_CFG + CFG_ACTIVE;
    u32 *active = config.lookup(&key);
    if (!active)
        return SK_PASS; /* cannot happen for an ARRAY; the verifier wants the check */
    u32 table = *active & 1;
    key = g * N_CFG + (table ? CFG_LEN1 : CFG_LEN0);
    u32 *lenp = config.lookup(&key);
    if (!lenp)
        return SK_PASS;
    u32 len = *lenp;
    if (len > TABLE_LEN)
        len = TABLE_LEN;

    if (protocol == IPPROTO_UDP) {
        struct flow_key fk = {.hash = md->hash, .group = g};
        u64 now = bpf_ktime_get_ns();
        struct flow *f = flows.lookup(&fk);
        if (f) {
            u32 s = f->slot;
            if (bpf_sk_select_reuseport(md, SOCKETS_MAP, &s, 0) == 0) {
                /* A known flow stays on its replica, ready or draining: a QUIC connection or
                 * a DNS exchange must not change servers mid-way.  Not counted in `steered`,
                 * which counts flows, not datagrams. */
                if (now - f->seen_ns > SEEN_GRANULARITY)
                    f->seen_ns = now;
                return SK_PASS;
            }
            /* Its replica's socket left the map (stopped, unhealthy, or the slot went to a
             * socket of another group): the flow starts anew on a ready replica below. */
            count_reason(R_FLOW_MOVED);
        }
        if (len == 0) {
            /* No ready replica: the kernel's hash over the group, as for TCP.  Not recorded,
             * so the flow is placed by the table once a replica is ready. */
            count_reason(R_NO_READY);
            return SK_PASS;
        }
        /* A new flow is hashed, not round-robined: a flow that the LRU forgot comes back
         * to the same replica as long as the table is unchanged. */
        int s = select_from(md, g, table, len, md->hash % len);
        if (s < 0) {
            /* Nothing usable in the table: the kernel's hash keeps the client served. */
            count_reason(R_FALLBACK);
            return SK_PASS;
        }
        struct flow nf = {.slot = (u32)s, .seen_ns = now};
        flows.update(&fk, &nf);
        /* Steered a new flow to the ready replica in slot s. */
        count_steered((u32)s);
        return SK_PASS;
    }

    if (md->migrating_sk)
        count_reason(R_MIGRATED);

    if (len == 0) {
        /* No ready replica (all starting, or all draining): let the kernel pick among the
         * listeners of the group by its own hash.  Serving from a draining replica beats
         * refusing the client.  When migrating, the closing listener is already out of the
         * group, so the kernel's pick is one of the others. */
        count_reason(R_NO_READY);
        return SK_PASS;
    }

    /* Round-robin over the table rather than md->hash: a hash spreads only statistically
     * (1,000 connections over 64 replicas come out +-25% per replica), round-robin spreads
     * exactly and honours weights exactly.  The cursor is per CPU, so two CPUs each walk the
     * table; they start half a table apart so their leftovers do not pile up on the first
     * entries.  TCP needs no flow affinity here: a retransmitted SYN finds its request
     * socket in the established hash before reuseport selection runs, and a syncookie ACK
     * validates on any listener of the group (the SYN-queue overflow stamp is per group). */
    u32 *pos0 = cursor.lookup(&g);
    if (!pos0)
        return SK_PASS;
    u32 c = *pos0;
    *pos0 = c + 1;
    u32 idx = (c + bpf_get_smp_processor_id() * ((len + 1) / 2)) % len;
    int s = select_from(md, g, table, len, idx);
    if (s < 0) {
        /* Nothing usable in the table: passing (kernel's hash choice) keeps the client
         * served; dropping would turn a stale table into refused connections. */
        count_reason(R_FALLBACK);
        return SK_PASS;
    }
    /* Steered to the ready replica in slot s. */
    count_steered((u32)s);
    return SK_PASS;
}
