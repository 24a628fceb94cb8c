"""The few bpf(2) commands the daemon needs, through ctypes and the raw syscall.

Why not bcc: importing bcc maps LLVM and libclang (132 MB RSS); the daemon only opens objects
that the short-lived loader pinned and reads/writes their maps.  Why not libbpf.so.1: its
symbol set differs between versions and the syscall is six small structs away; this module has
no dependency beyond libc.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from functools import cache

SYS_BPF = 321  # x86_64
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_DELETE_BATCH = 27
BPF_ENABLE_STATS = 32

BPF_ANY = 0

BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_SOCKMAP = 15
BPF_PROG_TYPE_SK_REUSEPORT = 21

SO_REUSEPORT = 15
SO_ATTACH_REUSEPORT_EBPF = 52
SO_COOKIE = 57
SO_DETACH_REUSEPORT_BPF = 68

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfSysError(OSError):
    """A failed bpf(2) call, with the command named so the message says what failed."""


def _sys(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = int(_libc.syscall(SYS_BPF, cmd, attr, ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfSysError(err, f"{what}: {os.strerror(err)}")
    return ret


def _attr(data: bytes) -> ctypes.Array[ctypes.c_char]:
    # The kernel reads only the prefix for the command but insists the rest up to `size` is
    # zero; 128 bytes covers every command used here.
    return ctypes.create_string_buffer(data.ljust(128, b"\0"), 128)


def obj_get(path: str) -> int:
    """Open a pinned object; returns a new fd (close it)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _sys(BPF_OBJ_GET, _attr(struct.pack("=QII", ctypes.addressof(p), 0, 0)),
                f"open pinned {path}")


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    _sys(BPF_OBJ_PIN, _attr(struct.pack("=QII", ctypes.addressof(p), fd, 0)), f"pin {path}")


def _elem(cmd: int, fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None,
          flags: int, what: str) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.addressof(value) if value is not None else 0
    _sys(cmd, _attr(struct.pack("=IIQQQ", fd, 0, ctypes.addressof(k), v, flags)), what)


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    v = ctypes.create_string_buffer(value, len(value))
    _elem(BPF_MAP_UPDATE_ELEM, fd, key, v, flags, "map update")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value for key, or None when there is none (ENOENT)."""
    v = ctypes.create_string_buffer(value_size)
    try:
        _elem(BPF_MAP_LOOKUP_ELEM, fd, key, v, 0, "map lookup")
    except BpfSysError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_delete(fd: int, key: bytes) -> bool:
    """Delete key; False when it was not there."""
    try:
        _elem(BPF_MAP_DELETE_ELEM, fd, key, None, 0, "map delete")
    except BpfSysError as e:
        # A SOCKMAP answers EINVAL, not ENOENT, for a slot whose socket is already gone
        # (a closed socket leaves the map by itself).
        if e.errno in (errno.ENOENT, errno.EINVAL):
            return False
        raise
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map, by BPF_MAP_GET_NEXT_KEY: for small maps (the groups of an
    app); a key deleted meanwhile makes the walk start over, as the kernel defines it."""
    keys: list[bytes] = []
    prev: bytes | None = None
    while True:
        nxt = ctypes.create_string_buffer(key_size)
        k = ctypes.create_string_buffer(prev, key_size) if prev is not None else None
        attr = struct.pack("=IIQQ", fd, 0, ctypes.addressof(k) if k is not None else 0,
                           ctypes.addressof(nxt))
        try:
            _sys(BPF_MAP_GET_NEXT_KEY, _attr(attr), "map next key")
        except BpfSysError as e:
            if e.errno == errno.ENOENT:
                return keys
            raise
        prev = nxt.raw
        keys.append(prev)


