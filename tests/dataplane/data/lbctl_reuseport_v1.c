// SPDX-License-Identifier: GPL-2.0
// The program as lbctl released it before listener groups and UDP (one TCP listener per
// replica, one table): tests/dataplane/test_ebpf.py upgrades a host running it.
/*
 * lbctl_reuseport: picks the replica for every new TCP connection of one app.
 *
 * All replicas of an app share one network namespace and each listens on the app port with
 * SO_REUSEPORT, so the kernel forms one reuseport group.  This SK_REUSEPORT program (loaded
 * with attach type BPF_SK_REUSEPORT_SELECT_OR_MIGRATE) runs for every SYN that reaches the
 * group and for every queued connection of a listener that closes, and steers it to a
 * *ready* replica's listener.  With this attach type the kernel migrates a closing
 * listener's queue even when net.ipv4.tcp_migrate_req=0 (verified on 6.18); the sandbox sets
 * the sysctl anyway so that a group without the program migrates by hash instead of
 * resetting.
 *
 * The controller (lbctl/dataplane/ebpf.py) owns the maps; it never reloads this program to
 * change the replica set or the weights, it only rewrites `selection` and `config`.
 *
 * GPL-2.0 because bpf_sk_select_reuseport() is a GPL-only helper.
 *
 * Built by bcc 0.26 (lbctl/dataplane/bpf_loader.py), which has no REUSEPORT_SOCKARRAY and no
 * map reference for a SOCKMAP in bpf_sk_select_reuseport(): the map is passed as
 * bpf_pseudo_fd(1, -K), K being the 1-based declaration order of the map (so keep `sockets`
 * declared first).
 */
#include <uapi/linux/bpf.h>

/* 64 replicas at most (model.MAX_REPLICAS) plus room for draining ones and replacements. */
#define MAX_SLOTS 128
/* One selection table: slot ids, a replica of weight w appears w times (scaled to fit). */
#define TABLE_LEN 256
/* A slot whose socket just closed (the controller has not caught up yet) fails selection;
 * the next entries of the table are tried before giving up. */
#define MAX_TRIES 4

/* Keys of `config`.  Two selection tables live side by side in `selection` (entries
 * [0, TABLE_LEN) and [TABLE_LEN, 2*TABLE_LEN)); CFG_ACTIVE says which one the program reads
 * and CFG_LEN0/CFG_LEN1 their lengths.  The controller writes the inactive table and its
 * length, then flips CFG_ACTIVE with one 4-byte store: a connection sees either the whole old
 * set or the whole new one, never a mix (e.g. a new length over old entries). */
#define CFG_ACTIVE 0
#define CFG_LEN0 1
#define CFG_LEN1 2
#define N_CFG 4

/* Keys of `reasons` (keep in step with REASONS in lbctl/dataplane/ebpf.py). */
#define R_NO_READY 0     /* table empty: the kernel's own hash choice was used */
#define R_SELECT_ERROR 1 /* a selected slot had no usable socket (closed, wrong group) */
#define R_FALLBACK 2     /* every try failed: the kernel's own hash choice was used */
#define R_MIGRATED 3     /* a queued connection of a closing listener was handed over */
#define N_REASONS 8

/* slot -> listening socket of a replica (ready or draining); value: fd on update, socket
 * cookie on lookup (8-byte values make the cookie readable from user space). */
BPF_TABLE("sockmap", u32, u64, sockets, MAX_SLOTS);
BPF_ARRAY(selection, u32, 2 * TABLE_LEN);
BPF_ARRAY(config, u32, N_CFG);
/* Per-CPU so that counting never contends; user space sums over CPUs. */
BPF_PERCPU_ARRAY(steered, u64, MAX_SLOTS);
BPF_PERCPU_ARRAY(reasons, u64, N_REASONS);
/* Round-robin position, one per CPU: bcc 0.26 builds for BPF ISA v1/v2, which has no atomic
 * fetch-and-add, and a per-CPU cursor needs none. */
BPF_PERCPU_ARRAY(cursor, u32, 1);

#define SOCKETS_MAP ((void *)bpf_pseudo_fd(1, -1))

static __always_inline void count_reason(u32 reason)
{
    u64 *n = reasons.lookup(&reason);
    if (n)
        *n += 1;
}

int lbctl_select(struct sk_reuseport_md *md)
{
    u32 key = CFG_ACTIVE;
    u32 *active = config.lookup(&key);
    if (!active)
        return SK_PASS; /* cannot happen for an ARRAY; the verifier wants the check */
    u32 table = *active & 1;
    key = table ? CFG_LEN1 : CFG_LEN0;
    u32 *lenp = config.lookup(&key);
    if (!lenp)
        return SK_PASS;
    u32 len = *lenp;
    if (len > TABLE_LEN)
        len = TABLE_LEN;

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
    key = 0;
    u32 *pos0 = cursor.lookup(&key);
    if (!pos0)
        return SK_PASS;
    u32 c = *pos0;
    *pos0 = c + 1;
    u32 idx = (c + bpf_get_smp_processor_id() * ((len + 1) / 2)) % len;

#pragma unroll
    for (int i = 0; i < MAX_TRIES; i++) {
        u32 pos = idx + i;
        if (pos >= len)
            pos -= len;
        if (pos >= TABLE_LEN) /* keeps the verifier sure of the bounds */
            break;
        u32 skey = table * TABLE_LEN + pos;
        u32 *slot = selection.lookup(&skey);
        if (!slot)
            break;
        u32 s = *slot;
        if (bpf_sk_select_reuseport(md, SOCKETS_MAP, &s, 0) == 0) {
            /* Steered to the ready replica in slot s. */
            u64 *n = steered.lookup(&s);
            if (n)
                *n += 1;
            return SK_PASS;
        }
        /* The slot's socket is gone (replica died before the controller noticed) or is not
         * in this group: count it and try the next entry. */
        count_reason(R_SELECT_ERROR);
        if (i + 1 >= len)
            break;
    }
    /* Nothing usable in the table: passing (kernel's hash choice) keeps the client served;
     * dropping would turn a stale table into refused connections. */
    count_reason(R_FALLBACK);
    return SK_PASS;
}
