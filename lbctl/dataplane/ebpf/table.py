"""The selection table: the one structure the program reads on every new connection, and the
only thing the daemon rewrites to change which replicas get traffic (it never reloads the
program for that).

This module is the Python side of the contract with bpf/lbctl_reuseport.c: map sizes, the
keys of `config` and `reasons`, and the double-buffered layout of `selection`.  Keeping them
together means a change to the C layout has exactly one Python file to follow it.  Nothing
here knows about apps, pins or replicas; build_table is pure so it can be tested (and
benchmarked) without a kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from lbctl.dataplane import bpfsys

__all__ = [
    "CFG_ACTIVE",
    "CFG_LEN0",
    "CFG_LEN1",
    "MAX_SLOTS",
    "REASONS",
    "TABLE_LEN",
    "build_table",
    "read_table",
    "u32",
    "write_table",
]

# Keep in step with bpf/lbctl_reuseport.c.
MAX_SLOTS = 128
TABLE_LEN = 256
CFG_ACTIVE, CFG_LEN0, CFG_LEN1 = 0, 1, 2
REASONS = ("no_ready_replica", "select_error", "fallback", "migrated")  # index = C key


def u32(v: int) -> bytes:
    """A map key or value as the program sees it (native-endian u32)."""
    return struct.pack("=I", v)


def build_table(members: Sequence[tuple[int, int]], size: int = TABLE_LEN) -> list[int]:
    """Selection table for (slot, weight) pairs: each slot repeated by weight (scaled down to
    fit `size` with every member keeping at least one entry), interleaved so that the
    program's round-robin and its retry-next-entry both alternate between replicas."""
    members = [(s, w) for s, w in members if w > 0]
    if not members:
        return []
    total = sum(w for _, w in members)
    if total <= size:
        reps = [w for _, w in members]
    else:  # largest remainder, at least one each
        exact = [w * size / total for _, w in members]
        reps = [max(1, int(x)) for x in exact]
        order = sorted(range(len(members)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
        for i in order:
            if sum(reps) >= size:
                break
            reps[i] += 1
        while sum(reps) > size:
            i = max(range(len(reps)), key=lambda j: reps[j])
            reps[i] -= 1
    entries = [
        ((k + 0.5) / r, idx, slot)
        for idx, ((slot, _), r) in enumerate(zip(members, reps, strict=True))
        for k in range(r)
    ]
    return [slot for _, _, slot in sorted(entries)]


def read_table(fds: Mapping[str, int]) -> tuple[int, list[int]]:
    """(active half, its entries) as the program sees them now: what a restarted daemon
    compares against before deciding whether to write anything.  `fds` are an app's open
    maps by name (pins.Maps.fds)."""
    cfg = fds["config"]

    def get(key: int) -> int:
        raw = bpfsys.map_lookup(cfg, u32(key), 4)
        return int(struct.unpack("=I", raw)[0]) if raw else 0

    active = get(CFG_ACTIVE) & 1
    n = min(get(CFG_LEN1 if active else CFG_LEN0), TABLE_LEN)
    sel = fds["selection"]
    table = []
    for i in range(n):
        raw = bpfsys.map_lookup(sel, u32(active * TABLE_LEN + i), 4)
        table.append(int(struct.unpack("=I", raw)[0]) if raw else 0)
    return active, table


def write_table(fds: Mapping[str, int], active: int, table: list[int]) -> int:
    """Write the inactive table and its length, then flip CFG_ACTIVE (one 4-byte store the
    program reads first): a connection sees the old set or the new one, never a mix.  The
    half just retired is rewritten only by the next change, long after any program run that
    read the old index has finished.  Returns the new active index."""
    new = 1 - active
    sel, cfg = fds["selection"], fds["config"]
    for i, slot in enumerate(table):
        bpfsys.map_update(sel, u32(new * TABLE_LEN + i), u32(slot))
    bpfsys.map_update(cfg, u32(CFG_LEN1 if new else CFG_LEN0), u32(len(table)))
    bpfsys.map_update(cfg, u32(CFG_ACTIVE), u32(new))
    return new
