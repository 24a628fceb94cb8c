"""Which replica's listener sits in which sockmap slot, which reuseport group has which table,
and why that is written down.

A slot is the key of one listener of a replica in the app's `sockets` map and of its counter
in `steered`, and the selection tables list slots.  A replica has one slot per listener: the
slot key is "<replica> <group>", e.g. "web-1 udp6 ::" (sockets.group_id()), so its counter is
the sum over its keys (replica_of()).  Each group the app's listeners belong to has an index
(`groups`) that names its selection table in the program's maps.  Slots are stable per key,
and the bookkeeping is persisted in <state_dir>/ebpf/<app>.json, so that a restarted daemon
gives every listener its slot back: counters keep their meaning, and a sync after a restart
finds the live tables already right and changes nothing.  A key that goes away keeps a claim
on its slot for a while (`retired`), so a replica that comes back under the same name gets its
counter back, and a new one gets a slot nobody used recently.

A file written before listeners had groups keys slots by bare replica name (one TCP listener
each); parse() turns those into claims that the replica's first listener takes up, so its
slot, and with it the counter carried into the upgraded program, stays its own.

This module is the bookkeeping only; the one kernel effect of allocating (zeroing the slot's
counter) is passed in by the caller, so everything here runs without a kernel.

The state file is trusted only after its shape is checked: a file of the wrong shape (a bad
disk, a hand edit, a bug of another version) would otherwise fail deep inside every sync of
the app, for good.  A damaged file is set aside and the app starts with no slots, which is
safe (see load()).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lbctl.dataplane import sockets
from lbctl.dataplane.ebpf.errors import EbpfError
from lbctl.dataplane.ebpf.table import MAX_GROUPS, MAX_SLOTS
from lbctl.fsutil import atomic_write

__all__ = [
    "DamagedState",
    "Held",
    "SlotBook",
    "Snapshot",
    "forget",
    "group_of",
    "load",
    "parse",
    "peek",
    "replica_of",
    "save",
    "set_aside_path",
    "slot_key",
    "state_file",
]

# The package's one logger name (see plane.py).
log = logging.getLogger("lbctl.dataplane.ebpf")

_U64 = 1 << 64
_DECIMAL = re.compile(r"[0-9]+")


class DamagedState(ValueError):
    """The state file holds something no version of lbctl writes; the message says what."""


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


def slot_key(replica: str, group: str) -> str:
    """The slot key of `replica`'s listener in `group` (replica names have no spaces)."""
    return f"{replica} {group}"


def replica_of(key: str) -> str:
    return key.partition(" ")[0]


def group_of(key: str) -> str | None:
    """The listener group of a slot key; None for a bare replica name (an old file's)."""
    return key.partition(" ")[2] or None


# A copy of a SlotBook's mappings, compared to tell whether the file needs rewriting.
Snapshot = tuple[dict[str, int], dict[str, int], dict[int, Held], dict[str, int]]


@dataclass
class SlotBook:
    """One app's slots: key -> slot in use, key -> last slot of a key gone (for reuse),
    slot -> the listener the daemon put there, group -> its table's index."""

    slots: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)
    held: dict[int, Held] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        """A copy to compare with later: the state file is rewritten only on a change."""
        return dict(self.slots), dict(self.retired), dict(self.held), dict(self.groups)

    def keys_of(self, replica: str) -> list[str]:
        return [k for k in self.slots if replica_of(k) == replica]

    def alloc_group(self, group: str) -> int:
        """The table index of `group`, a free one for a group seen for the first time."""
        if group in self.groups:
            return self.groups[group]
        used = set(self.groups.values())
        free = [g for g in range(MAX_GROUPS) if g not in used]
        if not free:
            raise EbpfError(
                f"too many listener groups (at most {MAX_GROUPS} per app: protocol, family and "
                "bound address of the replicas' sockets on the app port)"
            )
        self.groups[group] = free[0]
        return free[0]

    def alloc(self, name: str, zero_counter: Callable[[int], None]) -> int:
        """Give key `name` a stable slot; a returning key gets its old slot (and its counter)
        back when free, and so does the first listener of a replica that an old state file
        knew by bare name; a new key gets a slot nobody retired recently, zeroed through
        `zero_counter(slot)`."""
        used = set(self.slots.values())
        old = self.retired.pop(name, None)
        if old is None and not self.keys_of(replica_of(name)):
            old = self.retired.pop(replica_of(name), None)
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
        """Take key `name` out of its slot, keeping its claim in `retired`; returns the slot
        (the caller empties it in the sockmap)."""
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
            "groups": self.groups,
        }


def state_file(state_dir: pathlib.Path, app: str) -> pathlib.Path:
    return state_dir / "ebpf" / f"{app}.json"


def set_aside_path(path: pathlib.Path) -> pathlib.Path:
    """Where a damaged state file is kept for a post-mortem (the latest one only)."""
    return path.with_name(path.name + ".damaged")


