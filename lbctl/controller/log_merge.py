"""Several containers' log lines as one stream in time order (pure: no I/O, no clock of its
own).

Each container's stream is in its own order already; the merge takes, of every stream's
first waiting line, the one stamped earliest (ties: the one that arrived first). It may do so
only when no open stream could still deliver an earlier one, that is when every open stream
has a line waiting. A stream that is done (closed) never holds the others back.

- `strict` (reading logs that end): that rule alone, so the result is in stamp order.
- Following: an open stream may stay quiet for hours, so a line that waited `window`
  seconds since it arrived goes out anyway. A line is then out of order only when it reached
  the daemon more than `window` after a line of another container stamped after it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
# A wait until a deadline may end a little before it (the loop runs a timer up to its clock's
# resolution early, and a float sum rounds): a deadline this close counts as reached, or the
# waiter would wake, find it not yet due and wait a zero timeout again and again.
SLACK = 0.001
T = TypeVar("T")


@dataclass(frozen=True)
class _Waiting(Generic[T]):
    time: int  # the engine's stamp
    seq: int  # arrival order, across streams
    arrival: float  # the caller's clock, for the window
    item: T


class Merger(Generic[K, T]):
    def __init__(self, window: float) -> None:
        self.window = window
        self._waiting: dict[K, deque[_Waiting[T]]] = {}
        self._open: set[K] = set()
        self._seq = itertools.count()

    def open(self, key: K) -> None:
        self._open.add(key)
        self._waiting.setdefault(key, deque())

    def close(self, key: K) -> None:
        """The stream ended: what it sent still goes out, and it holds nothing back."""
        self._open.discard(key)

    def add(self, key: K, time: int, item: T, arrival: float) -> None:
        self._waiting.setdefault(key, deque()).append(
            _Waiting(time, next(self._seq), arrival, item))

    def pop(self, now: float, strict: bool) -> list[tuple[K, T]]:
        """Every line that may go out now, in order."""
        out: list[tuple[K, T]] = []
        while True:
            heads = [(q[0].time, q[0].seq, k) for k, q in self._waiting.items() if q]
            if not heads:
                break
            _, _, key = min(heads, key=lambda h: (h[0], h[1]))
            head = self._waiting[key][0]
            held = any(not self._waiting[k] for k in self._open)
            if held and (strict or head.arrival + self.window - now > SLACK):
                break
            self._waiting[key].popleft()
            out.append((key, head.item))
        for k in [k for k, q in self._waiting.items() if not q and k not in self._open]:
            del self._waiting[k]
        return out

    def deadline(self) -> float | None:
        """When the window of the line next in order ends, which is what holds the others
        (None: nothing waits)."""
        heads = [q[0] for q in self._waiting.values() if q]
        if not heads:
            return None
        return min(heads, key=lambda h: (h.time, h.seq)).arrival + self.window

    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def has(self, key: K) -> bool:
        """The stream is open or has lines waiting."""
        return key in self._open or bool(self._waiting.get(key))

    def done(self) -> bool:
        """No stream open, nothing waiting."""
        return not self._open and not any(self._waiting.values())


__all__ = ["SLACK", "Merger"]
