"""EbpfDataplane: the one object the daemon talks to for every ebpf-mode app.

It exists to put the package's pieces in the right order under one lock per app: the pins
(pins.py) must be open and the slot bookkeeping (slots.py) read before a sync can insert
listeners, and the table (table.py) must be written before a freshly loaded program is
attached.  The rest of the daemon sees only this facade and its async methods; all bpf(2)
and /proc work runs in worker threads (asyncio.to_thread), so the event loop never blocks.

A listener is borrowed from the replica (pidfd_getfd) only long enough to insert it into the
sockmap and attach the program: the daemon never keeps a replica's listener alive, so
stopping a replica frees its port at once.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pathlib
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from lbctl.dataplane import bpf_loader, bpfsys, sockets
from lbctl.dataplane.ebpf import pins, slots
from lbctl.dataplane.ebpf.errors import EbpfError, ListenerError
from lbctl.dataplane.ebpf.pins import Maps
from lbctl.dataplane.ebpf.slots import Held, SlotBook, Snapshot
from lbctl.dataplane.ebpf.table import (
    MAX_SLOTS,
    REASONS,
    build_table,
    read_table,
    u32,
    write_table,
)

__all__ = ["EbpfDataplane", "Member"]

# The package's one logger name, as before the split: log filters need not know the modules.
log = logging.getLogger("lbctl.dataplane.ebpf")


@dataclass(frozen=True)
class Member:
    name: str  # replica name, e.g. "web-2"
    pid: int  # host PID of the replica container's init process
    weight: int = 1


@dataclass
class _App:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    maps: Maps | None = None
    old_maps: Maps | None = None  # during an upgrade: the program being replaced
    loaded: bool = False  # persisted state read
    book: SlotBook = field(default_factory=SlotBook)
    # What the state file holds, to save only on a change.  Compared with this rather than
    # with the book at the start of a sync, so a sync that failed after changing the book
    # (and before saving it) still gets it saved by the next one.
    saved: Snapshot | None = None
    # The state file was damaged, so the sockmap may hold entries of slots the book no longer
    # knows: the next sync empties every slot it does not hold.
    sweep: bool = False
    table: list[int] | None = None  # live selection table as last written/read
    active: int = 0
    upgrade_failed: str | None = None  # tag whose load failed; not retried by this daemon


class EbpfDataplane:
    """The ebpf data plane of every ebpf-mode app on this host."""

    def __init__(
        self, state_dir: pathlib.Path, pin_root: pathlib.Path = pathlib.Path("/sys/fs/bpf/lbctl")
    ) -> None:
        self.state_dir = pathlib.Path(state_dir)
        self.pin_root = pathlib.Path(pin_root)
        self._apps: dict[str, _App] = {}

    # ---------------------------------------------------------------- host capability

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why this host cannot run ebpf mode, or None.  Cheap: no compile, no bcc import."""
        if os.geteuid() != 0:
            return "ebpf mode needs root (bpf(2), pidfd_getfd)"
        if importlib.util.find_spec("bcc") is None:
            return "bcc (python3-bpfcc) is not importable: install it or use --mode iptables"
        build = pathlib.Path(f"/lib/modules/{os.uname().release}/build")
        if not (build / "include").is_dir():
            return f"no kernel header tree at {build} (bcc needs one): run make setup"
        try:
            with open("/proc/filesystems") as f:
                if not any(line.split()[-1] == "bpf" for line in f if line.strip()):
                    return "the kernel has no bpf filesystem (pins need it)"
        except OSError:
            return "cannot read /proc/filesystems"
        # tcp_migrate_req arrived with BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (5.14); SK_REUSEPORT
        # programs themselves are older.
        if not os.path.exists("/proc/sys/net/ipv4/tcp_migrate_req"):
            return "kernel too old for SK_REUSEPORT migration (needs 5.14+)"
        if not bpf_loader.source_path().exists():
            return f"eBPF program source missing: {bpf_loader.source_path()}"
        return None

    async def check_program(self) -> str | None:
        """Compile and load the program once (nothing pinned): None, or why it failed
        including the verifier log.  For `lbctl doctor`."""
        try:
            await pins.run_loader(["--check"])
        except EbpfError as e:
            return str(e)
        return None

    # ---------------------------------------------------------------- per replica

    async def has_listener(self, pid: int, port: int, name: str | None = None) -> bool:
        """Does the replica listen on `port`?  Raises ListenerError when it does without
        SO_REUSEPORT (it could never join the app's reuseport group)."""
        return await asyncio.to_thread(self._has_listener, pid, port, name or f"process {pid}")

    @staticmethod
    def _has_listener(pid: int, port: int, name: str) -> bool:
        found = sockets.find_listeners(pid, port)
        if not found:
            return False
        try:
            fd = sockets.take(found[0])
        except OSError:
            return False  # replica exited or closed it meanwhile
        try:
            if not sockets.has_reuseport(fd):
                raise ListenerError(sockets.no_reuseport_message(name, port))
        finally:
            os.close(fd)
        return True

    async def established(self, pid: int, port: int) -> int:
        """Connections the replica accepted on `port` and still holds, plus its accept queue."""
        return await sockets.established_connections(pid, port)

    # ---------------------------------------------------------------- per app

    async def sync(
        self,
        app: str,
        port: int,
        netns_pid: int,
        ready: Sequence[Member],
        draining: Sequence[Member] = (),
    ) -> None:
        """Make the app's data plane match: ready and draining members' listeners in the
        sockmap, the selection table = ready members by weight, the program attached; other
        members out.  Idempotent and cheap when nothing changed (one map lookup per member).
        Raises ListenerError after applying everything else when a member's listener is
        unusable (no SO_REUSEPORT, other namespace), EbpfError when lbctl or the kernel
        failed (for this app only: the caller goes on with the others and retries)."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            try:
                await self._ensure_program(app, st)
                await asyncio.to_thread(
                    self._sync_blocking, app, st, port, netns_pid, ready, draining
                )
            except OSError as e:
                # A bpf(2) call, a setsockopt, a pin rename or the state file's write failed:
                # one line for the user, as an EbpfError so that the caller treats it as this
                # app's data-plane error (a bare OSError would end the whole pass, and every
                # other app's sync with it).
                summary = " ".join(str(e).split())
                raise EbpfError(f"system call failed: {summary}") from e

    async def counters(self, app: str) -> dict[str, int]:
        """Replica name -> new connections steered to it (sum over CPUs, monotonic)."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            return await asyncio.to_thread(self._counters_blocking, app, st)

    async def reasons(self, app: str) -> dict[str, int]:
        """Reason -> count: no_ready_replica, select_error, fallback, migrated."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            return await asyncio.to_thread(self._reasons_blocking, app, st)

    async def remove(self, app: str) -> None:
        """Detach the program from any replica still listening, unpin everything and forget
        the slots: no eBPF object of the app remains once its sockets are gone."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            await asyncio.to_thread(self._remove_blocking, app, st)
        self._apps.pop(app, None)

    def close(self) -> None:
        """Close the daemon's fds on shutdown.  Pins stay: the attached program keeps
        steering with its maps while no daemon runs, and the next one reopens them."""
        for st in self._apps.values():
            for maps in (st.maps, st.old_maps):
                if maps is not None:
                    maps.close()
        self._apps.clear()

    def pinned_apps(self) -> list[str]:
        """Apps with pinned objects (what a restarted daemon finds)."""
        return pins.pinned_apps(self.pin_root)

    def loaded_tag(self, app: str) -> str | None:
        """Version tag of the app's pinned program (hash of the C source it was built from)."""
        return pins.pinned_tag(pins.pin_dir(self.pin_root, app))

    # ---------------------------------------------------------------- loading

    def _state_file(self, app: str) -> pathlib.Path:
        return slots.state_file(self.state_dir, app)

    async def _ensure_program(self, app: str, st: _App) -> None:
        want = bpf_loader.source_tag()
        if st.maps is not None and st.maps.tag == want:
            return
        pin, nxt = pins.pin_dir(self.pin_root, app), pins.next_dir(self.pin_root, app)
        if st.maps is None:
            await asyncio.to_thread(pins.recover, pin, nxt)
            if pin.exists():
                st.maps = await asyncio.to_thread(pins.open_pins, pin)
                await asyncio.to_thread(self._load_state, app, st)
        if st.maps is not None and st.maps.tag == want:
            return
        if st.maps is None:  # first use: load and pin, nothing to carry over
            await pins.run_loader(["--pin-dir", str(pin)])
            st.maps = await asyncio.to_thread(pins.open_pins, pin)
            await asyncio.to_thread(self._load_state, app, st)
            return
        # The pinned program is another version: load the current one beside it; the next
        # _sync_blocking fills its maps, carries the counters and swaps it in atomically.
        if st.upgrade_failed == want:
            return  # keep steering with the pinned program; retried by a restarted daemon
        log.info("ebpf %s: upgrading program %s -> %s", app, st.maps.tag, want)
        await asyncio.to_thread(shutil.rmtree, nxt, True)
        try:
            await pins.run_loader(["--pin-dir", str(nxt)])
        except EbpfError as e:
            # The pinned program still works: a failed upgrade must not stop replica changes.
            log.error("ebpf %s: new program failed to load, keeping %s: %s", app, st.maps.tag, e)
            st.upgrade_failed = want
            return
        st.old_maps = st.maps
        st.maps = await asyncio.to_thread(pins.open_pins, nxt)
        st.book.held.clear()  # the new sockmap is empty
        st.table, st.active = None, 0

    def _load_state(self, app: str, st: _App) -> None:
        if st.loaded:
            return
        st.loaded = True
        st.book, st.sweep = slots.load(self._state_file(app))
        st.saved = st.book.snapshot()
        if st.maps is not None:
            st.active, st.table = read_table(st.maps.fds)

    # ---------------------------------------------------------------- sync

    def _sync_blocking(
        self,
        app: str,
        st: _App,
        port: int,
        netns_pid: int,
        ready: Sequence[Member],
        draining: Sequence[Member],
    ) -> None:
        maps = st.maps
        assert maps is not None
        self._load_state(app, st)
        book = st.book
        wanted: dict[str, Member] = {m.name: m for m in draining}
        wanted.update({m.name: m for m in ready})  # ready wins if listed twice

        for name in [n for n in book.slots if n not in wanted]:
            bpfsys.map_delete(maps.fds["sockets"], u32(book.retire(name)))
        for name in wanted:
            if name not in book.slots:
                book.alloc(name, lambda s: bpfsys.percpu_set_u64(maps.fds["steered"], s, 0))

        errors: list[str] = []
        taken: list[int] = []  # fds kept open until the program is attached, then closed
        try:
            listening: set[str] = set()
            for name, m in wanted.items():
                slot = book.slots[name]
                if self._still_held(maps, slot, book.held.get(slot), m.pid):
                    listening.add(name)
                    continue
                fd = self._insert(maps, book, slot, m, port, netns_pid, errors)
                if fd is not None:
                    taken.append(fd)
                    listening.add(name)
            table = build_table(
                [(book.slots[m.name], max(0, m.weight)) for m in ready if m.name in listening]
            )
            if st.old_maps is not None:
                pins.carry_counters(st.old_maps, maps)
            if table != st.table:
                st.active = write_table(maps.fds, st.active, table)
                st.table = table
            if st.sweep:
                # Leftovers of the lost bookkeeping.  The table just written names held slots
                # only, so emptying the others changes no steering; it keeps the sockmap what
                # the book says, so a slot handed out later starts empty.
                for slot in range(MAX_SLOTS):
                    if slot not in book.held:
                        bpfsys.map_delete(maps.fds["sockets"], u32(slot))
                st.sweep = False
            # Attach after the table is written, so a freshly loaded program (first load or
            # upgrade) never sees an empty table.  Every fd gets it: an app whose replicas mix
            # IPv4 and IPv6 listeners has two reuseport groups.
            for fd in taken:
                sockets.attach_program(fd, maps.prog)
        finally:
            for fd in taken:
                os.close(fd)  # never keep a replica's listener alive
        if st.old_maps is not None:
            self._finish_upgrade(app, st)
        now = book.snapshot()
        if now != st.saved:
            slots.save(self._state_file(app), book)
            st.saved = now
        if errors:
            raise ListenerError(errors[0])

    @staticmethod
    def _still_held(maps: Maps, slot: int, held: Held | None, pid: int) -> bool:
        if held is None or held.pid != pid:
            return False
        raw = bpfsys.map_lookup(maps.fds["sockets"], u32(slot), 8)
        # ENOENT: the socket closed (the kernel drops it from the sockmap by itself).
        return raw is not None and struct.unpack("=Q", raw)[0] == held.cookie

    @staticmethod
    def _insert(
        maps: Maps, book: SlotBook, slot: int, m: Member, port: int, netns_pid: int,
        errors: list[str],
    ) -> int | None:
        """Borrow m's listener and put it in `slot`; returns the fd (caller closes it)."""
        if book.held.pop(slot, None) is not None:
            bpfsys.map_delete(maps.fds["sockets"], u32(slot))
        try:
            found = sockets.find_listeners(m.pid, port)
            if not found:
                log.info("ebpf: %s (pid %d) has no listener on %d yet", m.name, m.pid, port)
                return None
            if not sockets.same_netns(m.pid, netns_pid):
                errors.append(
                    f"{m.name} is not in the app's network namespace (its sandbox's): "
                    "ebpf mode needs every replica joined to the sandbox"
                )
                return None
            fd = sockets.take(found[0])
        except OSError as e:  # replica exited meanwhile: next sync sees it gone
            log.info("ebpf: cannot take %s's listener: %s", m.name, e)
            return None
        try:
            if not sockets.has_reuseport(fd):
                errors.append(sockets.no_reuseport_message(m.name, port))
                os.close(fd)
                return None
            bpfsys.map_update(maps.fds["sockets"], u32(slot), struct.pack("=Q", fd))
            book.held[slot] = Held(m.pid, found[0].inode, sockets.cookie(fd),
                                   found[0].pid, found[0].fd)
        except OSError as e:
            os.close(fd)
            raise EbpfError(f"cannot insert {m.name}'s listener into the sockmap: {e}") from e
        return fd

    def _finish_upgrade(self, app: str, st: _App) -> None:
        """The new program is attached (or there is no group to attach to): drop the old
        pins and move the new ones into place."""
        assert st.old_maps is not None and st.maps is not None
        pin = pins.pin_dir(self.pin_root, app)
        st.old_maps.close()
        pins.promote(pins.next_dir(self.pin_root, app), pin)
        st.maps.pin_dir = pin
        st.old_maps = None

    # ---------------------------------------------------------------- read side

    def _open_existing(self, app: str, st: _App) -> Maps | None:
        pin = pins.pin_dir(self.pin_root, app)
        if st.maps is None and pin.exists():
            st.maps = pins.open_pins(pin)
            self._load_state(app, st)
        return st.maps

    def _counters_blocking(self, app: str, st: _App) -> dict[str, int]:
        maps = self._open_existing(app, st)
        if maps is None:
            return {}
        return {
            name: bpfsys.percpu_sum_u64(maps.fds["steered"], slot)
            for name, slot in sorted(st.book.slots.items())
        }

    def _reasons_blocking(self, app: str, st: _App) -> dict[str, int]:
        maps = self._open_existing(app, st)
        if maps is None:
            return dict.fromkeys(REASONS, 0)
        return {r: bpfsys.percpu_sum_u64(maps.fds["reasons"], i) for i, r in enumerate(REASONS)}

    def _remove_blocking(self, app: str, st: _App) -> None:
        self._load_state(app, st)
        for h in st.book.held.values():
            _detach_quietly(h)
        for maps in (st.maps, st.old_maps):
            if maps is not None:
                maps.close()
        st.maps = st.old_maps = None
        pins.remove_pins(self.pin_root, app)
        slots.forget(self._state_file(app))


def _detach_quietly(h: Held) -> None:
    """Best effort: take the replica's listener once more and detach the program from its
    group, so the program does not outlive remove() while replicas still run."""
    try:
        fd = sockets.take(sockets.Listener(h.owner_pid, h.owner_fd, h.inode, 0, 0))
    except OSError:
        return
    try:
        sockets.detach_program(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