def parse(data: object) -> SlotBook:
    """The bookkeeping in `data` (the state file's JSON), checked to be what to_json()
    writes: DamagedState otherwise.  Bounds are checked too, since a slot out of range fails
    a map update (E2BIG) and two names on one slot would overwrite each other's listener:
    both would fail later, inside a sync, where nothing can repair them.  A missing key is
    an empty mapping (a file with nothing to say); a key this version does not know is
    ignored."""
    if not isinstance(data, dict):
        raise DamagedState(f"the top level is {_kind(data)}, not an object")
    book = SlotBook(
        slots=_names(data, "slots"),
        retired=_names(data, "retired"),
        held=_held(data.get("held", {})),
        groups=_groups(data.get("groups", {})),
    )
    if len(set(book.slots.values())) != len(book.slots):
        raise DamagedState("two replicas share one slot in 'slots'")
    for key in [*book.slots, *book.retired]:
        group = group_of(key)
        if group is not None:
            _group(group, f"slot key {key!r}")
    # An old file's bare names: claims that each replica's first listener takes up.
    for name in [k for k in book.slots if group_of(k) is None]:
        book.retired.setdefault(name, book.slots.pop(name))
    return book


def _group(gid: str, where: str) -> None:
    try:
        sockets.parse_group_id(gid)
    except ValueError:
        raise DamagedState(f"{where} names no listener group") from None


def _groups(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise DamagedState(f"'groups' is {_kind(raw)}, not an object")
    out: dict[str, int] = {}
    for gid, idx in raw.items():
        _group(str(gid), f"groups[{gid!r}]")
        if type(idx) is not int or not 0 <= idx < MAX_GROUPS:
            raise DamagedState(f"groups[{gid!r}] is {idx!r}, not a group (0 to {MAX_GROUPS - 1})")
        out[str(gid)] = idx
    if len(set(out.values())) != len(out):
        raise DamagedState("two groups share one table in 'groups'")
    return out


def _kind(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _names(data: dict[Any, Any], key: str) -> dict[str, int]:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise DamagedState(f"{key!r} is {_kind(raw)}, not an object")
    return {str(name): _slot(v, f"{key}[{name!r}]") for name, v in raw.items()}


def _slot(v: object, where: str) -> int:
    # type() and not isinstance(): JSON true would pass as the int 1.
    if type(v) is not int or not 0 <= v < MAX_SLOTS:
        raise DamagedState(f"{where} is {v!r}, not a slot (0 to {MAX_SLOTS - 1})")
    return v


def _held(raw: object) -> dict[int, Held]:
    if not isinstance(raw, dict):
        raise DamagedState(f"'held' is {_kind(raw)}, not an object")
    out: dict[int, Held] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not _DECIMAL.fullmatch(k):
            raise DamagedState(f"'held' has key {k!r}, not a slot number")
        slot = _slot(int(k), f"'held' key {k!r}")
        if (
            not isinstance(v, list)
            or len(v) != 5
            or not all(type(x) is int and 0 <= x < _U64 for x in v)
        ):
            raise DamagedState(f"held[{k!r}] is {v!r}, not five non-negative integers")
        out[slot] = Held(*v)
    return out


def load(path: pathlib.Path) -> tuple[SlotBook, bool]:
    """The app's bookkeeping, and whether its file was damaged.  Never raises: a damaged or
    unreadable file is moved aside (set_aside_path()) with one warning, and the app starts
    with no slots.

    Starting empty is safe.  The bookkeeping is a cache of what the daemon put in the app's
    maps, not the source of truth about replicas: the next sync gives every wanted replica a
    slot again, finds nothing held, so takes each ready member's listener once more and
    re-inserts it into the sockmap, then writes a selection table of those slots only.  What
    is lost is the name -> slot history, so the names' connection counters restart from 0.
    A missing file is not damage: it is an app with no slots yet (or one just removed)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return SlotBook(), False
    except OSError as e:  # e.g. EIO, or a directory where the file should be
        reason = f"unreadable: {e.strerror or e}"
    else:
        try:
            return parse(json.loads(raw)), False
        except RecursionError:  # json.loads of a deeply nested document
            reason = "nested too deeply"
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, DamagedState
            reason = " ".join(str(e).split())[:200]
    aside = set_aside_path(path)
    try:
        os.replace(path, aside)
        kept = f"moved to {aside}"
    except OSError as e:
        kept = f"could not move it to {aside} ({e.strerror or e})"
    log.warning(
        "ebpf state file %s is damaged (%s): %s; starting with no slots, the next sync "
        "re-inserts every replica's listener and the replicas' connection counters restart "
        "from 0",
        path, reason, kept,
    )
    return SlotBook(), True


def peek(path: pathlib.Path) -> SlotBook:
    """The bookkeeping as the file holds it, for a reader that must not wait for the app's
    sync (counters): no file, an unreadable or a damaged one is an empty book, and the file
    stays as found (setting a damaged one aside is load()'s, under the sync lock)."""
    try:
        return parse(json.loads(path.read_bytes()))
    except (OSError, ValueError, RecursionError):
        return SlotBook()


def save(path: pathlib.Path, book: SlotBook) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(book.to_json(), sort_keys=True).encode())


def forget(path: pathlib.Path) -> None:
    """The app is removed: its slots mean nothing any more."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
