"""A spoofed UDP flood against an ebpf app's flow table, on the real kernel: what it does to
the real flows, measured, and what bounds it.

The app's namespace (ebpf_harness' netns, UDP replicas on 0.0.0.0:PORT) is joined by a veth
pair to a namespace of this test's own, from which real clients talk to the app
(10.77.0.2 -> 10.77.0.1) and a raw socket sends datagrams from spoofed addresses
(10.200.0.0/16, random ports): one datagram per spoofed flow, several times MAX_FLOWS of
them, bounded in count. Nothing leaves the two namespaces.

Printed with -s: how many real flows' entries the floods left, how many real flows changed
replicas when the table changed (a scale) and off a draining replica, what happens to flows
that start while the map is full, and what the daemon's sweep of quiet flows leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from lbctl.dataplane import bpfsys
from lbctl.dataplane.ebpf import EbpfDataplane, flows, layout, pins
from lbctl.model.dataplane import Member
from lbctl.settings import EbpfSettings
from tests.dataplane.ebpf_harness import APP, KERNEL, PORT, Netns
from tests.dataplane.test_ebpf_listeners import farm

pytestmark = KERNEL

APP_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
MAX_FLOWS = layout.DEFINES["MAX_FLOWS"]
OVERFLOW_FLOWS = layout.DEFINES["OVERFLOW_FLOWS"]
# Longer than any quiet spell of the real flows below (a flood takes 2-4 s), shorter than the
# daemon's 10 s so that the sweep shows within the test.
CROWDED_IDLE = 6.0
REAL = 300  # real client flows
SPOOFED = 3 * MAX_FLOWS  # spoofed flows per flood, one datagram each unless said otherwise

# Real UDP flows from the client namespace, one socket each, driven by lines on stdin:
#   add N            N new flows; answers "ok"
#   send FIRST TAG   one datagram from every flow from FIRST on, each answer read before the
#                    next is sent; answers a JSON list of who answered each
REAL_CLIENT = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
socks = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "add":
        for _ in range(int(cmd[1])):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.bind(("0.0.0.0", 0))
            socks.append(s)
        print("ok", flush=True)
    else:
        out = []
        for i, s in enumerate(socks[int(cmd[1]):], int(cmd[1])):
            payload = f"{cmd[2]}-{i}"
            s.sendto(payload.encode(), (host, port))
            try:
                while True:  # a late answer to an earlier datagram is skipped
                    name, _, echo = s.recvfrom(2048)[0].decode().partition(" ")
                    if echo == payload:
                        break
                out.append(name)
            except OSError as e:
                out.append("error:" + type(e).__name__)
        print(json.dumps(out), flush=True)
"""

