"""EbpfDataplane: the one object the daemon talks to for every ebpf-mode app.

It puts the package's pieces in order under one lock per app: the pins (pins.py) open and the
slot bookkeeping (slots.py) read, then each sync observes (observe.py: what the maps hold,
which listeners the members have), plans (plan.py: pure, from those and what is wanted) and
applies (apply.py: in the order that never misroutes), then keeps the new bookkeeping.  The
rest of the daemon sees only this facade and its async methods; all bpf(2) and /proc work runs
in worker threads (asyncio.to_thread), so the event loop never blocks.

A listener is borrowed from the replica (pidfd_getfd) only for the sync that inserts it into
the sockmap and attaches the program: the daemon never keeps a replica's listener alive, so
stopping a replica frees its port at once.

A replica's listeners are searched for (sock_diag, /proc) only while it has none in the map
yet, lost one, or started less than EbpfSettings.startup_rescan ago; afterwards a sync costs
one map lookup per listener.  A socket that a replica opens later in its life is not seen
until its others close (its group then works without it: the kernel's own choice for that
socket).

counters() and reasons() take no lock (counters.py): a scrape never waits for a sync.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pathlib
import shutil
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lbctl.dataplane import bpf_loader, bpfsys, sockets
from lbctl.dataplane.ebpf import (
    apply,
    counters,
    flows,
    observe,
    pins,
    plan,
    probe,
    slots,
    table,
)
from lbctl.dataplane.ebpf.errors import EbpfError, ListenerError
from lbctl.dataplane.ebpf.observe import Known
from lbctl.dataplane.ebpf.pins import Maps
from lbctl.dataplane.ebpf.plan import Want
from lbctl.dataplane.ebpf.slots import Held, SlotBook, Snapshot
from lbctl.dataplane.ebpf.table import REASONS
from lbctl.dataplane.monotonic import Monotonic
from lbctl.model.dataplane import Bound, Member
from lbctl.settings import EbpfSettings

__all__ = ["EbpfDataplane"]

# The package's one logger name, as before the split: log filters need not know the modules.
log = logging.getLogger("lbctl.dataplane.ebpf")

View = dict[str, tuple[int, ...]]  # replica -> its slots, what counters() sums


@dataclass
class _App:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    maps: Maps | None = None
    old_maps: Maps | None = None  # during an upgrade: the program being replaced
    loaded: bool = False  # persisted state read
    book: SlotBook = field(default_factory=SlotBook)
    # What the state file holds, to save only on a change.  Compared with this rather than
    # with the book at the start of a sync, so a sync that failed after changing the maps
    # (and before saving) still gets the book saved by the next one.
    saved: Snapshot | None = None
    # The state file was damaged, so the sockmap may hold entries of slots the book no longer
    # knows: the next sync empties every slot it does not hold.
    sweep: bool = False
    known: Known = field(default_factory=Known)  # tables and registrations, as last applied
    # Replica name -> (pid, monotonic time its first listener was found): plan.must_scan().
    first_seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    upgrade_failed: str | None = None  # tag whose load failed; not retried by this daemon
    # Published for counters() after each load and applied plan; replaced, never mutated.
    view: View | None = None
    flows_swept: float = 0.0  # monotonic time of the last expiry of quiet UDP flows
    # replica -> its (slot, group) listeners, for probes (probe.py); published like `view`.
    listeners: dict[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)


def _listeners(book: SlotBook) -> dict[str, tuple[tuple[int, str], ...]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for key, slot in sorted(book.slots.items()):
        group = slots.group_of(key)
        if group is not None:
            out.setdefault(slots.replica_of(key), []).append((slot, group))
    return {name: tuple(v) for name, v in out.items()}


def _view(book: SlotBook) -> View:
    out: dict[str, list[int]] = {}
    for key, slot in sorted(book.slots.items()):
        out.setdefault(slots.replica_of(key), []).append(slot)
    return {name: tuple(s) for name, s in out.items()}


class EbpfDataplane:
    """The ebpf data plane of every ebpf-mode app on this host."""

    def __init__(
        self, state_dir: pathlib.Path, pin_root: pathlib.Path | None = None, *,
        settings: EbpfSettings = EbpfSettings(),  # noqa: B008  (frozen: one shared default)
        find_listeners: observe.FindListeners = observe.in_app_namespace,
    ) -> None:  # fmt: skip
        self.state_dir = pathlib.Path(state_dir)
        self.settings = settings
        # Where a member's listeners are looked for: in its own processes, in the app's
        # namespace (the default); a path whose replicas hold listeners of the host's
        # namespace looks there instead.
        self.find_listeners = find_listeners
        self.pin_root = pathlib.Path(pin_root if pin_root is not None else settings.pin_root)
        self._apps: dict[str, _App] = {}
        # What counters() and reasons() returned last per app: never lower (monotonic.py).
        self._steered: dict[str, Monotonic[str]] = {}
        self._reasons: dict[str, Monotonic[str]] = {}

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
        # (The shared header is read when this package is imported: layout.py.)
        if not bpf_loader.source_path().exists():
            return f"eBPF program source missing: {bpf_loader.source_path()}"
        return None

    async def check_program(self) -> str | None:
        """Compile and load the program once (nothing pinned): None, or why it failed
        including the verifier log.  For `lbctl doctor`."""
        try:
            await pins.run_loader(["--check"], self.settings.loader_timeout)
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

    async def probe_socket(
        self, app: str, replica: str, pid: int, family: int
    ) -> tuple[socket.socket, str] | None:
        """A socket to probe `replica`'s listener of `family` (4 or 6) through its slot, bound
        in the replica's namespace, and the address to connect it to (on the app port); None
        while no listener of that family is in the socket map (a starting replica before the
        sync that inserts it).  Takes no lock: the slots are those the last sync published,
        or the state file's before the first (probe.py says how the program steers it)."""
        st = self._apps.get(app)
        # Before this daemon's first sync of the app (a restart), the state file's slots: the
        # pinned socket map kept the replicas' sockets in them.
        known = st.listeners if st is not None and st.loaded else \
            _listeners(slots.peek(self._state_file(app)))
        t = probe.target(known.get(replica, ()), family)
        if t is None:
            return None
        s = await asyncio.to_thread(probe.open_socket, pid, t)
        return s, t.address

    async def bound(self, pid: int, port: int, proto: str = "tcp") -> list[Bound]:
        """Where and as whom the process's listeners on `port` are bound (what a traffic
        hold's listener copies to join their groups); empty when it has none."""
        return await asyncio.to_thread(self._bound, pid, port, proto)

    @staticmethod
    def _bound(pid: int, port: int, proto: str) -> list[Bound]:
        out = []
        for listener in sockets.find_listeners(pid, port, proto):
            try:
                out.append(sockets.describe(listener, port))
            except OSError:
                continue  # closed meanwhile
        return out

    async def queued(self, pid: int, port: int) -> int:
        """Connections waiting in the accept queues of the process's TCP listeners on `port`
        (a traffic hold's: the connections it holds now; sock_diag's idiag_rqueue)."""
        found = await asyncio.to_thread(sockets.find_listeners, pid, port, "tcp")
        return sum(lst.accept_queue for lst in found)

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
        probing: Sequence[Member] = (),
        holds: Sequence[Member] = (),
    ) -> None:
        """Make the app's data plane match: ready, draining and probing members' sockets of
        `proto` on `port` in the sockmap, each reuseport group's selection table = its ready
        members' sockets by weight (while the app is paused: the first of `holds` with a
        socket in that group, plan.Want), the program attached to every group; other members
        out.
        Idempotent and cheap when nothing changed (one map lookup per listener).  Raises
        ListenerError after applying everything else when a member's listener is unusable (no
        SO_REUSEPORT, other namespace), EbpfError when lbctl or the kernel failed (for this
        app only: the caller goes on with the others and retries)."""
        st = self._apps.setdefault(app, _App())
        want = Want(port, proto, tuple(ready), tuple(draining), tuple(probing), tuple(holds))
        async with st.lock:
            try:
                await self._ensure_program(app, st)
                await asyncio.to_thread(self._sync_blocking, app, st, want, netns_pid)
                if proto == "udp":
                    await self._expire_flows(app, st)
            except OSError as e:
                # A bpf(2) call, a setsockopt, a pin rename or the state file's write failed:
                # one line for the user, as an EbpfError so that the caller treats it as this
                # app's data-plane error (a bare OSError would end the whole pass, and every
                # other app's sync with it).
                summary = " ".join(str(e).split())
                raise EbpfError(f"system call failed: {summary}") from e

    async def insert(self, app: str, port: int, member: Member,
                     made: Sequence[tuple[int, sockets.Listener]]) -> int:
        """Listeners the daemon made for `member` (socket activation: lbctl.dataplane.
        activation) into the app's socket map, the program attached to their groups, before
        the daemon hands them over: the member holds them in the map from its first moment,
        in no table until a sync finds it ready, so no pidfd_getfd is needed. `made`: the
        daemon's fd of each, and the socket as the member will hold it (pid and fd number
        after the hand-over). Returns how many went in; one whose slot a live table still
        names (the member's previous life, before a sync took it out), or whose slot holds
        another socket, is left to the sync, which finds it among the member's sockets.
        The caller closes its fds afterwards: the map keeps no socket alive."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            try:
                await self._ensure_program(app, st)
                return await asyncio.to_thread(self._insert_blocking, app, st, port, member,
                                               made)
            except OSError as e:
                summary = " ".join(str(e).split())
                raise EbpfError(f"system call failed: {summary}") from e

    def _insert_blocking(self, app: str, st: _App, port: int, member: Member,
                         made: Sequence[tuple[int, sockets.Listener]]) -> int:
        maps = st.maps
        if maps is None or "wildcard" not in maps.fds or st.old_maps is not None:
            return 0  # an upgrade is under way: the sync that finishes it takes them
        self._load_state(app, st)
        book, fds = st.book, maps.fds
        named = {s for t in observe.live_tables(fds, st.known).values() for s in t.entries or ()}
        inserted = 0
        for fd, listener in made:
            key = slots.slot_key(member.name, listener.group)
            slot = book.slots.get(key)
            if slot is not None and (slot in named or bpfsys.map_lookup(
                    fds["sockets"], table.u32(slot), 8) is not None):
                continue
            if slot is None:
                slot = book.alloc(key, lambda s: bpfsys.percpu_set_u64(fds["steered"], s, 0))
            bpfsys.map_update(fds["sockets"], table.u32(slot), struct.pack("=Q", fd))
            sockets.attach_program(fd, maps.prog)
            book.held[slot] = Held(member.pid, listener.inode, sockets.cookie(fd),
                                   listener.pid, listener.fd)
            inserted += 1
        st.view = _view(book)
        snap = book.snapshot()
        if snap != st.saved:
            slots.save(self._state_file(app), book)
            st.saved = snap
        return inserted

    async def _expire_flows(self, app: str, st: _App) -> None:
        """At most every flow_sweep_interval: forget the UDP flows gone quiet (flows.expire),
        as the flow map never evicts by itself. Under a flood, what it forgets is what the
        flood left (spoofed flows never send twice); flows that talk stay."""
        s = self.settings
        now = time.monotonic()
        maps = st.maps
        if maps is None or now - st.flows_swept < s.flow_sweep_interval:
            return
        st.flows_swept = now
        gone, left = await asyncio.to_thread(flows.expire, maps.fds, s.flow_max_idle,
                                             s.flow_crowded, s.flow_crowded_idle)
        if gone:
            log.debug("ebpf %s: forgot %d quiet UDP flows, %d left", app, gone, left)

    async def counters(self, app: str) -> dict[str, int]:
        """Replica name -> new connections steered to it (sum over CPUs, monotonic).  Takes no
        lock: it never waits for a sync, nor a sync for it (counters.py)."""
        floor = self._steered.setdefault(app, Monotonic())
        read = await asyncio.to_thread(counters.steered, pins.pin_dir(self.pin_root, app),
                                       self._slot_view(app))  # fmt: skip
        return floor.last if read is None else floor.update(read)

    async def reasons(self, app: str) -> dict[str, int]:
        """Reason -> count (table.REASONS: no_ready_replica, select_error, ...).  Takes no
        lock, as counters()."""
        floor = self._reasons.setdefault(app, Monotonic())
        read = await asyncio.to_thread(counters.reasons, pins.pin_dir(self.pin_root, app))
        if read is None:
            return {**dict.fromkeys(REASONS, 0), **floor.last}
        return floor.update(read)

    def _slot_view(self, app: str) -> View:
        """The replica -> slots view the app's last sync published; before any, the state
        file's, read without setting a damaged one aside (that is the sync's to do)."""
        st = self._apps.get(app)
        view = st.view if st is not None else None
        return view if view is not None else _view(slots.peek(self._state_file(app)))

    async def remove(self, app: str) -> None:
        """Detach the program from any replica still listening, unpin everything and forget
        the slots: no eBPF object of the app remains once its sockets are gone."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            await asyncio.to_thread(self._remove_blocking, app, st)
        self._apps.pop(app, None)
        self._steered.pop(app, None)
        self._reasons.pop(app, None)

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
        """Version tag of the app's pinned program (hash of the C source and header it was built
        from)."""
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
            await pins.run_loader(["--pin-dir", str(pin)], self.settings.loader_timeout)
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
            await pins.run_loader(["--pin-dir", str(nxt)], self.settings.loader_timeout)
        except EbpfError as e:
            # The pinned program still works: a failed upgrade must not stop replica changes.
            log.error("ebpf %s: new program failed to load, keeping %s: %s", app, st.maps.tag, e)
            st.upgrade_failed = want
            return
        st.old_maps = st.maps
        st.maps = await asyncio.to_thread(pins.open_pins, nxt)
        st.book.held.clear()  # the new sockmap is empty
        st.known.clear()  # and so are its tables and groups

    def _load_state(self, app: str, st: _App) -> None:
        if st.loaded:
            return
        st.loaded = True
        st.book, st.sweep = slots.load(self._state_file(app))
        st.saved = st.book.snapshot()
        st.view = _view(st.book)
        st.listeners = _listeners(st.book)

    # ---------------------------------------------------------------- sync

    def _sync_blocking(self, app: str, st: _App, want: Want, netns_pid: int) -> None:
        """Observe, plan, apply (observe.py, plan.py, apply.py), then keep what was learnt."""
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
        have, errors = observe.observe(
            maps, st.book, st.known, want, netns_pid, first_seen=st.first_seen,
            now=time.monotonic(), rescan=self.settings.startup_rescan,
            upgrade=st.old_maps is not None, sweep=st.sweep, find=self.find_listeners,
        )  # fmt: skip
        try:
            p = plan.plan(have, want)
            try:
                apply.apply(p, maps, st.old_maps)
            except BaseException:
                st.known.clear()  # what was applied is read back by the next sync
                raise
        finally:
            for b in have.borrowed:
                os.close(b.fd)  # never keep a replica's listener alive
        st.book, st.first_seen, st.sweep = p.book, p.first_seen, False
        st.known.tables, st.known.registered = p.live, p.registered
        st.view = _view(p.book)
        st.listeners = _listeners(p.book)
        if st.old_maps is not None:
            self._finish_upgrade(app, st)
        snap = st.book.snapshot()
        if snap != st.saved:
            slots.save(self._state_file(app), st.book)
            st.saved = snap
        if errors:
            raise ListenerError(errors[0])

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
        return all(observe.still_held(maps.fds, book.slots[k], book.held.get(book.slots[k]), pid)
                   for k in keys)

    def _open_existing(self, app: str, st: _App) -> Maps | None:
        pin = pins.pin_dir(self.pin_root, app)
        if st.maps is None and pin.exists():
            st.maps = pins.open_pins(pin)
            self._load_state(app, st)
        return st.maps

    def _active_flows_blocking(self, app: str, st: _App, replica: str, within: float) -> int:
        maps = self._open_existing(app, st)
        if maps is None or not set(flows.MAPS) & set(maps.fds):
            return 0
        mine = {st.book.slots[k] for k in st.book.keys_of(replica)
                if (slots.group_of(k) or "").startswith("udp")}  # fmt: skip
        return flows.active(maps.fds, mine, within)

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
