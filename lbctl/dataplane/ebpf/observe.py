"""The reads of a sync: what an app's maps hold and which listeners its members have, as the
`Have` that plan.plan() decides from.  Nothing here writes a map.

Reading is not free, so what the daemon already knows is not read again: a member whose
sockets are all still in the sockmap (one lookup each, by cookie) is not scanned
(plan.must_scan), and a group's table and registration are read once per process, then
cached by the plane from each applied plan (`Known`).

A member's listeners are borrowed here (pidfd_getfd) and checked for SO_REUSEPORT, so the
plan only ever places sockets that can join the group; the plane closes every borrowed fd
when the sync is over.  What is wrong with a member rather than with lbctl (no SO_REUSEPORT,
outside the app's namespace) is returned as error lines, the rest of the sync goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from lbctl.dataplane import bpfsys, sockets
from lbctl.dataplane.ebpf import slots, table
from lbctl.dataplane.ebpf.errors import EbpfError
from lbctl.dataplane.ebpf.pins import Maps
from lbctl.dataplane.ebpf.plan import Borrowed, Have, TableState, Want, must_scan
from lbctl.dataplane.ebpf.slots import Held, SlotBook
from lbctl.model.dataplane import Member

__all__ = ["FindListeners", "Known", "in_app_namespace", "live_tables", "observe", "still_held"]

# The package's one logger name (see plane.py).
log = logging.getLogger("lbctl.dataplane.ebpf")


@dataclass
class Known:
    """What the plane learned of the program's maps from earlier syncs (the applied plans),
    so a quiet sync reads no table.  Cleared whenever the maps may differ from it: a failed
    apply, a new program version."""

    tables: dict[int, TableState] = field(default_factory=dict)
    registered: dict[str, int] = field(default_factory=dict)  # group -> its index

    def clear(self) -> None:
        self.tables.clear()
        self.registered.clear()


def still_held(fds: dict[str, int], slot: int, held: Held | None, pid: int) -> bool:
    """Is the member's socket that the book put in `slot` still there?  A socket leaves the
    sockmap by itself when it closes (the lookup then fails), and a cookie names one socket."""
    if held is None or held.pid != pid:
        return False
    raw = bpfsys.map_lookup(fds["sockets"], table.u32(slot), 8)
    return raw is not None and struct.unpack("=Q", raw)[0] == held.cookie


class FindListeners(Protocol):
    """A member's sockets of the app's protocol on the port, or an error line when they cannot
    serve the app (e.g. not in its network namespace)."""

    def __call__(self, m: Member, port: int, proto: str,
                 netns_pid: int) -> list[sockets.Listener] | str: ...


def in_app_namespace(m: Member, port: int, proto: str,
                     netns_pid: int) -> list[sockets.Listener] | str:
    """The sockets of the app's namespace (the sandbox's, or the host's for `--network host`
    and socket activation) on the port that the replica holds: the reuseport group is that
    namespace's. A replica usually lives there itself; one given its listeners by socket
    activation lives in a namespace of its own and holds sockets of the host's."""
    if sockets.same_netns(m.pid, netns_pid):
        return sockets.find_listeners(m.pid, port, proto)
    held = sockets.find_listeners(m.pid, port, proto, netns_pid)
    # A sandbox's member listening in a namespace of its own cannot serve the app; an
    # activated replica's own sockets are its readiness check's business (`not taken`).
    if (not held and not sockets.same_netns(netns_pid, os.getpid())
            and sockets.find_listeners(m.pid, port, proto)):
        return (f"{m.name} is not in the app's network namespace (its sandbox's): "
                "ebpf mode needs every replica joined to the sandbox")
    return held


