"""Counters that never go down, for readers that do not wait for syncs.

Both data planes read their kernel counters (rule counters, eBPF maps) without the lock their
syncs take, so a scrape never delays a sync.  A read can then land in a sync's short window
where a counter is briefly ahead of what the sync carries over: the iptables data plane reads
a replica's DNAT counter, then rewrites its chain with that value, and connections in between
are counted in the old rule only; an eBPF upgrade copies the old program's counters before
the new one is attached.  The next read would then be lower, which Prometheus takes for a
counter reset.  This keeps each key at no less than the last value returned for it, as long
as every read since listed it: a key a read leaves out (its replica gone) starts afresh.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

__all__ = ["Monotonic"]


class Monotonic(Generic[K]):
    def __init__(self) -> None:
        self._last: dict[K, int] = {}

    def update(self, read: Mapping[K, int]) -> dict[K, int]:
        """`read`, each value raised to the last one returned for its key."""
        out = {k: max(v, self._last.get(k, 0)) for k, v in read.items()}
        self._last = out
        return dict(out)

    @property
    def last(self) -> dict[K, int]:
        """What the latest update() returned: the answer when a read fails softly."""
        return dict(self._last)
