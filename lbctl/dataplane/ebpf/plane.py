"""EbpfDataplane: the one object the daemon talks to for every ebpf-mode app.

It exists to put the package's pieces in the right order under one lock per app: the pins
(pins.py) must be open and the slot bookkeeping (slots.py) read before a sync can insert
listeners, and the table (table.py) must be written before a freshly loaded program is
attached.  The rest of the daemon sees only this facade and its async methods; all bpf(2)
and /proc work runs in worker threads (asyncio.to_thread), so the event loop never blocks.

A listener is borrowed from the replica (pidfd_getfd) only long enough to insert it into the
sockmap and attach the program: the daemon never keeps a replica's listener alive, so
stopping a replica frees its port at once.

A replica's listeners are searched for (sock_diag, /proc) only while it has none in the map
yet, lost one, or started less than STARTUP_RESCAN ago; afterwards a sync costs one map
lookup per listener.  A socket that a replica opens later in its life is not seen until its
others close (its group then works without it: the kernel's own choice for that socket).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pathlib
import shutil
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lbctl.dataplane import bpf_loader, bpfsys, sockets
from lbctl.dataplane.ebpf import flows, pins, slots, table
from lbctl.dataplane.ebpf.errors import EbpfError, ListenerError
from lbctl.dataplane.ebpf.pins import Maps
from lbctl.dataplane.ebpf.slots import Held, SlotBook, Snapshot
from lbctl.dataplane.ebpf.table import MAX_SLOTS, REASONS, build_table, u32
from lbctl.model.dataplane import Member

__all__ = ["EbpfDataplane"]

# The package's one logger name, as before the split: log filters need not know the modules.
log = logging.getLogger("lbctl.dataplane.ebpf")

# How long after a replica's first listener shows up each sync looks for more of them.
STARTUP_RESCAN = 3.0


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
    # Per group index: the live selection table as last written/read (None: not known to be
    # the program's), and which half of it is active.
    tables: dict[int, list[int] | None] = field(default_factory=dict)
    active: dict[int, int] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)  # groups known to be in `groups`
    # Replica name -> (pid, monotonic time its first listener was found): see _starting().
    first_seen: dict[str, tuple[int, float]] = field(default_factory=dict)
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

    async def has_listener(
        self, pid: int, port: int, name: str | None = None, proto: str = "tcp"
    ) -> bool:
        """Does the replica listen on `port` with `proto`, in whatever families it binds?
        Raises ListenerError when one of those sockets lacks SO_REUSEPORT (it could never join
        the app's reuseport group)."""
        return await asyncio.to_thread(
            self._has_listener, pid, port, name or f"process {pid}", proto
        )

    @staticmethod
    def _has_listener(pid: int, port: int, name: str, proto: str) -> bool:
        found = sockets.find_listeners(pid, port, proto)
        if not found:
            return False
        for listener in found:
            try:
                fd = sockets.take(listener)
            except OSError:
                return False  # replica exited or closed it meanwhile
            try:
                if not sockets.has_reuseport(fd):
                    raise ListenerError(sockets.no_reuseport_message(name, port, proto))
            finally:
                os.close(fd)
        return True

    async def established(self, pid: int, port: int) -> int:
        """Connections the replica accepted on `port` and still holds, plus its accept queue."""
        return await sockets.established_connections(pid, port)

    async def active_flows(self, app: str, replica: str, within: float) -> int:
        """UDP flows that the program steered to `replica` and that sent a datagram within the
        last `within` seconds: what a drain of a UDP replica waits to reach 0 (its flows keep
        reaching it while it drains, new ones go elsewhere)."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            return await asyncio.to_thread(self._active_flows_blocking, app, st, replica, within)

    # ---------------------------------------------------------------- per app

    async def sync(
        self,
        app: str,
        port: int,
        netns_pid: int,
        ready: Sequence[Member],
        draining: Sequence[Member] = (),
        proto: str = "tcp",
    ) -> None:
        """Make the app's data plane match: ready and draining members' sockets of `proto` on
        `port` in the sockmap, each reuseport group's selection table = its ready members'
        sockets by weight, the program attached to every group; other members out.
        Idempotent and cheap when nothing changed (one map lookup per listener).  Raises
        ListenerError after applying everything else when a member's listener is unusable (no
        SO_REUSEPORT, other namespace), EbpfError when lbctl or the kernel failed (for this
        app only: the caller goes on with the others and retries)."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            try:
                await self._ensure_program(app, st)
                await asyncio.to_thread(
                    self._sync_blocking, app, st, port, proto, netns_pid, ready, draining
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
        st.tables.clear()  # and so are its tables and groups
        st.active.clear()
        st.registered.clear()

    def _load_state(self, app: str, st: _App) -> None:
        if st.loaded:
            return
        st.loaded = True
        st.book, st.sweep = slots.load(self._state_file(app))
        st.saved = st.book.snapshot()

    # ---------------------------------------------------------------- sync

    def _sync_blocking(
        self,
        app: str,
        st: _App,
        port: int,
        proto: str,
        netns_pid: int,
        ready: Sequence[Member],
        draining: Sequence[Member],
    ) -> None:
        maps = st.maps
        assert maps is not None
        if "wildcard" not in maps.fds:
            # Only when the upgrade from a program older than listener groups failed: that
            # program keeps steering with its maps as they are, which this daemon cannot
            # change.  The loader's error was logged; a restarted daemon tries again.
            raise EbpfError(
                f"the pinned eBPF program ({maps.tag}) is too old for this lbctl and the "
                "current one failed to load: replica changes are not applied"
            )
        self._load_state(app, st)
        book = st.book
        wanted: dict[str, Member] = {m.name: m for m in draining}
        wanted.update({m.name: m for m in ready})  # ready wins if listed twice
        now = time.monotonic()

        # Keys of replicas that left, or of another protocol (the spec changed), go first.
        for key in list(book.slots):
            group = slots.group_of(key)
            if slots.replica_of(key) not in wanted or group is None or group[:3] != proto:
                bpfsys.map_delete(maps.fds["sockets"], u32(book.retire(key)))
        st.first_seen = {n: v for n, v in st.first_seen.items() if n in wanted}

        errors: list[str] = []
        taken: list[int] = []  # fds kept open until the program is attached, then closed
        try:
            listening: set[str] = set()  # slot keys whose socket is in the sockmap now
            for m in wanted.values():
                keys = book.keys_of(m.name)
                held = [k for k in keys
                        if self._still_held(maps, book.slots[k], book.held.get(book.slots[k]),
                                            m.pid)]  # fmt: skip
                listening.update(held)
                if keys and len(held) == len(keys) and not self._starting(st, m, now):
                    continue
                self._scan(st, maps, book, m, port, proto, netns_pid, errors, taken, listening,
                           now)  # fmt: skip
            if st.old_maps is not None:
                pins.carry_counters(st.old_maps, maps)
            self._write_groups(st, maps, book, port, ready, listening)
            if st.sweep:
                self._sweep(maps, book, port)
                st.sweep = False
            # Attach after the tables are written and the groups registered, so a freshly
            # loaded program (first load or upgrade) never sees an empty table.  Every fd
            # gets it: each of the app's reuseport groups needs the program attached.
            for fd in taken:
                sockets.attach_program(fd, maps.prog)
        finally:
            for fd in taken:
                os.close(fd)  # never keep a replica's listener alive
        if st.old_maps is not None:
            self._finish_upgrade(app, st)
        snap = book.snapshot()
        if snap != st.saved:
            slots.save(self._state_file(app), book)
            st.saved = snap
        if errors:
            raise ListenerError(errors[0])

    @staticmethod
    def _starting(st: _App, m: Member, now: float) -> bool:
        """A replica binds its sockets one after another as it starts (IPv4, then IPv6, or
        TCP then UDP): look for more of them at every sync during its first seconds, not only
        until the first one shows up."""
        pid, since = st.first_seen.get(m.name, (0, 0.0))
        return pid != m.pid or now - since < STARTUP_RESCAN

    def _scan(
        self, st: _App, maps: Maps, book: SlotBook, m: Member, port: int, proto: str,
        netns_pid: int, errors: list[str], taken: list[int], listening: set[str], now: float,
    ) -> None:
        """Find m's listeners and put each in its slot (one per reuseport group: a prefork
        server's further sockets in a group are left to the kernel's own choice)."""
        try:
            found = sockets.find_listeners(m.pid, port, proto)
            if not found:
                log.info("ebpf: %s (pid %d) has no %s listener on %d yet", m.name, m.pid,
                         proto, port)
                return
            if not sockets.same_netns(m.pid, netns_pid):
                errors.append(
                    f"{m.name} is not in the app's network namespace (its sandbox's): "
                    "ebpf mode needs every replica joined to the sandbox"
                )
                return
        except OSError as e:  # replica exited meanwhile: next sync sees it gone
            log.info("ebpf: cannot list %s's listeners: %s", m.name, e)
            return
        if st.first_seen.get(m.name, (0, 0.0))[0] != m.pid:
            st.first_seen[m.name] = (m.pid, now)
        steered = maps.fds["steered"]
        for listener in found:
            key = slots.slot_key(m.name, listener.group)
            if key in listening:
                continue  # still held, or a second socket of m in this group
            slot = book.slots.get(key)
            if slot is None:
                slot = book.alloc(key, lambda s: bpfsys.percpu_set_u64(steered, s, 0))
            fd = self._insert(maps, book, slot, m, listener, port, errors)
            if fd is not None:
                taken.append(fd)
                listening.add(key)

    def _write_groups(
        self, st: _App, maps: Maps, book: SlotBook, port: int, ready: Sequence[Member],
        listening: set[str],
    ) -> None:
        """Each group with a socket in the sockmap gets its table (its ready members' sockets
        by weight; empty when all drain) and, once the table is written, its registration
        (table.register_group); a group with no socket left is unregistered and its index
        freed."""
        weights = {m.name: max(0, m.weight) for m in ready}
        by_group: dict[str, list[tuple[int, int]]] = {}
        for key in sorted(listening, key=lambda k: book.slots[k]):
            group = slots.group_of(key)
            assert group is not None
            entries = by_group.setdefault(group, [])
            name = slots.replica_of(key)
            if name in weights:
                entries.append((book.slots[key], weights[name]))
        fds = maps.fds
        for group, members in sorted(by_group.items()):
            idx = book.alloc_group(group)
            if group not in st.registered and table.read_group(fds, group, port) == idx:
                st.registered.add(group)  # registered by an earlier daemon: read, not write
            if idx not in st.tables:
                st.active[idx], live = table.read_table(fds, idx)
                st.tables[idx] = live if group in st.registered else None
            want = build_table(members)
            if want != st.tables[idx]:
                st.active[idx] = table.write_table(fds, st.active[idx], want, idx)
                st.tables[idx] = want
            if group not in st.registered:
                table.register_group(fds, group, port, idx)
                st.registered.add(group)
        for group in [g for g in book.groups if g not in by_group]:
            table.unregister_group(fds, group, port)
            st.registered.discard(group)
            st.tables.pop(book.groups.pop(group), None)

    @staticmethod
    def _sweep(maps: Maps, book: SlotBook, port: int) -> None:
        """Leftovers of lost bookkeeping (a damaged state file).  The tables just written name
        held slots only, so emptying the others changes no steering; it keeps the maps what
        the book says, so a slot or group index handed out later starts empty."""
        for slot in range(MAX_SLOTS):
            if slot not in book.held:
                bpfsys.map_delete(maps.fds["sockets"], u32(slot))
        known = {table.registration(g, port) for g in book.groups}
        for reg in table.registered_groups(maps.fds):
            if reg not in known:
                table.drop_registration(maps.fds, reg)

    @staticmethod
    def _still_held(maps: Maps, slot: int, held: Held | None, pid: int) -> bool:
        if held is None or held.pid != pid:
            return False
        raw = bpfsys.map_lookup(maps.fds["sockets"], u32(slot), 8)
        # ENOENT: the socket closed (the kernel drops it from the sockmap by itself).
        return raw is not None and struct.unpack("=Q", raw)[0] == held.cookie

    @staticmethod
    def _insert(
        maps: Maps, book: SlotBook, slot: int, m: Member, listener: sockets.Listener,
        port: int, errors: list[str],
    ) -> int | None:
        """Borrow m's listener and put it in `slot`; returns the fd (caller closes it)."""
        if book.held.pop(slot, None) is not None:
            bpfsys.map_delete(maps.fds["sockets"], u32(slot))
        try:
            fd = sockets.take(listener)
        except OSError as e:  # replica exited meanwhile: next sync sees it gone
            log.info("ebpf: cannot take %s's listener: %s", m.name, e)
            return None
        try:
            if not sockets.has_reuseport(fd):
                errors.append(sockets.no_reuseport_message(m.name, port, listener.proto))
                os.close(fd)
                return None
            bpfsys.map_update(maps.fds["sockets"], u32(slot), struct.pack("=Q", fd))
            book.held[slot] = Held(m.pid, listener.inode, sockets.cookie(fd),
                                   listener.pid, listener.fd)
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

    async def holds(self, app: str, replica: str, pid: int) -> bool | None:
        """Are the replica's listeners all still in the socket map? A socket leaves the map
        the moment it closes, so a few map lookups tell a replica that stopped listening
        without reading its namespace's socket table. None: nothing of it was inserted yet."""
        st = self._apps.get(app)
        if st is None or st.maps is None:
            return None
        async with st.lock:
            return await asyncio.to_thread(self._holds_blocking, st, replica, pid)

    def _holds_blocking(self, st: _App, replica: str, pid: int) -> bool | None:
        maps, book = st.maps, st.book
        keys = book.keys_of(replica)
        if maps is None or not keys:
            return None
        return all(self._still_held(maps, book.slots[k], book.held.get(book.slots[k]), pid)
                   for k in keys)

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
        out: dict[str, int] = {}
        for key, slot in sorted(st.book.slots.items()):
            name = slots.replica_of(key)
            out[name] = out.get(name, 0) + bpfsys.percpu_sum_u64(maps.fds["steered"], slot)
        return out

    def _active_flows_blocking(self, app: str, st: _App, replica: str, within: float) -> int:
        maps = self._open_existing(app, st)
        if maps is None or "flows" not in maps.fds:
            return 0
        mine = {st.book.slots[k] for k in st.book.keys_of(replica)
                if (slots.group_of(k) or "").startswith("udp")}  # fmt: skip
        return flows.active(maps.fds, mine, within)

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