# COUNT spoofed flows to HOST:PORT from 10.200.0.0/16 with random source ports, PER datagrams
# each, sent back to back per flow; a raw socket (the kernel fills in the IP checksum; the
# UDP checksum is left 0, which IPv4 allows). Prints how many datagrams and the seconds.
FLOODER = r"""
import random, socket, struct, sys, time
host, port, count, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton(host)
payload = b"x" * 8
pkt = bytearray(20 + 8 + len(payload))
struct.pack_into("!BBHHHBBH4s4s", pkt, 0, 0x45, 0, len(pkt), 0, 0, 64, 17, 0, b"\0" * 4, dst)
pkt[28:] = payload
rnd = random.Random(int(sys.argv[5]))
t0 = time.monotonic()
sent = 0
for _ in range(count):
    src = (10 << 24) | (200 << 16) | rnd.getrandbits(16)
    struct.pack_into("!I", pkt, 12, src)
    struct.pack_into("!HHHH", pkt, 20, 1024 + rnd.getrandbits(15), port, 8 + len(payload), 0)
    for _ in range(per):
        s.sendto(pkt, (host, 0))
        sent += 1
print(sent, round(time.monotonic() - t0, 2), flush=True)
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class ClientNet:
    """The test's own namespace, on a veth pair to the app's."""

    name: str

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


@pytest.fixture
def clientnet(netns: Netns) -> Iterator[ClientNet]:
    name = f"lbt-fl-{secrets.token_hex(3)}"
    host_end, peer = f"lbtfl{secrets.token_hex(3)}", f"lbtfp{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", host_end, "netns", netns.name, "name", "fl0")
        sh("ip", "link", "set", peer, "netns", name, "name", "fl0")
        for ns, ip in ((netns.name, APP_IP), (name, CLIENT_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "fl0")
            sh("ip", "-n", ns, "link", "set", "fl0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Spoofed sources arrive on fl0: no reverse-path filter in the app's namespace, and
        # answers to them go back out fl0 (to be dropped in the client's namespace).
        for key in ("all", "default", "fl0"):
            sh("ip", "netns", "exec", netns.name, "sysctl", "-qw",
               f"net.ipv4.conf.{key}.rp_filter=0")
        sh("ip", "-n", netns.name, "route", "add", "default", "via", CLIENT_IP)
        yield ClientNet(name)
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)


class RealFlows:
    def __init__(self, net: ClientNet) -> None:
        self.proc = subprocess.Popen(
            net.exec(sys.executable, "-c", REAL_CLIENT, APP_IP, str(PORT)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.count = 0

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode()

    async def add(self, n: int) -> range:
        assert (await asyncio.to_thread(self._ask, f"add {n}")).strip() == "ok"
        self.count += n
        return range(self.count - n, self.count)

    async def send(self, tag: str, first: int = 0) -> list[str]:
        out: list[str] = json.loads(await asyncio.to_thread(self._ask, f"send {first} {tag}"))
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def real(clientnet: ClientNet) -> Iterator[RealFlows]:
    r = RealFlows(clientnet)
    try:
        yield r
    finally:
        r.close()


async def flood(net: ClientNet, count: int = SPOOFED, per: int = 1) -> str:
    seed = str(secrets.randbits(32))
    out = await asyncio.to_thread(
        subprocess.run, net.exec(sys.executable, "-c", FLOODER, APP_IP, str(PORT), str(count),
                                 str(per), seed),
        capture_output=True, text=True, check=True, timeout=120)
    await asyncio.sleep(0.5)  # what the replicas' buffers hold is steered already
    sent, seconds = out.stdout.split()
    return f"{sent} datagrams in {seconds} s"


def flow_entries(dp: EbpfDataplane) -> dict[bytes, int]:
    """Both flow maps now (`flows`, then `overflow`): key -> last seen (ns, CLOCK_MONOTONIC)."""
    maps = pins.open_pins(pins.pin_dir(dp.pin_root, APP))
    value = layout.STRUCTS["flow"]
    seen = [name for _, name, _ in value.fields].index("seen_ns")
    out: dict[bytes, int] = {}
    try:
        for name in flows.MAPS:
            rows = bpfsys.map_lookup_batch(maps.fds[name], flows.KEY_SIZE, flows.VALUE_SIZE)
            out.update((k, struct.unpack(value.format, v)[seen]) for k, v in rows)
    finally:
        maps.close()
    return out


async def real_keys(dp: EbpfDataplane, real: RealFlows, tag: str,
                    first: int = 0) -> tuple[list[str], set[bytes]]:
    """One datagram from every real flow (from `first` on): who answered, and the flow map
    keys they touched (last seen since: SEEN_GRANULARITY is 10 ms, and the flows' previous
    datagram was seconds ago)."""
    await asyncio.sleep(0.05)
    t0 = time.monotonic_ns()
    answers = await real.send(tag, first)
    return answers, {k for k, seen in flow_entries(dp).items() if seen >= t0}


def moved(before: list[str], after: list[str]) -> int:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b)


@pytest.fixture
async def fdp(tmp_path: pathlib.Path, pin_root: pathlib.Path) -> AsyncIterator[EbpfDataplane]:
    """The data plane, its quiet flows forgotten at every sync (flow_sweep_interval 0) and,
    once the map is half full, after CROWDED_IDLE of quiet (the daemon's: 5 s and 10 s)."""
    d = EbpfDataplane(tmp_path / "state", pin_root, settings=EbpfSettings(
        flow_sweep_interval=0.0, flow_crowded_idle=CROWDED_IDLE))
    yield d
    for app in d.pinned_apps():
        await d.remove(app)


async def test_a_spoofed_flood_never_pushes_out_a_real_flow(
    fdp: EbpfDataplane, netns: Netns, clientnet: ClientNet, real: RealFlows
) -> None:
    """Floods of 3 x MAX_FLOWS spoofed flows, one and two datagrams each: every real flow
    keeps its entry, so none changes replicas when the table changes after the flood (a
    scale) or when its replica drains, and the drain sees them. (With the LRU flow map of
    before, two datagrams per spoofed flow left 0 of 300 real flows: a scale then moved 228
    of them, a drain all of the draining replica's, and that drain saw none.)"""
    dp = fdp
    pids = farm(netns, "udp4", ["web-1", "web-2", "web-3", "web-4"])
    m = [Member(n, p) for n, p in pids.items()]
    report: dict[str, object] = {"real flows": REAL, "MAX_FLOWS": MAX_FLOWS}
    await dp.sync(APP, PORT, netns.pid, m[:3], proto="udp")
    await real.add(REAL)
    assert "error" not in "".join(await real.send("a"))

    for per in (1, 2):
        # The table stays: nothing moves (a forgotten flow would be hashed back anyway).
        before, keys = await real_keys(dp, real, f"p{per}a")
        report[f"[{per}/flow] flood"] = await flood(clientnet, per=per)
        left = len(keys & set(flow_entries(dp)))
        report[f"[{per}/flow] real flows the maps kept"] = f"{left} of {len(keys)}"
        assert left == len(keys) == REAL
        after = await real.send(f"p{per}b")
        assert after == before, "a flow changed replicas while the table stayed the same"

        # The table changes after a flood (a scale 3 -> 4): the real flows are all known.
        before, keys = await real_keys(dp, real, f"p{per}c")
        await flood(clientnet, per=per)
        await dp.sync(APP, PORT, netns.pid, m[:4], proto="udp")
        after = await real.send(f"p{per}d")
        report[f"[{per}/flow] moved, table changed (scale 3 -> 4)"] = moved(before, after)
        assert after == before

        # A replica drains (web-2) under a flood: its flows stay on it, and in the map that
        # the drain reads to tell when they went quiet.
        before, keys = await real_keys(dp, real, f"p{per}e")
        on_two = [i for i, r in enumerate(before) if r == "web-2"]
        await dp.sync(APP, PORT, netns.pid, [m[0], *m[2:4]], draining=[m[1]], proto="udp")
        await flood(clientnet, per=per)
        kept = len(keys & set(flow_entries(dp)))
        after = await real.send(f"p{per}f")
        report[f"[{per}/flow] draining web-2: its real flows / moved off (real flows kept)"] = \
            f"{len(on_two)} / {sum(1 for i in on_two if after[i] != 'web-2')} ({kept})"
        assert kept == REAL and len(on_two) > 20 and after == before
        await dp.sync(APP, PORT, netns.pid, m[:3], proto="udp")  # back to 3, web-4 out
        await real.send(f"p{per}g")

    # What a flood does cost: while `flows` is full, flows that start go to `overflow` (an
    # LRU), where a flood of its own size pushes them out.
    new = await real.add(100)
    answers, keys = await real_keys(dp, real, "n1", new.start)
    in_overflow = len(keys - _keys(dp, "flows"))
    await flood(clientnet, count=OVERFLOW_FLOWS, per=2)
    report["new flows while full: in overflow / kept after a flood of OVERFLOW_FLOWS"] = \
        f"{in_overflow} / {len(keys & set(flow_entries(dp)))} of {len(keys)}"
    assert await real.send("n2", new.start) == answers  # the table stayed: hashed back

    # The sweep: quiet flows are forgotten once the map is crowded; talking ones stay.
    full = len(_keys(dp, "flows"))
    await asyncio.sleep(CROWDED_IDLE + 0.5)
    _, keys = await real_keys(dp, real, "s1")
    await dp.sync(APP, PORT, netns.pid, m[:3], proto="udp")
    swept = _keys(dp, "flows")
    report["sweep: entries of `flows` before / after; real flows known (in `flows`)"] = \
        f"{full} / {len(swept)}; {len(keys & set(flow_entries(dp)))} of {len(keys)} " \
        f"({len(keys & swept)})"
    assert full > MAX_FLOWS // 2 and len(swept) < MAX_FLOWS // 2
    assert keys & set(flow_entries(dp)) == keys
    print("\nspoofed UDP flood vs the flow table:\n" + "\n".join(
        f"  {k}: {v}" for k, v in report.items()))


def _keys(dp: EbpfDataplane, name: str) -> set[bytes]:
    maps = pins.open_pins(pins.pin_dir(dp.pin_root, APP))
    try:
        return {k for k, _ in bpfsys.map_lookup_batch(maps.fds[name], flows.KEY_SIZE,
                                                      flows.VALUE_SIZE)}
    finally:
        maps.close()
