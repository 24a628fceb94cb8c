"""What one run of the SK_REUSEPORT program costs, from the kernel's own statistics.

`python -m bench.progcost` (root; about 20 s; touches nothing outside a network namespace
and a pin root of its own).  Three replicas with a TCP and a UDP socket each, in a namespace
made for the run; the kernel counts each program's runs and their total time while an
enable_stats() fd is held (BPF_ENABLE_STATS, which switches itself off when closed):

  tcp, current   new connections through the program of this version (group lookup, per
                 group table and cursor, round-robin), replicas bound to 0.0.0.0 (the
                 `wildcard` array), and bound to 127.0.0.1 (the `groups` hash)
  tcp, v1        the same through the program before listener groups
                 (tests/dataplane/data/lbctl_reuseport_v1.c), attached in its place
  udp, current   datagrams of known flows (flow map lookup, select) and new ones
  tcp/udp, v2    the same two through the previous release's program (one 129-line
                 function, tests/dataplane/data/lbctl_reuseport_v2.c) and the current one,
                 attached in turn to the same group for six rounds each: what splitting
                 it into helpers cost (`ratio current/v2`: median, min, max of the rounds)

A wrk benchmark sees a new connection cost tens of microseconds; this isolates the
program's part of it, so a change to the TCP path shows up here first.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile

from lbctl.dataplane import bpf_loader, bpfsys, sockets
from lbctl.dataplane.ebpf import EbpfDataplane
from lbctl.model.dataplane import Member

PORT = 9000
DATA = pathlib.Path(__file__).resolve().parents[1] / "tests/dataplane/data"
V1_SRC = DATA / "lbctl_reuseport_v1.c"
V2_SRC = DATA / "lbctl_reuseport_v2.c"

FARM = r"""
import os, select, signal, socket, sys, time
port, addr, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
for name in names:
    t = socket.socket()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (t, u):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((addr, port))
    t.listen(4096)
    pid = os.fork()
    if pid == 0:
        while True:
            for s in select.select([t, u], [], [])[0]:
                if s is t:
                    c, _ = t.accept()
                    c.close()
                else:
                    data, peer = u.recvfrom(2048)
                    u.sendto(name.encode(), peer)
    print(pid, flush=True)
    t.close()
    u.close()
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(3600)
"""

CLIENT = r"""
import socket, sys
port, proto, n, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if proto == "tcp":
    for _ in range(n):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
else:
    flows = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for _ in range(k):
        for s in flows:
            s.settimeout(2)
            s.sendto(b"x", ("127.0.0.1", port))
            s.recvfrom(64)
"""

PIN_V1 = r"""
import sys, bcc
from lbctl.dataplane import bpfsys
src, pin, tag = sys.argv[1:4]
b = bcc.BPF(src_file=src.encode())
fn = b.load_func(b"lbctl_select", 21, attach_type=40)
bpfsys.obj_pin(fn.fd, f"{pin}/prog_{tag}")
for name in ("sockets", "selection", "config", "steered", "reasons", "cursor"):
    bpfsys.obj_pin(bcc.libbcc.lib.bpf_table_fd(b.module, name.encode()), f"{pin}/{name}")
"""


def start_farm(ns: str, port: int, addr: str) -> tuple[subprocess.Popen[bytes], list[Member]]:
    farm = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", FARM, str(port), addr, "r1", "r2", "r3"],
        stdout=subprocess.PIPE, start_new_session=True,
    )
    assert farm.stdout is not None
    return farm, [Member(f"r{i}", int(farm.stdout.readline())) for i in range(1, 4)]


def run_in(ns: str, script: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                   check=True, timeout=120)  # fmt: skip


def measure(prog_pin: pathlib.Path, ns: str, proto: str, n: int, k: int = 1,
            port: int = PORT) -> dict[str, float]:
    fd = bpfsys.obj_get(str(prog_pin))
    stats = bpfsys.enable_stats()
    try:
        ns0, runs0 = bpfsys.prog_stats(fd)
        run_in(ns, CLIENT, str(port), proto, str(n), str(k))
        ns1, runs1 = bpfsys.prog_stats(fd)
    finally:
        os.close(stats)
        os.close(fd)
    runs = runs1 - runs0
    return {"runs": runs, "ns_per_run": round((ns1 - ns0) / runs, 1) if runs else 0.0}


def attach(prog_pin: pathlib.Path, pid: int, proto: str) -> None:
    """Attach the pinned program to the group of the replica's `proto` socket on PORT (it
    replaces whichever program the group had)."""
    prog = bpfsys.obj_get(str(prog_pin))
    try:
        fd = sockets.take(sockets.find_listeners(pid, PORT, proto)[0])
        try:
            sockets.attach_program(fd, prog)
        finally:
            os.close(fd)
    finally:
        os.close(prog)


def plant_v1(pin: pathlib.Path, pids: list[int]) -> pathlib.Path:
    """The program before listener groups, pinned and attached to the TCP group with its
    table filled as that version's daemon did."""
    tag = bpf_loader.source_tag(V1_SRC)
    pin.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", PIN_V1, str(V1_SRC), str(pin), tag], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    fds = {n: bpfsys.obj_get(str(pin / n)) for n in ("sockets", "selection", "config")}
    prog = bpfsys.obj_get(str(pin / f"prog_{tag}"))
    try:
        for slot, pid in enumerate(pids):
            [listener] = sockets.find_listeners(pid, PORT, "tcp")
            fd = sockets.take(listener)
            try:
                bpfsys.map_update(fds["sockets"], struct.pack("=I", slot), struct.pack("=Q", fd))
                bpfsys.map_update(fds["selection"], struct.pack("=I", slot),
                                  struct.pack("=I", slot))  # fmt: skip
                if slot == 0:
                    sockets.attach_program(fd, prog)
            finally:
                os.close(fd)
        bpfsys.map_update(fds["config"], struct.pack("=I", 1), struct.pack("=I", len(pids)))
    finally:
        for fd in [*fds.values(), prog]:
            os.close(fd)
    return pin / f"prog_{tag}"


