"""ebpf mode: the replicas of an app share one network namespace and listen on the app port
with SO_REUSEPORT; an SK_REUSEPORT program (bpf/lbctl_reuseport.c) picks the replica for every
new TCP connection and every new UDP flow from a SOCKMAP that the daemon keeps in step with
the ready replicas, and keeps a UDP flow on its replica while that one is ready or draining.

A replica may have several sockets on the port (IPv4 and IPv6, or one dual-stack socket),
and the kernel puts each in the reuseport group of its (protocol, family, bound address): the
daemon gives each group a table of its own, and each socket a slot of its own.

Life of an app's objects:
  * the program and its maps are compiled and loaded by a short-lived helper process
    (lbctl.dataplane.bpf_loader) and pinned under <pin_root>/<app>/, so the daemon never maps
    LLVM and the data plane outlives the daemon (a restarted daemon reopens the pins; the
    attached program kept steering meanwhile and its counters and UDP flows survive);
  * slots (sockmap keys) are stable per replica name and listener group, table indexes per
    group, both persisted in <state_dir>/ebpf/<app>.json, so counters keep their meaning
    across restarts (a replica's counter is the sum over its slots);
  * a listener is borrowed from the replica (pidfd_getfd) only long enough to insert it into
    the sockmap and attach the program: the daemon never keeps a replica's listener alive.

The package is split by what each part is responsible for, so each can be read (and the
pure parts tested) on its own:
  layout   the sizes, keys and struct layouts of bpf/lbctl_shared.h, the one source the C
           program and this package read;
  table    the contract with the C program: map sizes, config keys, reasons, the groups, the
           selection tables and their double-buffered write;
  flows    the UDP flow map: how recently a replica's flows were seen (drains), and copying
           them into an upgraded program;
  pins     the bpffs directories: loader subprocess, opening pins, upgrade and recovery;
  slots    which replica's listener sits in which slot, which group has which table,
           persisted in the state dir;
  observe  a sync's reads: what the maps hold, which listeners the members have (`Have`);
  plan     a sync's decisions, pure: (have, want) -> the slots, tables and groups to change;
  apply    a sync's writes, in the order that never misroutes;
  counters reading the counters without the sync lock (a scrape never waits for a sync);
  errors   EbpfError (lbctl's problem) vs ListenerError (the app's);
  plane    EbpfDataplane, the facade the daemon uses: observe, plan, apply under a per-app
           lock.

Importers use this package's names; the modules are for the package and the benchmarks.
"""

from __future__ import annotations

from lbctl.dataplane.ebpf.errors import EbpfError, ListenerError
from lbctl.dataplane.ebpf.plane import EbpfDataplane
from lbctl.dataplane.ebpf.table import MAX_SLOTS, REASONS, TABLE_LEN, build_table

__all__ = [
    "MAX_SLOTS",
    "REASONS",
    "TABLE_LEN",
    "EbpfDataplane",
    "EbpfError",
    "ListenerError",
    "build_table",
]
