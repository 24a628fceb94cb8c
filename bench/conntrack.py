"""What deleting a drained replica's conntrack entries costs, the old way and the new.

`python -m bench.conntrack [--entries N] [--rounds R]` (root; about a minute with the
defaults). A drained iptables-mode replica of a busy app leaves tens of thousands of
TIME_WAIT entries, which lbctl deletes one by one by their reply tuple just before the
replica stops (lbctl.dataplane.conntrack says why), so their cost holds up `lbctl rm` and a
rollout's last step. This inserts N such entries (TIME_WAIT, NATed to one backend, plus a
few of another backend that must stay) and deletes them, the two ways in turn, R rounds,
which way goes first alternating (a shared machine drifts within a run), the entries
inserted afresh before each:

  old   pyroute2's NFCTSocket: dump(tuple_reply=...) and one entry("del", tuple_reply=...,
        id=...) per entry, each waiting for its answer (what forget_backend did before
        lbctl.dataplane.ctnetlink)
  new   lbctl.dataplane.conntrack.forget_backend: lbctl's own ctnetlink messages, the dump
        parsed as far as the tuples, state and id, the deletes 256 to a sendmsg

Prints each round, then the wall time and the process's CPU time (every thread's: the new
way runs in asyncio's worker thread) per 1,000 entries and the ratio old/new (median, min,
max of the rounds). The entries are in the host's own table, on addresses nobody uses
(198.18.0.0/15 is reserved for tests), and go at the end, on failure and Ctrl-C too (and
time out after TIMEOUT seconds anyway). The kernel walks the whole table for a dump, so
the host's own entry count is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pyroute2 import NFCTSocket
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from lbctl import malloc
from lbctl.dataplane.conntrack import forget_backend
from lbctl.dataplane.ctnetlink import CtSocket, Match, Tuple

FRONT, BACKEND, OTHER = "198.18.9.2", "198.18.9.10", "198.18.9.11"
PORT, FRONT_PORT = 8080, 80
DECOYS = 10  # entries of another replica: both ways must leave them
TIME_WAIT, ESTABLISHED = 7, 3  # enum tcp_conntrack
SEEN_REPLY_ASSURED = (1 << 1) | (1 << 2)
TIMEOUT = 900  # seconds: outlives a run, bounds what a killed one leaves
_PORTS = 50000  # client ports per client address (10000..59999)


def client_tuples(n: int, backend: str, first: int = 0) -> Iterator[tuple[Tuple, Tuple]]:
    """n connections from distinct client tuples (198.18.10.x: port) to FRONT, NATed to
    backend:PORT."""
    for i in range(first, first + n):
        client, cport = f"198.18.{10 + i // (_PORTS * 250)}.{1 + i // _PORTS % 250}", (
            10000 + i % _PORTS)
        yield (Tuple(client, FRONT, cport, FRONT_PORT), Tuple(backend, client, PORT, cport))


def insert(n: int) -> None:
    """The drained replica's n TIME_WAIT entries, and the other replica's decoys."""
    with CtSocket() as ct:
        for backend, count, first in ((BACKEND, n, 0), (OTHER, DECOYS, n)):
            made = ct.create(socket.AF_INET, socket.IPPROTO_TCP,
                             client_tuples(count, backend, first), tcp_state=TIME_WAIT,
                             timeout=TIMEOUT, status=SEEN_REPLY_ASSURED)  # fmt: skip
            if made != count:
                raise RuntimeError(f"inserted {made} entries of {backend}, not {count}")


def count(backend: str) -> int:
    with CtSocket() as ct:
        return sum(1 for e in ct.dump(socket.AF_INET, socket.IPPROTO_TCP,
                                      reply=Match(src=backend, sport=PORT))
                   if e.reply.src == backend)


def old_forget_backend(ip: str, port: int) -> int:
    """forget_backend's IPv4 TCP path as it was with pyroute2 (lbctl before ctnetlink.py):
    the dump filtered on the reply tuple, then one delete per entry, by reply tuple and id."""
    num, found, gone = socket.IPPROTO_TCP, [], 0
    with NFCTSocket(nfgen_family=socket.AF_INET) as ct:
        wanted = NFCTAttrTuple(family=socket.AF_INET, saddr=ip, proto=num, sport=port)
        for msg in ct.dump(tuple_reply=wanted):
            reply = msg.get_attr("CTA_TUPLE_REPLY")
            if reply is None:
                continue
            r_ip, r_proto = reply.get_attr("CTA_TUPLE_IP"), reply.get_attr("CTA_TUPLE_PROTO")
            if (r_ip.get_attr("CTA_IP_V4_SRC") != ip
                    or r_proto.get_attr("CTA_PROTO_SRC_PORT") != port
                    or r_proto.get_attr("CTA_PROTO_NUM") != num):
                continue
            info = msg.get_attr("CTA_PROTOINFO")
            tcp = info.get_attr("CTA_PROTOINFO_TCP") if info is not None else None
            if tcp is not None and tcp.get_attr("CTA_PROTOINFO_TCP_STATE") == ESTABLISHED:
                continue
            found.append((r_ip.get_attr("CTA_IP_V4_DST"),
                          r_proto.get_attr("CTA_PROTO_DST_PORT"), msg.get_attr("CTA_ID")))
        for daddr, dport, ct_id in found:
            tuple_reply = NFCTAttrTuple(family=socket.AF_INET, saddr=ip, daddr=daddr,
                                        proto=num, sport=port, dport=dport)
            try:
                ct.entry("del", tuple_reply=tuple_reply, id=ct_id)
                gone += 1
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise
    malloc.trim()
    return gone


def new_forget_backend(ip: str, port: int) -> int:
    return asyncio.run(forget_backend(ip, port))


WAYS: dict[str, tuple[str, Callable[[str, int], int]]] = {
    "old": ("pyroute2 NFCTSocket, one delete at a time", old_forget_backend),
    "new": ("lbctl ctnetlink (forget_backend)", new_forget_backend),
}


def measure(way: str, n: int) -> tuple[float, float]:
    """Seconds of wall and process CPU time the way takes to delete n fresh entries."""
    insert(n)
    wall, cpu = time.perf_counter(), time.process_time()
    gone = WAYS[way][1](BACKEND, PORT)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    left, decoys = count(BACKEND), count(OTHER)
    if (gone, left, decoys) != (n, 0, DECOYS):
        raise RuntimeError(f"{way}: deleted {gone} of {n}, {left} left, {decoys} of the "
                           f"other replica's {DECOYS} stayed")
    cleanup()  # the decoys, before the next insert
    return wall, cpu


def cleanup() -> None:
    for ip in (BACKEND, OTHER):
        subprocess.run(["conntrack", "-D", "-p", "tcp", "--reply-src", ip],
                       capture_output=True, check=False)


def table_size() -> str:
    path = Path("/proc/sys/net/netfilter/nf_conntrack_count")
    return path.read_text().strip() if path.exists() else "?"


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f}x (min {min(xs):.1f}, max {max(xs):.1f})"


def run(n: int, rounds: int) -> None:
    others = table_size()
    insert(100)  # warm-up: imports, first sockets, asyncio's thread pool; not counted
    old_forget_backend(BACKEND, PORT)
    new_forget_backend(OTHER, PORT)
    cleanup()
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for r in range(rounds):
        for way in sorted(WAYS, reverse=r % 2 == 1):
            wall, cpu = measure(way, n)
            results[way].append((wall, cpu))
            print(f"round {r + 1} {way}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    print(f"\n{n} TIME_WAIT entries of one backend (+{DECOYS} of another), {rounds} rounds; "
          f"the host's table had {others} entries of its own; kernel {os.uname().release}\n")
    print("| way | wall ms / 1,000 entries | CPU ms / 1,000 entries |\n|---|---|---|")
    for way, (label, _) in WAYS.items():
        walls, cpus = ([x[i] for x in results[way]] for i in (0, 1))
        print(f"| {way}: {label} | {statistics.median(walls) * 1e6 / n:.1f} | "
              f"{statistics.median(cpus) * 1e6 / n:.1f} |")
    pairs = list(zip(results["old"], results["new"], strict=True))
    print(f"\nold/new (median of rounds): wall {spread([o[0] / w[0] for o, w in pairs])}, "
          f"CPU {spread([o[1] / w[1] for o, w in pairs])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.conntrack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=30000, help="TIME_WAIT entries to delete")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each way")
    args = p.parse_args(argv)
    if not 0 < args.entries <= 10_000_000 or args.rounds < 1:
        p.error("--entries must be 1..10,000,000 and --rounds at least 1")
    # SIGTERM too goes through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        run(args.entries, args.rounds)
    finally:
        with contextlib.suppress(Exception):
            cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