def map_lookup_batch(fd: int, key_size: int, value_size: int,
                     chunk: int = 4096) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map in a few syscalls (BPF_MAP_LOOKUP_BATCH): reading a
    64k-entry LRU map one key at a time would take 128k syscalls.  A consistent snapshot is
    not promised (entries change while it runs), which a count of recent flows does not
    need."""
    out: list[tuple[bytes, bytes]] = []
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    # The batch token of a hash map is a bucket index (u32); 8 bytes leave room.
    in_batch = ctypes.create_string_buffer(8)
    out_batch = ctypes.create_string_buffer(8)
    first = True
    while True:
        attr = _attr(struct.pack(
            "=QQQQIIQQ",
            0 if first else ctypes.addressof(in_batch), ctypes.addressof(out_batch),
            ctypes.addressof(keys), ctypes.addressof(values), chunk, fd, 0, 0,
        ))
        done = False
        try:
            _sys(BPF_MAP_LOOKUP_BATCH, attr, "map batch lookup")
        except BpfSysError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the walk is over (with a last chunk)
                raise
            done = True
        # The kernel writes back how many elements it copied into `count`.
        n = struct.unpack_from("=I", attr.raw, 32)[0]
        kr, vr = keys.raw, values.raw
        out.extend(
            (kr[i * key_size:(i + 1) * key_size], vr[i * value_size:(i + 1) * value_size])
            for i in range(n)
        )
        if done:
            return out
        ctypes.memmove(in_batch, out_batch, 8)
        first = False


def map_delete_batch(fd: int, keys: list[bytes], chunk: int = 4096) -> int:
    """Delete these keys of a hash map in a few syscalls (BPF_MAP_DELETE_BATCH); a key gone
    meanwhile is skipped. Returns how many were deleted."""
    deleted = 0
    pending = list(keys)
    while pending:
        part = pending[:chunk]
        buf = ctypes.create_string_buffer(b"".join(part))
        attr = _attr(struct.pack("=QQQQIIQQ", 0, 0, ctypes.addressof(buf), 0, len(part), fd,
                                 0, 0))
        try:
            _sys(BPF_MAP_DELETE_BATCH, attr, "map batch delete")
            pending = pending[len(part):]
            deleted += len(part)
        except BpfSysError as e:
            if e.errno != errno.ENOENT:
                raise
            # The kernel stopped at a key that is gone: `count` says how many went before it.
            n = struct.unpack_from("=I", attr.raw, 32)[0]
            deleted += n
            pending = pending[n + 1:]
    return deleted


def prog_exists(prog_id: int) -> bool:
    """Is a program with this id still loaded anywhere (pinned, attached or held open)?"""
    try:
        fd = _sys(BPF_PROG_GET_FD_BY_ID, _attr(struct.pack("=I", prog_id)), "program by id")
    except BpfSysError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    os.close(fd)
    return True


def _info(fd: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    _sys(BPF_OBJ_GET_INFO_BY_FD, _attr(struct.pack("=IIQ", fd, size, ctypes.addressof(buf))),
         "object info")
    return buf.raw


def map_info(fd: int) -> tuple[int, int, int, int]:
    """(map type, key size, value size, max entries) of a map fd."""
    mtype, _id, ksize, vsize, maxe = struct.unpack_from("=IIIII", _info(fd, 88))
    return mtype, ksize, vsize, maxe


def prog_info(fd: int) -> tuple[int, int]:
    """(program type, program id) of a program fd."""
    ptype, pid = struct.unpack_from("=II", _info(fd, 256))
    return ptype, pid


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program fd: counted only while some process holds the fd
    that enable_stats() returns (bench/progcost.py)."""
    raw = _info(fd, 232)  # struct bpf_prog_info, up to and past run_cnt
    run_ns, runs = struct.unpack_from("=QQ", raw, 192)
    return run_ns, runs


def enable_stats() -> int:
    """Turn the kernel's per-program run-time statistics on until the returned fd is closed
    (BPF_ENABLE_STATS: unlike the kernel.bpf_stats_enabled sysctl, it cannot be left on)."""
    return _sys(BPF_ENABLE_STATS, _attr(struct.pack("=I", 0)), "enable stats")


@cache
def possible_cpus() -> int:
    """Per-CPU map values hold one slot per *possible* CPU (not online ones)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def percpu_sum_u64(fd: int, key: int) -> int:
    raw = map_lookup(fd, struct.pack("=I", key), 8 * possible_cpus())
    if raw is None:
        return 0
    return sum(struct.unpack(f"={possible_cpus()}Q", raw))


def percpu_set_u64(fd: int, key: int, total: int) -> None:
    """Set a per-CPU counter to `total` (on CPU 0, the rest zero): used to zero a reused slot
    and to carry counters into a freshly loaded program's maps."""
    vals = [total] + [0] * (possible_cpus() - 1)
    map_update(fd, struct.pack("=I", key), struct.pack(f"={len(vals)}Q", *vals))


def pidfd_open(pid: int) -> int:
    fd = int(_libc.syscall(SYS_PIDFD_OPEN, pid, 0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_open({pid}): {os.strerror(err)}")
    return fd


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate fd `target_fd` of the process behind `pidfd` into this process."""
    fd = int(_libc.syscall(SYS_PIDFD_GETFD, pidfd, target_fd, 0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd({target_fd}): {os.strerror(err)}")
    return fd