def main() -> int:
    ns = f"lbb-prog-{secrets.token_hex(3)}"
    pin_root = pathlib.Path(f"/sys/fs/bpf/lbctl-bench-{secrets.token_hex(3)}")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    farms: list[subprocess.Popen[bytes]] = []
    sleeper = None
    results: dict[str, dict[str, float]] = {}
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"],
                                   start_new_session=True)  # fmt: skip
        farm, members = start_farm(ns, PORT, "0.0.0.0")
        farms.append(farm)
        farm, on_addr = start_farm(ns, PORT + 1, "127.0.0.1")
        farms.append(farm)
        netns_pid = sleeper.pid
        with tempfile.TemporaryDirectory() as tmp:
            dp = EbpfDataplane(pathlib.Path(tmp), pin_root)

            async def sync() -> None:
                await dp.sync("pc-tcp", PORT, netns_pid, members, proto="tcp")
                await dp.sync("pc-udp", PORT, netns_pid, members, proto="udp")
                await dp.sync("pc-addr", PORT + 1, netns_pid, on_addr, proto="tcp")

            asyncio.run(sync())
            tag = bpf_loader.source_tag()
            results["tcp, current"] = measure(pin_root / "pc-tcp" / f"prog_{tag}", ns, "tcp", 3000)
            results["tcp, current, bound to 127.0.0.1"] = measure(
                pin_root / "pc-addr" / f"prog_{tag}", ns, "tcp", 3000, port=PORT + 1)
            results["udp, current"] = measure(pin_root / "pc-udp" / f"prog_{tag}", ns, "udp",
                                              300, 10)  # fmt: skip
            # The previous release's program, loaded by the same data plane for apps of its
            # own on the same groups: attaching it replaces the current one there.
            os.environ["LBCTL_BPF_SRC"] = str(V2_SRC)
            try:
                asyncio.run(dp.sync("pc-v2tcp", PORT, netns_pid, members, proto="tcp"))
                asyncio.run(dp.sync("pc-v2udp", PORT, netns_pid, members, proto="udp"))
                v2 = bpf_loader.source_tag()
            finally:
                del os.environ["LBCTL_BPF_SRC"]
            # One program at a time is attached to a group: alternate them, six rounds each,
            # which one goes first alternating too, so that both see the same host (a shared
            # machine drifts between runs).
            for proto, n, k in (("tcp", 600, 1), ("udp", 60, 10)):
                progs = {"current": pin_root / f"pc-{proto}" / f"prog_{tag}",
                         "v2": pin_root / f"pc-v2{proto}" / f"prog_{v2}"}  # fmt: skip
                rounds: dict[str, list[dict[str, float]]] = {name: [] for name in progs}
                for i in range(6):
                    for name, prog in sorted(progs.items(), reverse=i % 2 == 1):
                        attach(prog, members[0].pid, proto)
                        rounds[name].append(measure(prog, ns, proto, n, k))
                for name, got in rounds.items():
                    runs = sum(r["runs"] for r in got)
                    total = sum(r["runs"] * r["ns_per_run"] for r in got)
                    results[f"{proto}, {name}, alternating"] = {
                        "runs": runs, "ns_per_run": round(total / runs, 1)}
                ratios = sorted(a["ns_per_run"] / b["ns_per_run"]
                                for a, b in zip(rounds["current"], rounds["v2"], strict=True))
                results[f"{proto}, ratio current/v2"] = {
                    "median": round(ratios[len(ratios) // 2], 3),
                    "min": round(ratios[0], 3), "max": round(ratios[-1], 3)}  # fmt: skip
            v1 = plant_v1(pin_root / "pc-v1", [m.pid for m in members])
            results["tcp, v1"] = measure(v1, ns, "tcp", 3000)
    finally:
        for p in [*farms, sleeper]:
            if p is not None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(pin_root, ignore_errors=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
