"""The UDP flow maps: which replica each client flow went to, and when it was last seen.

The program writes `flows` (a hash map: struct flow_key -> struct flow in
bpf/lbctl_reuseport.c) on every new UDP flow and refreshes its last-seen time as datagrams
arrive; while `flows` is full, new flows go to `overflow` (an LRU). The daemon reads both, to
tell when a draining UDP replica has gone quiet; copies them into a freshly loaded program so
that an upgrade keeps every flow on its replica; and forgets the quiet flows of `flows`
(expire), which never evicts by itself so that a flood of new flows cannot push out a flow
that talks. This module is that contract's Python side: the entry layout, reads and expiry.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Collection, Iterable, Mapping

from lbctl.dataplane import bpfsys
from lbctl.dataplane.ebpf import layout

__all__ = ["KEY_SIZE", "MAPS", "VALUE_SIZE", "active", "copy", "expire", "quiet"]

KEY_SIZE = layout.STRUCTS["flow_key"].size
_VALUE = layout.STRUCTS["flow"]
VALUE_SIZE = _VALUE.size
CAPACITY = layout.DEFINES["MAX_FLOWS"]
MAPS = ("flows", "overflow")  # a program older than the overflow map has the first only
# The value's fields by name, whatever their order in the header.
_SLOT = [name for _, name, _ in _VALUE.fields].index("slot")
_SEEN = [name for _, name, _ in _VALUE.fields].index("seen_ns")


def _entries(fds: Mapping[str, int]) -> Iterable[tuple[bytes, int, int]]:
    """(key, slot, last seen) of every flow of both maps."""
    for name in MAPS:
        if name in fds:
            for key, value in bpfsys.map_lookup_batch(fds[name], KEY_SIZE, VALUE_SIZE):
                fields = struct.unpack(_VALUE.format, value)
                yield key, fields[_SLOT], fields[_SEEN]


def active(fds: Mapping[str, int], slots: Collection[int], within: float) -> int:
    """Flows steered to any of `slots` whose latest datagram is younger than `within` seconds.
    bpf_ktime_get_ns() is CLOCK_MONOTONIC, the clock of time.monotonic_ns() here."""
    if not slots:
        return 0
    since = time.monotonic_ns() - int(within * 1e9)
    return sum(1 for _, slot, seen in _entries(fds) if slot in slots and seen >= since)


def copy(old: Mapping[str, int], new: Mapping[str, int]) -> int:
    """Copy every flow of the replaced program into the new one's maps (slots and group
    indexes keep their numbers across an upgrade); returns how many.  An old program without
    a flow map (before UDP support) has nothing to copy; one without `overflow` has its LRU
    `flows` copied into the new `flows` (the same size)."""
    n = 0
    for name in MAPS:
        if name in old and name in new:
            entries = bpfsys.map_lookup_batch(old[name], KEY_SIZE, VALUE_SIZE)
            for key, value in entries:
                bpfsys.map_update(new[name], key, value)
            n += len(entries)
    return n


def quiet(seen: Mapping[bytes, int], now_ns: int, max_idle: float, crowded: float,
          crowded_idle: float, capacity: int = CAPACITY) -> list[bytes]:
    """The flows to forget: quiet for `max_idle` seconds, or for `crowded_idle` once more than
    `crowded` (a fraction) of `capacity` is taken. Pure (flow key -> last seen, ns)."""
    idle = crowded_idle if len(seen) > crowded * capacity else max_idle
    before = now_ns - int(idle * 1e9)
    return [key for key, at in seen.items() if at < before]


def expire(fds: Mapping[str, int], max_idle: float, crowded: float, crowded_idle: float,
           ) -> tuple[int, int]:
    """Forget the quiet flows of `flows` (quiet()); returns (forgotten, left). `overflow` is an
    LRU and needs none of this."""
    if "overflow" not in fds:
        return 0, 0  # an older program's LRU `flows` evicts by itself
    rows = bpfsys.map_lookup_batch(fds["flows"], KEY_SIZE, VALUE_SIZE)
    seen = {key: struct.unpack(_VALUE.format, value)[_SEEN] for key, value in rows}
    gone = quiet(seen, time.monotonic_ns(), max_idle, crowded, crowded_idle)
    if gone:
        bpfsys.map_delete_batch(fds["flows"], gone)
    return len(gone), len(seen) - len(gone)
