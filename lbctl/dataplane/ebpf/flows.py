"""The UDP flow map: which replica each client flow went to, and when it was last seen.

The program writes `flows` (an LRU hash: struct flow_key -> struct flow in
bpf/lbctl_reuseport.c) on every new UDP flow and refreshes its last-seen time as datagrams
arrive; the daemon only reads it, to tell when a draining UDP replica has gone quiet, and
copies it into a freshly loaded program so that an upgrade keeps every flow on its replica.
This module is that contract's Python side: the entry layout and the reads.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Collection, Mapping

from lbctl.dataplane import bpfsys
from lbctl.dataplane.ebpf import layout

__all__ = ["KEY_SIZE", "VALUE_SIZE", "active", "copy"]

KEY_SIZE = layout.STRUCTS["flow_key"].size
_VALUE = layout.STRUCTS["flow"]
VALUE_SIZE = _VALUE.size
# The value's fields by name, whatever their order in the header.
_SLOT = [name for _, name, _ in _VALUE.fields].index("slot")
_SEEN = [name for _, name, _ in _VALUE.fields].index("seen_ns")


def active(fds: Mapping[str, int], slots: Collection[int], within: float) -> int:
    """Flows steered to any of `slots` whose latest datagram is younger than `within` seconds.
    bpf_ktime_get_ns() is CLOCK_MONOTONIC, the clock of time.monotonic_ns() here."""
    if not slots:
        return 0
    since = time.monotonic_ns() - int(within * 1e9)
    n = 0
    for _, value in bpfsys.map_lookup_batch(fds["flows"], KEY_SIZE, VALUE_SIZE):
        fields = struct.unpack(_VALUE.format, value)
        slot, seen = fields[_SLOT], fields[_SEEN]
        if slot in slots and seen >= since:
            n += 1
    return n


def copy(old: Mapping[str, int], new: Mapping[str, int]) -> int:
    """Copy every flow of the replaced program into the new one's map (slots and group indexes
    keep their numbers across an upgrade); returns how many.  An old program without a flow
    map (before UDP support) has nothing to copy."""
    if "flows" not in old:
        return 0
    entries = bpfsys.map_lookup_batch(old["flows"], KEY_SIZE, VALUE_SIZE)
    for key, value in entries:
        bpfsys.map_update(new["flows"], key, value)
    return len(entries)
