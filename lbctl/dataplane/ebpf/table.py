"""The selection tables: the structures the program reads on every new connection or flow, and
the only thing the daemon rewrites to change which replicas get traffic (it never reloads the
program for that).

This module is the Python side of the contract with bpf/lbctl_reuseport.c: map sizes, the
keys of `wildcard`, `groups`, `config` and `reasons` (their numbers read from
bpf/lbctl_shared.h by layout.py), and the double-buffered layout of
`selection`, one pair of tables per reuseport group (a group index, 0 to MAX_GROUPS - 1,
chosen by the daemon and registered under the group's key: in `wildcard` by protocol and
family for a group bound to the wildcard address, in `groups` by the whole key otherwise).
Keeping them together means a change to the C layout has one Python file to follow it
(flows.py for the UDP flow map).  Nothing here knows about apps, pins or replicas;
build_table is pure so it can be tested (and benchmarked) without a kernel.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Mapping, Sequence

from lbctl.dataplane import bpfsys, sockets
from lbctl.dataplane.ebpf import layout

__all__ = [
    "CFG_ACTIVE",
    "CFG_LEN0",
    "CFG_LEN1",
    "GROUP_KEY_SIZE",
    "MAX_GROUPS",
    "MAX_SLOTS",
    "N_REASONS",
    "REASONS",
    "TABLE_LEN",
    "build_table",
    "drop_registration",
    "group_key",
    "read_group",
    "read_table",
    "register_group",
    "registered_groups",
    "registration",
    "u32",
    "unregister_group",
    "write_table",
]

MAX_SLOTS = layout.DEFINES["MAX_SLOTS"]
MAX_GROUPS = layout.DEFINES["MAX_GROUPS"]
TABLE_LEN = layout.DEFINES["TABLE_LEN"]
CFG_ACTIVE = layout.DEFINES["CFG_ACTIVE"]
CFG_LEN0 = layout.DEFINES["CFG_LEN0"]
CFG_LEN1 = layout.DEFINES["CFG_LEN1"]
N_CFG = layout.DEFINES["N_CFG"]
N_WILDCARD = layout.DEFINES["N_WILDCARD"]
N_REASONS = layout.DEFINES["N_REASONS"]
# index = C key (R_* in the header), name = the macro's, lower-cased without R_ (the metrics'
# label): the first four meant the same before groups and flows existed, so counters carried
# over from an older program keep their meaning.
_REASON_KEYS = {v: k[2:].lower() for k, v in layout.DEFINES.items()
                if k.startswith("R_")}  # fmt: skip
REASONS = tuple(_REASON_KEYS[i] for i in range(len(_REASON_KEYS)))
GROUP_KEY_SIZE = layout.STRUCTS["group_key"].size


def u32(v: int) -> bytes:
    """A map key or value as the program sees it (native-endian u32)."""
    return struct.pack("=I", v)


def build_table(members: Sequence[tuple[int, int]], size: int = TABLE_LEN) -> list[int]:
    """Selection table for (slot, weight) pairs: each slot repeated in proportion to its
    weight, interleaved so that the program's round-robin and its retry-next-entry both
    alternate between replicas.

    Weights that add up to `size` or less are exact (a slot of weight 3 gets 3 entries).
    Larger ones are apportioned: members of one weight (a canary's new replicas, its old
    ones) form a class, the classes share the entries in proportion to their total weight
    (largest remainder), and each class's entries go round its members, who differ by at
    most one. The table's length is the one from `size` down to half of it whose shares are
    closest to exact, so a 99% canary beside 63 old replicas gets 99% (a table of 200), not
    the 75% that one entry per member gave. A member may get no entry when its class's
    share is smaller than its head count (1% over 63 replicas: 2 entries of 200). The
    bound: every class's share of new connections is within 1/size of its weight's share
    (0.4 points at 256), and exact whenever a length from size/2 to size divides it.
    """
    members = [(s, w) for s, w in members if w > 0]
    if not members:
        return []
    weights = [w for _, w in members]
    reps = weights if sum(weights) <= size else _apportion(weights, size)
    entries = [
        ((k + 0.5) / r, idx, slot)
        for idx, ((slot, _), r) in enumerate(zip(members, reps, strict=True))
        for k in range(r)
    ]
    return [slot for _, _, slot in sorted(entries)]


def _apportion(weights: Sequence[int], size: int) -> list[int]:
    """Entries per member (see build_table): classes of equal weight get their share of a
    table of the length, from size down to size // 2, whose shares are closest to exact."""
    classes: dict[int, list[int]] = {}
    for i, w in enumerate(weights):
        classes.setdefault(w, []).append(i)
    quota = {w: w * len(idx) for w, idx in classes.items()}
    total = sum(quota.values())
    best: tuple[float, int, dict[int, int]] | None = None
    for length in range(size, max(1, size // 2) - 1, -1):
        exact = {w: q * length / total for w, q in quota.items()}
        seats = {w: int(x) for w, x in exact.items()}
        by_remainder = sorted(exact, key=lambda w: (exact[w] - seats[w], w), reverse=True)
        for w in by_remainder[: length - sum(seats.values())]:
            seats[w] += 1
        error = max(abs(seats[w] / length - quota[w] / total) for w in quota)
        if best is None or error < best[0] - 1e-12:
            best = (error, length, seats)
        if error < 1e-12:
            break
    assert best is not None
    reps = [0] * len(weights)
    for w, idx in classes.items():
        base, extra = divmod(best[2][w], len(idx))
        for j, i in enumerate(idx):
            reps[i] = base + (1 if j < extra else 0)
    return reps


def group_key(gid: str, port: int) -> bytes:
    """The `groups` key of a listener group (sockets.group_id()) on `port`: what the program
    reads from the group's own socket (family, protocol, port, bound address)."""
    proto, family, addr = sockets.parse_group_id(gid)
    raw = ipaddress.ip_address(addr).packed  # network byte order, as the socket holds it
    return struct.pack("=III", family, sockets.PROTOCOLS[proto], port) + raw.ljust(16, b"\0")


def _wildcard(gid: str) -> int | None:
    """The `wildcard` key of a group bound to the wildcard address, else None."""
    proto, family, addr = sockets.parse_group_id(gid)
    if not ipaddress.ip_address(addr).is_unspecified:
        return None
    return (proto == "udp") * 2 + (family == socket.AF_INET6)


def read_group(fds: Mapping[str, int], gid: str, port: int) -> int | None:
    """The index the program finds for group `gid`, or None when it is not registered."""
    w = _wildcard(gid)
    if w is not None:
        raw = bpfsys.map_lookup(fds["wildcard"], u32(w), 4)
        v = int(struct.unpack("=I", raw)[0]) if raw else 0
        return v - 1 if v else None
    raw = bpfsys.map_lookup(fds["groups"], group_key(gid, port), 4)
    return int(struct.unpack("=I", raw)[0]) if raw else None


def register_group(fds: Mapping[str, int], gid: str, port: int, index: int) -> None:
    """Let the program find group `gid`'s table at `index` (write its table first)."""
    w = _wildcard(gid)
    if w is not None:
        bpfsys.map_update(fds["wildcard"], u32(w), u32(index + 1))
    else:
        bpfsys.map_update(fds["groups"], group_key(gid, port), u32(index))


def unregister_group(fds: Mapping[str, int], gid: str, port: int) -> None:
    w = _wildcard(gid)
    if w is not None:
        bpfsys.map_update(fds["wildcard"], u32(w), u32(0))
    else:
        bpfsys.map_delete(fds["groups"], group_key(gid, port))


def registered_groups(fds: Mapping[str, int]) -> list[bytes | int]:
    """Every registration the program has: `groups` keys, and `wildcard` keys in use."""
    found: list[bytes | int] = list(bpfsys.map_keys(fds["groups"], GROUP_KEY_SIZE))
    for w in range(N_WILDCARD):
        raw = bpfsys.map_lookup(fds["wildcard"], u32(w), 4)
        if raw and struct.unpack("=I", raw)[0]:
            found.append(w)
    return found


def registration(gid: str, port: int) -> bytes | int:
    """What registered_groups() lists for `gid`."""
    w = _wildcard(gid)
    return w if w is not None else group_key(gid, port)


def drop_registration(fds: Mapping[str, int], reg: bytes | int) -> None:
    if isinstance(reg, int):
        bpfsys.map_update(fds["wildcard"], u32(reg), u32(0))
    else:
        bpfsys.map_delete(fds["groups"], reg)


def _sel(group: int, half: int, pos: int) -> bytes:
    return u32((group * 2 + half) * TABLE_LEN + pos)


def _cfg(group: int, key: int) -> bytes:
    return u32(group * N_CFG + key)


def read_table(fds: Mapping[str, int], group: int = 0) -> tuple[int, list[int]]:
    """(active half, its entries) of a group's table as the program sees them now: what a
    restarted daemon compares against before deciding whether to write anything.  `fds` are
    an app's open maps by name (pins.Maps.fds)."""
    cfg = fds["config"]

    def get(key: int) -> int:
        raw = bpfsys.map_lookup(cfg, _cfg(group, key), 4)
        return int(struct.unpack("=I", raw)[0]) if raw else 0

    active = get(CFG_ACTIVE) & 1
    n = min(get(CFG_LEN1 if active else CFG_LEN0), TABLE_LEN)
    sel = fds["selection"]
    table = []
    for i in range(n):
        raw = bpfsys.map_lookup(sel, _sel(group, active, i), 4)
        table.append(int(struct.unpack("=I", raw)[0]) if raw else 0)
    return active, table


def write_table(fds: Mapping[str, int], half: int, table: list[int], group: int = 0) -> None:
    """Write the group's table into `half` (the inactive one) with its length, then make it
    active (one 4-byte store the program reads first): a connection sees the old set or the
    new one, never a mix.  The half just retired is rewritten only by the next change, long
    after any program run that read the old index has finished."""
    sel, cfg = fds["selection"], fds["config"]
    for i, slot in enumerate(table):
        bpfsys.map_update(sel, _sel(group, half, i), u32(slot))
    bpfsys.map_update(cfg, _cfg(group, CFG_LEN1 if half else CFG_LEN0), u32(len(table)))
    bpfsys.map_update(cfg, _cfg(group, CFG_ACTIVE), u32(half))
