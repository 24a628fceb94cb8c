"""Cost of applying the data plane as the backend count grows, measured in this process.

iptables: `IptablesDataplane.sync()` for one service of N fake backends (127.1.x.y addresses:
rules only, no traffic is sent), first from nothing (a full pass: iptables-save, render, one
iptables-restore of every chain), then with one backend's address replaced (what a replica
restart costs: the fast path, which renders, diffs against the last sync's render kept in
memory, reads the counters of the one DNAT chain it rewrites and restores only the changed
chains; a service over 64 backends is cut into bucket chains so that this is one bucket's
chains), then a full pass over the unchanged state (what HostRules' periodic resync costs);
`sync([])` restores the host afterwards. Wall time, this process's CPU and its children's
CPU (iptables, iptables-save, iptables-restore) are reported separately.

eBPF: a selection table names at most 256 slots (TABLE_LEN; the socket map has room for more,
MAX_SLOTS, for the sockets of replicas that drain), so N > 256 ready members cannot be
measured; what is measured is the cost per map write (selection entry, sockmap insert of a
real listening socket) and a whole sync's writes for up to 256 members; larger N is
extrapolated linearly from the per-entry cost and marked so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.env import PIN_ROOT
from harness.host import free_port
from lbctl.dataplane import bpfsys, ebpf
from lbctl.dataplane.ebpf import pins
from lbctl.dataplane.ebpf.table import write_table
from lbctl.dataplane.iptables import IptablesDataplane
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service

Log = Callable[[str], None]


@dataclass
class IptSync:
    backends: int
    first_s: float
    first_cpu_s: float  # this process (render, parse)
    first_child_cpu_s: float  # iptables-save / iptables-restore
    change_s: float
    change_cpu_s: float
    change_child_cpu_s: float
    change_fast: bool = True  # the change took the fast path (no iptables-save)
    resync_s: float = 0.0  # a full pass with nothing to change (periodic resync)


@dataclass
class BpfSync:
    selection_write_us: float  # one selection-table entry
    sockmap_insert_us: float  # one socket into the sockmap
    table_sync_ms: dict[int, float]  # members -> whole table write (measured)
    extrapolated_ms: dict[int, float]  # N -> N * (one entry + one socket), not measurable

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _clock() -> tuple[float, float, float]:
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic(), time.process_time(), ch.ru_utime + ch.ru_stime


def _service(n: int, port: int, shift: int = 0) -> Service:
    backends = tuple(
        Backend(f"r{i:05d}", f"127.1.{(i + shift) // 250}.{(i + shift) % 250 + 1}", 8080)
        for i in range(n)
    )
    return Service(app="bench-sync", publish=Publish("127.0.0.1", port, 8080),
                   backends=backends, bridges=())


def iptables(sizes: list[int], log: Log) -> list[IptSync]:
    out: list[IptSync] = []
    with tempfile.TemporaryDirectory(prefix="lbctl-bench-sync-") as tmp:
        dp = IptablesDataplane(Path(tmp))
        port = free_port()

        async def timed(services: list[Service]) -> tuple[float, float, float]:
            w0, c0, k0 = _clock()
            await dp.sync(services)
            w1, c1, k1 = _clock()
            return w1 - w0, c1 - c0, k1 - k0

        async def main() -> None:
            try:
                await dp.sync([])
                for n in sizes:
                    first = await timed([_service(n, port)])
                    # one replica replaced: the last backend gets a new address
                    svc = _service(n, port)
                    moved = Backend(svc.backends[-1].name, "127.2.0.1", 8080)
                    svc = dataclasses.replace(svc, backends=(*svc.backends[:-1], moved))
                    full_before = dp.full_passes
                    change = await timed([svc])
                    fast = dp.full_passes == full_before
                    w0, _, _ = _clock()
                    await dp.sync([svc], full=True)
                    resync = _clock()[0] - w0
                    await dp.sync([])
                    out.append(IptSync(n, *first, *change, fast, resync))
                    log(f"  iptables sync {n:5} backends: first {first[0] * 1e3:8.1f} ms "
                        f"(cpu {first[1] * 1e3:.0f} + {first[2] * 1e3:.0f} ms), "
                        f"change {change[0] * 1e3:8.1f} ms "
                        f"(cpu {change[1] * 1e3:.0f} + {change[2] * 1e3:.0f} ms"
                        f"{'' if fast else ', FULL PASS'}), full resync {resync * 1e3:.0f} ms")
            finally:
                await dp.sync([])

        asyncio.run(main())
    return out


def bpf(sizes: list[int], log: Log) -> BpfSync:
    pin = PIN_ROOT / "bench-sync"
    shutil.rmtree(pin, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "lbctl.dataplane.bpf_loader", "--pin-dir",
                        str(pin)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"bpf loader failed: {r.stderr.strip()[-500:]}")
    maps = pins.open_pins(pin)
    socks: list[socket.socket] = []
    try:
        sel = maps.fds["selection"]
        reps = 2000
        t0 = time.perf_counter()
        for i in range(reps):
            bpfsys.map_update(sel, struct.pack("=I", i % ebpf.TABLE_LEN),
                              struct.pack("=I", i % ebpf.MAX_SLOTS))
        per_entry = (time.perf_counter() - t0) / reps

        port = free_port()
        # A table names at most TABLE_LEN slots (fewer than MAX_SLOTS): that many sockets.
        for _ in range(ebpf.TABLE_LEN):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.listen(16)
            socks.append(s)
        t0 = time.perf_counter()
        for slot, s in enumerate(socks):
            bpfsys.map_update(maps.fds["sockets"], struct.pack("=I", slot),
                              struct.pack("=Q", s.fileno()))
        per_sock = (time.perf_counter() - t0) / len(socks)

        table_ms: dict[int, float] = {}
        half = 0
        for n in [m for m in sizes if m <= ebpf.TABLE_LEN] + [ebpf.TABLE_LEN]:
            table = ebpf.build_table([(s, 1) for s in range(n)])
            half = 1 - half
            t0 = time.perf_counter()
            write_table(maps.fds, half, table)
            table_ms[n] = (time.perf_counter() - t0) * 1e3
        extra = {n: n * (per_entry + per_sock) * 1e3 for n in sizes if n > ebpf.TABLE_LEN}
        res = BpfSync(per_entry * 1e6, per_sock * 1e6, table_ms, extra)
        log(f"  bpf: {res.selection_write_us:.2f} us per selection entry, "
            f"{res.sockmap_insert_us:.2f} us per sockmap insert, tables {table_ms}")
        return res
    finally:
        for s in socks:
            s.close()
        maps.close()
        shutil.rmtree(pin, ignore_errors=True)
        if PIN_ROOT.exists() and not os.listdir(PIN_ROOT):
            PIN_ROOT.rmdir()
