/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What bpf/lbctl_reuseport.c and lbctl's Python side (lbctl/dataplane/ebpf/layout.py) must
 * agree on: map sizes, the keys of `config` and `reasons`, and the layout of the structs that
 * cross between them.  Both read this file: the program #includes it, Python parses it at
 * import, so a change here is a change on both sides (and changes the program's version tag,
 * so running hosts load the new program beside the old one and swap).
 *
 * Python reads only two forms, one per line: `#define NAME NUMBER` (an optional U/L suffix)
 * and `struct NAME { u32|u64 FIELD[N]; ... };`.  Keep it to those.
 */
#ifndef LBCTL_SHARED_H
#define LBCTL_SHARED_H

/* Sockets of one app in the socket map.  The worst rollout (tests/dataplane/test_ebpf_layout.py
 * derives it from the model's limits): 64 replicas (model.MAX_REPLICAS) plus a surge of 64
 * (the update policy's largest parallelism), plus one more batch of 64 still draining when the
 * next update starts, each with two sockets of the app's protocol (IPv4 and IPv6): 384.
 * (Readiness probes need no slot of their own: one names the slot of the listener it asks,
 * PROBE_PORT_BASE below.)  1024 leaves room beyond that; the maps stay small (8 KiB of socket
 * pointers, 8 bytes per slot and CPU of counters), and the probes' source ports, one per slot,
 * end at 62023. */
#define MAX_SLOTS 1024
/* Reuseport groups of one app: tcp/udp x v4/v6 on the wildcard address, plus a few bound to a
 * specific address. */
#define MAX_GROUPS 8
/* One selection table per group and half: slot ids, a replica of weight w appears w times
 * (scaled to fit).  Ready replicas at the peak of a rollout: 128. */
#define TABLE_LEN 256
/* A slot whose socket just closed (the controller has not caught up yet) fails selection;
 * the next entries of the table are tried before giving up. */
#define MAX_TRIES 4
/* UDP flows remembered.  `flows` never forgets a flow by itself: a flood of new flows (spoofed
 * sources) can fill it, never push out a flow already there; the controller forgets the ones
 * that went quiet (lbctl/dataplane/ebpf/flows.py: expire).  While it is full, new flows go to
 * `overflow`, an LRU of OVERFLOW_FLOWS, where what a flood pushes out first is a flow that sent
 * one datagram only.  A forgotten flow is hashed again, which sends it to the same replica as
 * long as the table did not change. */
#define MAX_FLOWS 65536
#define OVERFLOW_FLOWS 16384
/* A flow's last-seen time is rewritten at most this often (ns): a busy flow does not dirty its
 * entry's cache line on every datagram, and the controller's idle window is seconds. */
#define SEEN_GRANULARITY 10000000ULL

/* Keys of `config`, N_CFG per group (group g uses [g*N_CFG, (g+1)*N_CFG)).  Two selection
 * tables per group live side by side in `selection`; CFG_ACTIVE says which one the program
 * reads and CFG_LEN0/CFG_LEN1 their lengths.  The controller writes the inactive table and its
 * length, then flips CFG_ACTIVE with one 4-byte store: a connection sees either the whole old
 * set or the whole new one, never a mix (e.g. a new length over old entries). */
#define CFG_ACTIVE 0
#define CFG_LEN0 1
#define CFG_LEN1 2
#define N_CFG 4

/* Keys of `reasons`: why the program left a choice to the kernel, or did something worth
 * counting.  Python names each by its macro, lower-cased without R_ (the metrics' label), so a
 * key keeps its number for good: counters carried over from an older program keep meaning. */
#define R_NO_READY_REPLICA 0 /* table empty: the kernel's own hash choice was used */
#define R_SELECT_ERROR 1     /* a selected slot had no usable socket (closed, wrong group) */
#define R_FALLBACK 2         /* every try failed: the kernel's own hash choice was used */
#define R_MIGRATED 3         /* a queued connection of a closing listener was handed over */
#define R_NO_GROUP 4         /* a group the controller has not registered: kernel's choice */
#define R_FLOW_MOVED 5       /* a UDP flow's replica left the socket map: hashed again */
#define R_PROBE 6            /* a readiness probe went to the replica it named (not steered) */
#define N_REASONS 8

/* Readiness probes (lbctl.controller.readiness): the daemon asks one replica at a time whether
 * it answers, though every replica listens on the same address and port.  A probe connects
 * from inside the app's namespace to its own address (source address == destination address),
 * from source port PROBE_PORT_BASE + the slot of the listener it asks about, and the program
 * sends that SYN to that slot's socket whatever the selection table says, or refuses it when
 * the slot holds no socket of the group (a probe is never answered by another replica).  The
 * range lies above Linux's ephemeral ports (ip_local_port_range defaults to 32768-60999, which
 * lbctl's sandbox sets explicitly), and no client outside the namespace has a source address
 * equal to its destination, so nothing else is steered this way: a remote macOS or Windows
 * client (ephemeral ports 49152-65535) from port 61005 is balanced like any other. */
#define PROBE_PORT_BASE 61000

/* Keys of `wildcard`: a group bound to the wildcard address, by protocol and family. */
#define N_WILDCARD 4

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

#endif /* LBCTL_SHARED_H */
