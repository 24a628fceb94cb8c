"""Which replica sits in which sockmap slot, and why that is written down.

A slot is the key of a replica's listener in the app's `sockets` map and of its counter in
`steered`, and the selection table lists slots.  Slots are stable per replica name, and the
bookkeeping is persisted in <state_dir>/ebpf/<app>.json, so that a restarted daemon gives
every name its slot back: counters keep their meaning, and a sync after a restart finds the
live table already right and changes nothing.  A name that goes away keeps a claim on its
slot for a while (`retired`), so a replica that comes back under the same name gets its
counter back, and a new name gets a slot nobody used recently.

This module is the bookkeeping only; the one kernel effect of allocating (zeroing the slot's
counter) is passed in by the caller, so everything here runs without a kernel.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lbctl.dataplane.ebpf.errors import EbpfError
from lbctl.dataplane.ebpf.table import MAX_SLOTS
from lbctl.fsutil import atomic_write

__all__ = ["Held", "SlotBook", "forget", "load", "save", "state_file"]


@dataclass
class Held:
    """What a slot holds: the member's pid and its socket, recognised by cookie (a sockmap
    lookup from user space returns the cookie), plus where the socket lives in the replica so
    remove() can detach the program without searching."""

    pid: int
    inode: int
    cookie: int
    owner_pid: int
    owner_fd: int


@dataclass
class SlotBook:
    """One app's slots: name -> slot in use, name -> last slot of a name gone (for reuse),
    slot -> the listener the daemon put there."""

    slots: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    held: dict[int, Held] = field(default_factory=dict)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], dict[int, Held]]:
        """A copy to compare with later: the state file is rewritten only on a change."""
        return dict(self.slots), dict(self.retired), dict(self.held)

    def alloc(self, name: str, zero_counter: Callable[[int], None]) -> int:
        """Give `name` a stable slot; a returning name gets its old slot (and its counter)
        back when free, a new name a slot nobody retired recently, zeroed through
        `zero_counter(slot)`."""
        used = set(self.slots.values())
        old = self.retired.pop(name, None)
        if old is not None and old not in used:
            self.slots[name] = old
            return old
        reserved = set(self.retired.values())
        free = [s for s in range(MAX_SLOTS) if s not in used]
        if not free:
            raise EbpfError(f"no free eBPF slot (all {MAX_SLOTS} in use)")
        slot = next((s for s in free if s not in reserved), free[0])
        self.retired = {n: s for n, s in self.retired.items() if s != slot}
        zero_counter(slot)
        self.slots[name] = slot
        return slot

    def retire(self, name: str) -> int:
        """Take `name` out of its slot, keeping its claim in `retired`; returns the slot (the
        caller empties it in the sockmap)."""
        slot = self.slots.pop(name)
        self.held.pop(slot, None)
        self.retired[name] = slot
        return slot

    def to_json(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "retired": self.retired,
            "held": {
                str(s): [h.pid, h.inode, h.cookie, h.owner_pid, h.owner_fd]
                for s, h in self.held.items()
            },
        }


def state_file(state_dir: pathlib.Path, app: str) -> pathlib.Path:
    return state_dir / "ebpf" / f"{app}.json"


def load(path: pathlib.Path) -> SlotBook:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    return SlotBook(
        slots={str(k): int(v) for k, v in data.get("slots", {}).items()},
        retired={str(k): int(v) for k, v in data.get("retired", {}).items()},
        held={int(k): Held(*map(int, v)) for k, v in data.get("held", {}).items()},
    )


def save(path: pathlib.Path, book: SlotBook) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(book.to_json(), sort_keys=True).encode())


def forget(path: pathlib.Path) -> None:
    """The app is removed: its slots mean nothing any more."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
