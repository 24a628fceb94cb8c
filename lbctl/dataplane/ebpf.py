"""ebpf mode: the replicas of an app share one network namespace and listen on the app port
with SO_REUSEPORT; an SK_REUSEPORT program (bpf/lbctl_reuseport.c) picks the replica for every
new connection from a SOCKMAP that the daemon keeps in step with the ready replicas.

Life of an app's objects:
  * the program and its maps are compiled and loaded by a short-lived helper process
    (lbctl.dataplane.bpf_loader) and pinned under <pin_root>/<app>/, so the daemon never maps
    LLVM and the data plane outlives the daemon (a restarted daemon reopens the pins; the
    attached program kept steering meanwhile and its counters survive);
  * slots (sockmap keys) are stable per replica name and persisted in
    <state_dir>/ebpf/<app>.json, so counters keep their meaning across restarts;
  * a listener is borrowed from the replica (pidfd_getfd) only long enough to insert it into
    the sockmap and attach the program: the daemon never keeps a replica's listener alive.

All bpf(2)//proc work runs in worker threads (asyncio.to_thread); the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lbctl.dataplane import bpf_loader, bpfsys, sockets
from lbctl.dataplane.sockets import ListenerError
from lbctl.fsutil import atomic_write

__all__ = ["REASONS", "EbpfDataplane", "EbpfError", "ListenerError", "Member"]

log = logging.getLogger(__name__)

# Keep in step with bpf/lbctl_reuseport.c.
MAX_SLOTS = 128
TABLE_LEN = 256
CFG_ACTIVE, CFG_LEN0, CFG_LEN1 = 0, 1, 2
REASONS = ("no_ready_replica", "select_error", "fallback", "migrated")  # index = C key
LOADER_TIMEOUT = 120.0


@dataclass(frozen=True)
class Member:
    name: str  # replica name, e.g. "web-2"
    pid: int  # host PID of the replica container's init process
    weight: int = 1


class EbpfError(RuntimeError):
    """Loading the program, or a map operation, failed.  `summary` is one line for users;
    `detail` holds the loader's stderr (the verifier log) and is part of str(self) too, so a
    log line of the exception shows why the verifier refused."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}\n{detail}" if detail else summary)
        self.summary = summary
        self.detail = detail


@dataclass
class _Held:
    """What a slot holds: the member's pid and its socket, recognised by cookie (a sockmap
    lookup from user space returns the cookie), plus where the socket lives in the replica so
    remove() can detach the program without searching."""

    pid: int
    inode: int
    cookie: int
    owner_pid: int
    owner_fd: int