def observe(
    maps: Maps, book: SlotBook, known: Known, want: Want, netns_pid: int, *,
    first_seen: dict[str, tuple[int, float]], now: float, rescan: float,
    upgrade: bool = False, sweep: bool = False,
    find: FindListeners = in_app_namespace,
) -> tuple[Have, list[str]]:  # fmt: skip
    """The app's `Have` and the members' error lines.  On an exception every fd borrowed so
    far is closed; otherwise the caller closes Have.borrowed's fds."""
    fds = maps.fds
    members = want.members()
    in_map: set[str] = set()
    for m in members.values():
        for k in book.keys_of(m.name):
            slot = book.slots[k]
            if still_held(fds, slot, book.held.get(slot), m.pid):
                in_map.add(k)
    frozen = frozenset(in_map)
    borrowed: list[Borrowed] = []
    found: set[str] = set()
    errors: list[str] = []
    try:
        for m in members.values():
            if must_scan(m, book.keys_of(m.name), frozen, first_seen, now, rescan):
                _scan(m, want, netns_pid, frozen, borrowed, found, errors, find)
        groups = {*book.groups, *(slots.group_of(k) or "" for k in frozen),
                  *(b.listener.group for b in borrowed)}  # fmt: skip
        have = Have(
            book=book, in_map=frozen, borrowed=tuple(borrowed), found=frozenset(found),
            first_seen=first_seen, now=now, upgrade=upgrade, sweep=sweep,
            tables=_tables(fds, known),
            registered={g: _registered(fds, known, g, want.port) for g in sorted(groups)},
            present=tuple(table.registered_groups(fds)) if sweep else (),
        )  # fmt: skip
    except BaseException:
        for b in borrowed:
            os.close(b.fd)
        raise
    return have, errors


def live_tables(fds: dict[str, int], known: Known) -> dict[int, TableState]:
    """Every group index's table as the program reads it (known ones from memory)."""
    return _tables(fds, known)


def _tables(fds: dict[str, int], known: Known) -> dict[int, TableState]:
    out = {}
    for idx in range(table.MAX_GROUPS):
        state = known.tables.get(idx)
        if state is None:
            half, entries = table.read_table(fds, idx)
            state = TableState(half, tuple(entries))
        out[idx] = state
    return out


def _registered(fds: dict[str, int], known: Known, group: str, port: int) -> int | None:
    if group in known.registered:
        return known.registered[group]
    return table.read_group(fds, group, port)


def _scan(
    m: Member, want: Want, netns_pid: int, in_map: frozenset[str],
    borrowed: list[Borrowed], found: set[str], errors: list[str], find: FindListeners,
) -> None:  # fmt: skip
    """Find m's listeners and borrow each one whose key is not in the map yet (one per
    reuseport group: a prefork server's further sockets in a group are left to the kernel's
    own choice)."""
    try:
        listeners = find(m, want.port, want.proto, netns_pid)
        if isinstance(listeners, str):
            errors.append(listeners)
            return
        if not listeners:
            log.info("ebpf: %s (pid %d) has no %s listener on %d yet", m.name, m.pid,
                     want.proto, want.port)  # fmt: skip
            return
    except OSError as e:  # replica exited meanwhile: next sync sees it gone
        log.info("ebpf: cannot list %s's listeners: %s", m.name, e)
        return
    found.add(m.name)
    keys = set(in_map)
    for listener in listeners:
        key = slots.slot_key(m.name, listener.group)
        if key in keys:
            continue
        b = _borrow(m, listener, want.port, errors.append)
        if b is not None:
            borrowed.append(b)
            keys.add(key)


def _borrow(
    m: Member, listener: sockets.Listener, port: int, error: Callable[[str], None]
) -> Borrowed | None:
    try:
        fd = sockets.take(listener)
    except OSError as e:  # replica exited meanwhile: next sync sees it gone
        log.info("ebpf: cannot take %s's listener: %s", m.name, e)
        return None
    try:
        if not sockets.has_reuseport(fd):
            error(sockets.no_reuseport_message(m.name, port, listener.proto))
            os.close(fd)
            return None
        return Borrowed(m, listener, fd, sockets.cookie(fd))
    except OSError as e:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise EbpfError(f"cannot read {m.name}'s listener: {e}") from e