@dataclass
class _Maps:
    pin_dir: pathlib.Path
    tag: str
    prog: int
    fds: dict[str, int]

    def close(self) -> None:
        for fd in [self.prog, *self.fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class _App:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    maps: _Maps | None = None
    old_maps: _Maps | None = None  # during an upgrade: the program being replaced
    loaded: bool = False  # persisted state read
    slots: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)  # name -> last slot, for reuse
    held: dict[int, _Held] = field(default_factory=dict)
    table: list[int] | None = None  # live selection table as last written/read
    active: int = 0
    upgrade_failed: str | None = None  # tag whose load failed; not retried by this daemon


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def build_table(members: Sequence[tuple[int, int]], size: int = TABLE_LEN) -> list[int]:
    """Selection table for (slot, weight) pairs: each slot repeated by weight (scaled down to
    fit `size` with every member keeping at least one entry), interleaved so that the
    program's round-robin and its retry-next-entry both alternate between replicas."""
    members = [(s, w) for s, w in members if w > 0]
    if not members:
        return []
    total = sum(w for _, w in members)
    if total <= size:
        reps = [w for _, w in members]
    else:  # largest remainder, at least one each
        exact = [w * size / total for _, w in members]
        reps = [max(1, int(x)) for x in exact]
        order = sorted(range(len(members)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
        for i in order:
            if sum(reps) >= size:
                break
            reps[i] += 1
        while sum(reps) > size:
            i = max(range(len(reps)), key=lambda j: reps[j])
            reps[i] -= 1
    entries = [
        ((k + 0.5) / r, idx, slot)
        for idx, ((slot, _), r) in enumerate(zip(members, reps, strict=True))
        for k in range(r)
    ]
    return [slot for _, _, slot in sorted(entries)]


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
            await self._run_loader(["--check"])
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
        unusable (no SO_REUSEPORT, other namespace)."""
        st = self._apps.setdefault(app, _App())
        async with st.lock:
            await self._ensure_program(app, st)
            await asyncio.to_thread(self._sync_blocking, app, st, port, netns_pid, ready, draining)

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
        try:
            names = os.listdir(self.pin_root)
        except FileNotFoundError:
            return []
        return sorted(_decode(n) for n in names if "+" not in n)

    def loaded_tag(self, app: str) -> str | None:
        """Version tag of the app's pinned program (hash of the C source it was built from)."""
        return _pinned_tag(self._pin_dir(app))

    # ---------------------------------------------------------------- loading

    def _pin_dir(self, app: str) -> pathlib.Path:
        return self.pin_root / _encode(app)

    def _next_dir(self, app: str) -> pathlib.Path:
        return self.pin_root / f"{_encode(app)}+next"

    def _state_file(self, app: str) -> pathlib.Path:
        return self.state_dir / "ebpf" / f"{app}.json"

    async def _run_loader(self, args: list[str]) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lbctl.dataplane.bpf_loader", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), LOADER_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise EbpfError(f"eBPF loader timed out after {LOADER_TIMEOUT:.0f}s") from None
        text = err.decode(errors="replace").strip()
        if proc.returncode != 0:
            last = text.splitlines()[-1] if text else f"exit code {proc.returncode}"
            raise EbpfError(f"loading the eBPF program failed: {last}", text)
        try:
            facts: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise EbpfError("eBPF loader printed no result", text) from None
        return facts

    async def _ensure_program(self, app: str, st: _App) -> None:
        want = bpf_loader.source_tag()
        if st.maps is not None and st.maps.tag == want:
            return
        pin, nxt = self._pin_dir(app), self._next_dir(app)
        if st.maps is None:
            await asyncio.to_thread(self._recover_pins, pin, nxt)
            if pin.exists():
                st.maps = await asyncio.to_thread(_open_pins, pin)
                await asyncio.to_thread(self._load_state, app, st)
        if st.maps is not None and st.maps.tag == want:
            return
        if st.maps is None:  # first use: load and pin, nothing to carry over
            await self._run_loader(["--pin-dir", str(pin)])
            st.maps = await asyncio.to_thread(_open_pins, pin)
            await asyncio.to_thread(self._load_state, app, st)
            return
        # The pinned program is another version: load the current one beside it; the next
        # _sync_blocking fills its maps, carries the counters and swaps it in atomically.
        if st.upgrade_failed == want:
            return  # keep steering with the pinned program; retried by a restarted daemon
        log.info("ebpf %s: upgrading program %s -> %s", app, st.maps.tag, want)
        await asyncio.to_thread(shutil.rmtree, nxt, True)
        try:
            await self._run_loader(["--pin-dir", str(nxt)])
        except EbpfError as e:
            # The pinned program still works: a failed upgrade must not stop replica changes.
            log.error("ebpf %s: new program failed to load, keeping %s: %s", app, st.maps.tag, e)
            st.upgrade_failed = want
            return
        st.old_maps = st.maps
        st.maps = await asyncio.to_thread(_open_pins, nxt)
        st.held.clear()  # the new sockmap is empty
        st.table, st.active = None, 0

    @staticmethod
    def _recover_pins(pin: pathlib.Path, nxt: pathlib.Path) -> None:
        """A daemon that died mid-upgrade may have removed the old pins but not yet renamed
        the new ones into place; finish that.  Otherwise a leftover +next is dropped."""
        if nxt.exists():
            if pin.exists():
                shutil.rmtree(nxt, ignore_errors=True)
            else:
                nxt.rename(pin)

    def _load_state(self, app: str, st: _App) -> None:
        if st.loaded:
            return
        st.loaded = True
        try:
            data = json.loads(self._state_file(app).read_text())
        except (OSError, ValueError):
            data = {}
        st.slots = {str(k): int(v) for k, v in data.get("slots", {}).items()}
        st.retired = {str(k): int(v) for k, v in data.get("retired", {}).items()}
        st.held = {int(k): _Held(*map(int, v)) for k, v in data.get("held", {}).items()}
        if st.maps is not None:
            st.active, st.table = _read_table(st.maps)

    def _save_state(self, app: str, st: _App) -> None:
        path = self._state_file(app)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "slots": st.slots,
            "retired": st.retired,
            "held": {
                str(s): [h.pid, h.inode, h.cookie, h.owner_pid, h.owner_fd]
                for s, h in st.held.items()
            },
        }
        atomic_write(path, json.dumps(data, sort_keys=True).encode())

    # ---------------------------------------------------------------- sync

    def _alloc_slot(self, st: _App, name: str) -> int:
        """Stable slot for a name; a returning name gets its old slot (and its counter) back
        when free, a new name a slot nobody retired recently, zeroed."""
        used = set(st.slots.values())
        old = st.retired.pop(name, None)
        if old is not None and old not in used:
            return old
        reserved = set(st.retired.values())
        free = [s for s in range(MAX_SLOTS) if s not in used]
        if not free:
            raise EbpfError(f"no free eBPF slot (all {MAX_SLOTS} in use)")
        slot = next((s for s in free if s not in reserved), free[0])
        st.retired = {n: s for n, s in st.retired.items() if s != slot}
        assert st.maps is not None
        bpfsys.percpu_set_u64(st.maps.fds["steered"], slot, 0)
        return slot

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
        wanted: dict[str, Member] = {m.name: m for m in draining}
        wanted.update({m.name: m for m in ready})  # ready wins if listed twice
        before = (dict(st.slots), dict(st.retired), dict(st.held))

        for name in [n for n in st.slots if n not in wanted]:
            slot = st.slots.pop(name)
            bpfsys.map_delete(maps.fds["sockets"], _u32(slot))
            st.held.pop(slot, None)
            st.retired[name] = slot
        for name in wanted:
            if name not in st.slots:
                st.slots[name] = self._alloc_slot(st, name)

        errors: list[str] = []
        taken: list[int] = []  # fds kept open until the program is attached, then closed
        try:
            listening: set[str] = set()
            for name, m in wanted.items():
                slot = st.slots[name]
                if self._still_held(maps, slot, st.held.get(slot), m.pid):
                    listening.add(name)
                    continue
                fd = self._insert(maps, st, slot, m, port, netns_pid, errors)
                if fd is not None:
                    taken.append(fd)
                    listening.add(name)
            table = build_table(
                [(st.slots[m.name], max(0, m.weight)) for m in ready if m.name in listening]
            )
            if st.old_maps is not None:
                _carry_counters(st.old_maps, maps)
            if table != st.table:
                st.active = _write_table(maps, st.active, table)
                st.table = table
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
        if (dict(st.slots), dict(st.retired), dict(st.held)) != before:
            self._save_state(app, st)
        if errors:
            raise ListenerError(errors[0])

    @staticmethod
    def _still_held(maps: _Maps, slot: int, held: _Held | None, pid: int) -> bool:
        if held is None or held.pid != pid:
            return False
        raw = bpfsys.map_lookup(maps.fds["sockets"], _u32(slot), 8)
        # ENOENT: the socket closed (the kernel drops it from the sockmap by itself).
        return raw is not None and struct.unpack("=Q", raw)[0] == held.cookie

    def _insert(
        self, maps: _Maps, st: _App, slot: int, m: Member, port: int, netns_pid: int,
        errors: list[str],
    ) -> int | None:
        """Borrow m's listener and put it in `slot`; returns the fd (caller closes it)."""
        if st.held.pop(slot, None) is not None:
            bpfsys.map_delete(maps.fds["sockets"], _u32(slot))
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
            bpfsys.map_update(maps.fds["sockets"], _u32(slot), struct.pack("=Q", fd))
            st.held[slot] = _Held(m.pid, found[0].inode, sockets.cookie(fd),
                                  found[0].pid, found[0].fd)
        except OSError as e:
            os.close(fd)
            raise EbpfError(f"cannot insert {m.name}'s listener into the sockmap: {e}") from e
        return fd

    def _finish_upgrade(self, app: str, st: _App) -> None:
        """The new program is attached (or there is no group to attach to): drop the old
        pins and move the new ones into place."""
        assert st.old_maps is not None and st.maps is not None
        old, pin = st.old_maps, self._pin_dir(app)
        old.close()
        shutil.rmtree(pin, ignore_errors=True)
        self._next_dir(app).rename(pin)
        st.maps.pin_dir = pin
        st.old_maps = None

    # ---------------------------------------------------------------- read side

    def _open_existing(self, app: str, st: _App) -> _Maps | None:
        if st.maps is None and self._pin_dir(app).exists():
            st.maps = _open_pins(self._pin_dir(app))
            self._load_state(app, st)
        return st.maps

    def _counters_blocking(self, app: str, st: _App) -> dict[str, int]:
        maps = self._open_existing(app, st)
        if maps is None:
            return {}
        return {
            name: bpfsys.percpu_sum_u64(maps.fds["steered"], slot)
            for name, slot in sorted(st.slots.items())
        }

    def _reasons_blocking(self, app: str, st: _App) -> dict[str, int]:
        maps = self._open_existing(app, st)
        if maps is None:
            return dict.fromkeys(REASONS, 0)
        return {r: bpfsys.percpu_sum_u64(maps.fds["reasons"], i) for i, r in enumerate(REASONS)}

    def _remove_blocking(self, app: str, st: _App) -> None:
        self._load_state(app, st)
        for h in st.held.values():
            _detach_quietly(h)
        for maps in (st.maps, st.old_maps):
            if maps is not None:
                maps.close()
        st.maps = st.old_maps = None
        for d in (self._pin_dir(app), self._next_dir(app)):
            shutil.rmtree(d, ignore_errors=True)  # unlinking a pin drops its reference
        with contextlib.suppress(FileNotFoundError):
            self._state_file(app).unlink()
        with contextlib.suppress(OSError):
            self.pin_root.rmdir()  # only when no app is left


# -------------------------------------------------------------------- helpers


def _encode(app: str) -> str:
    # bpffs refuses '.' in names; '~' cannot occur in an app name, so this is reversible.
    return app.replace(".", "~")


def _decode(name: str) -> str:
    return name.replace("~", ".")


def _pinned_tag(pin: pathlib.Path) -> str | None:
    try:
        progs = [n for n in os.listdir(pin) if n.startswith("prog_")]
    except FileNotFoundError:
        return None
    return progs[0][5:] if progs else None


def _open_pins(pin: pathlib.Path) -> _Maps:
    tag = _pinned_tag(pin)
    if tag is None:
        raise EbpfError(f"{pin} holds no program pin: remove the directory and retry")
    fds: dict[str, int] = {}
    try:
        prog = bpfsys.obj_get(str(pin / f"prog_{tag}"))
        fds["prog"] = prog
        for name in bpf_loader.MAP_NAMES:
            fds[name] = bpfsys.obj_get(str(pin / name))
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        raise EbpfError(f"cannot open the pinned eBPF objects in {pin}: {e}") from e
    del fds["prog"]
    return _Maps(pin, tag, prog, fds)


def _read_table(maps: _Maps) -> tuple[int, list[int]]:
    cfg = maps.fds["config"]

    def get(key: int) -> int:
        raw = bpfsys.map_lookup(cfg, _u32(key), 4)
        return struct.unpack("=I", raw)[0] if raw else 0

    active = get(CFG_ACTIVE) & 1
    n = min(get(CFG_LEN1 if active else CFG_LEN0), TABLE_LEN)
    sel = maps.fds["selection"]
    table = []
    for i in range(n):
        raw = bpfsys.map_lookup(sel, _u32(active * TABLE_LEN + i), 4)
        table.append(struct.unpack("=I", raw)[0] if raw else 0)
    return active, table


def _write_table(maps: _Maps, active: int, table: list[int]) -> int:
    """Write the inactive table and its length, then flip CFG_ACTIVE (one 4-byte store the
    program reads first): a connection sees the old set or the new one, never a mix.  The
    half just retired is rewritten only by the next change, long after any program run that
    read the old index has finished.  Returns the new active index."""
    new = 1 - active
    sel, cfg = maps.fds["selection"], maps.fds["config"]
    for i, slot in enumerate(table):
        bpfsys.map_update(sel, _u32(new * TABLE_LEN + i), _u32(slot))
    bpfsys.map_update(cfg, _u32(CFG_LEN1 if new else CFG_LEN0), _u32(len(table)))
    bpfsys.map_update(cfg, _u32(CFG_ACTIVE), _u32(new))
    return new


def _carry_counters(old: _Maps, new: _Maps) -> None:
    """Copy the replaced program's counters into the new maps so they stay monotonic.
    Connections counted by the old program between this copy and the attach (microseconds)
    are lost from the counters, not from service."""
    for slot in range(MAX_SLOTS):
        total = bpfsys.percpu_sum_u64(old.fds["steered"], slot)
        if total:
            bpfsys.percpu_set_u64(new.fds["steered"], slot, total)
    for i in range(len(REASONS)):
        total = bpfsys.percpu_sum_u64(old.fds["reasons"], i)
        if total:
            bpfsys.percpu_set_u64(new.fds["reasons"], i, total)


def _detach_quietly(h: _Held) -> None:
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
