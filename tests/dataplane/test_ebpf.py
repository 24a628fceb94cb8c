"""The ebpf data plane against the real kernel: real sockets, real program, no Docker.

Each test gets its own network namespace `lbt-ebpf-<rand>` (lo up, tcp_migrate_req=1) and
its own pin root /sys/fs/bpf/lbctl-test-<rand>, so a real daemon's pins are never touched.
"Replicas" are processes forked by one small Python farm started in the namespace; each
listens with SO_REUSEPORT on 127.0.0.1:PORT and answers every connection with its name, so
the client's tally is what the replicas really served.  Clients run in the namespace too.
Everything is removed in fixture finalizers, even when a test fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import pathlib
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from lbctl.dataplane import bpf_loader, bpfsys
from lbctl.dataplane.ebpf import (
    MAX_SLOTS,
    EbpfDataplane,
    EbpfError,
    ListenerError,
    Member,
    build_table,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not shutil.which("ip")
        or EbpfDataplane.unavailable_reason() is not None,
        reason=f"needs root, iproute2 and ebpf ({EbpfDataplane.unavailable_reason()})",
    ),
]

PORT = 8080
APP = "web.t"  # a dot on purpose: bpffs refuses dots in names

# The farm: forks one replica per name.  mode: serve (answer name, close), hold (accept and
# keep the connection open), noaccept (listen, never accept), noreuse (serve without
# SO_REUSEPORT).  Prints "name pid" per replica once it listens.
FARM = r"""
import os, signal, socket, sys, time
port, mode, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
for name in names:
    s = socket.socket()
    if mode != "noreuse":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    pid = os.fork()
    if pid == 0:
        held = []
        if mode == "noaccept":
            while True:
                time.sleep(60)
        while True:
            c, _ = s.accept()
            c.sendall(name.encode())
            if mode == "hold":
                held.append(c)
            else:
                c.close()
    s.close()
    print(name, pid, flush=True)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(3600)
"""

# The client: n new connections, one after the other, each answered by a name; prints the
# tally as JSON.  With "queue", it opens all n first, says "connected", then reads them all.
CLIENT = r"""
import collections, json, socket, sys
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tally = collections.Counter()
def read(c):
    try:
        data = c.recv(64)
        tally[data.decode() or "eof"] += 1
    except OSError as e:
        tally["error:" + type(e).__name__] += 1
    finally:
        c.close()
if mode == "queue":
    conns = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(n)]
    print("connected", flush=True)
    sys.stdin.readline()
    for c in conns:
        read(c)
else:
    for _ in range(n):
        read(socket.create_connection(("127.0.0.1", port), timeout=5))
print(json.dumps(tally), flush=True)
"""


@dataclass
class Netns:
    name: str
    sleeper: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.sleeper.pid

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def farm(self, names: list[str], mode: str = "serve") -> dict[str, int]:
        """Start replicas; returns name -> pid."""
        p = subprocess.Popen(
            self.exec(sys.executable, "-c", FARM, str(PORT), mode, *names),
            stdout=subprocess.PIPE, start_new_session=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        pids = {}
        for _ in names:
            name, pid = p.stdout.readline().decode().split()
            pids[name] = int(pid)
        return pids

    def queue_client(self, n: int) -> subprocess.Popen[bytes]:
        """A client that opens n connections, prints "connected", and reads them all once a
        line arrives on its stdin."""
        return subprocess.Popen(
            self.exec(sys.executable, "-c", CLIENT, str(PORT), str(n), "queue"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def connect(self, n: int) -> collections.Counter[str]:
        out = subprocess.run(
            self.exec(sys.executable, "-c", CLIENT, str(PORT), str(n), "seq"),
            capture_output=True, check=True, timeout=60,
        )
        return collections.Counter(json.loads(out.stdout))


@pytest.fixture
def netns() -> Iterator[Netns]:
    name = f"lbt-ebpf-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns: Netns | None = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv4.tcp_migrate_req=1"], check=True)  # fmt: skip
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"],
                                   start_new_session=True)  # fmt: skip
        ns = Netns(name, sleeper)
        yield ns
    finally:
        if ns is not None:
            for p in [*ns.procs, ns.sleeper]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # our own session: farm + its replicas
                p.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def pin_root() -> Iterator[pathlib.Path]:
    root = pathlib.Path(f"/sys/fs/bpf/lbctl-test-{secrets.token_hex(4)}")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def dp(tmp_path: pathlib.Path, pin_root: pathlib.Path) -> AsyncIterator[EbpfDataplane]:
    d = EbpfDataplane(tmp_path / "state", pin_root)
    yield d
    for app in d.pinned_apps():
        await d.remove(app)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll check() until it holds or timeout passes; its last answer."""
    for _ in range(int(timeout / 0.05)):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


def members(pids: dict[str, int], weight: int = 1) -> list[Member]:
    return [Member(n, p, weight) for n, p in pids.items()]


async def connect(ns: Netns, n: int) -> collections.Counter[str]:
    return await asyncio.to_thread(ns.connect, n)


def assert_even(tally: collections.Counter[str], names: list[str], n: int, tol: float) -> None:
    even = n / len(names)
    worst = max(abs(tally[name] - even) / even for name in names)
    print(f"{len(names)} replicas, {n} connections: min {min(tally[x] for x in names)} "
          f"max {max(tally[x] for x in names)} (even {even:.1f}, worst {worst:.1%})")
    assert sum(tally.values()) == n, tally
    for name in names:
        assert abs(tally[name] - even) <= tol * even, (name, tally[name], even, tally)


# ------------------------------------------------------------------------ tests


def test_build_table_weights_and_interleaving() -> None:
    assert build_table([]) == []
    assert build_table([(3, 0)]) == []
    t = build_table([(0, 3), (1, 1)])
    assert sorted(t) == [0, 0, 0, 1] and t != [0, 0, 0, 1]  # interleaved
    big = build_table([(i, 10) for i in range(64)])  # 640 > 256: scaled, every one present
    assert len(big) <= 256 and set(big) == set(range(64))
    assert max(collections.Counter(big).values()) - min(collections.Counter(big).values()) <= 1


async def test_program_loads_pins_and_is_removed(
    dp: EbpfDataplane, netns: Netns, pin_root: pathlib.Path
) -> None:
    assert await dp.check_program() is None
    t0 = time.monotonic()
    await dp.sync(APP, PORT, netns.pid, [])
    load_s = time.monotonic() - t0
    print(f"load+pin through the loader: {load_s:.2f}s")
    assert dp.pinned_apps() == [APP]
    pins = sorted(os.listdir(pin_root / "web~t"))
    assert f"prog_{bpf_loader.source_tag()}" in pins
    assert {"sockets", "selection", "config", "steered", "reasons", "cursor"} <= set(pins)
    assert "bcc" not in sys.modules  # the daemon side never maps LLVM
    prog_fd = bpfsys.obj_get(str(pin_root / "web~t" / f"prog_{bpf_loader.source_tag()}"))
    ptype, prog_id = bpfsys.prog_info(prog_fd)
    os.close(prog_fd)
    assert ptype == bpfsys.BPF_PROG_TYPE_SK_REUSEPORT
    # attached to a live group, then removed: the program must still go away
    pids = netns.farm(["web-1"])
    await dp.sync(APP, PORT, netns.pid, members(pids))
    await dp.remove(APP)
    assert dp.pinned_apps() == []
    assert not pin_root.exists()
    async def prog_gone() -> bool:  # programs are freed after an RCU grace period
        return not bpfsys.prog_exists(prog_id)

    assert await eventually(prog_gone)
    assert (await connect(netns, 10))["web-1"] == 10  # the replica serves on, plain reuseport


@pytest.mark.parametrize("n", [1, 2, 5, 64])
async def test_spread_is_even(dp: EbpfDataplane, netns: Netns, n: int) -> None:
    pids = netns.farm([f"web-{i}" for i in range(n)])
    await dp.sync(APP, PORT, netns.pid, members(pids))
    tally = await connect(netns, 1000)
    assert_even(tally, list(pids), 1000, 0.15)
    counters = await dp.counters(APP)
    assert counters == {name: tally[name] for name in pids}  # map counts = replica counts
    assert (await dp.reasons(APP))["fallback"] == 0


async def test_weights_three_to_one(dp: EbpfDataplane, netns: Netns) -> None:
    pids = netns.farm(["web-a", "web-b"])
    await dp.sync(APP, PORT, netns.pid, [Member("web-a", pids["web-a"], 3),
                                         Member("web-b", pids["web-b"], 1)])  # fmt: skip
    tally = await connect(netns, 1000)
    assert abs(tally["web-a"] / 1000 - 0.75) <= 0.05, tally
    assert abs(tally["web-b"] / 1000 - 0.25) <= 0.05, tally


async def test_replica_out_of_table_gets_nothing_new(dp: EbpfDataplane, netns: Netns) -> None:
    pids = netns.farm(["web-1", "web-2", "web-3"])
    everyone = members(pids)
    await dp.sync(APP, PORT, netns.pid, everyone)
    before = await connect(netns, 300)
    assert before["web-2"] > 0
    await dp.sync(APP, PORT, netns.pid, [everyone[0], everyone[2]], draining=[everyone[1]])
    after = await connect(netns, 300)
    assert after["web-2"] == 0, after
    assert_even(after, ["web-1", "web-3"], 300, 0.15)
    # and a sync with nothing changed keeps it that way, without taking sockets again
    await dp.sync(APP, PORT, netns.pid, [everyone[0], everyone[2]], draining=[everyone[1]])
    assert (await connect(netns, 50))["web-2"] == 0
    # gone from both lists: out of the sockmap and its name out of the counters
    await dp.sync(APP, PORT, netns.pid, [everyone[0], everyone[2]])
    assert set(await dp.counters(APP)) == {"web-1", "web-3"}


async def test_queued_connections_migrate_to_ready_replica(
    dp: EbpfDataplane, netns: Netns
) -> None:
    """A never accepts; 100 clients queue on it; A drains and closes its listener.  The
    program must hand all 100 to B, the ready one, and none to C, a draining listener that
    is still in the group (the kernel's own fallback would spread them over B and C)."""
    a = netns.farm(["web-a"], mode="noaccept")
    bc = netns.farm(["web-b", "web-c"])
    ma, mb, mc = (Member(n, p) for n, p in [*a.items(), *bc.items()])
    await dp.sync(APP, PORT, netns.pid, [ma], draining=[mb, mc])  # only A gets connections
    client = netns.queue_client(100)
    try:
        assert client.stdout is not None and client.stdin is not None
        line = await asyncio.to_thread(client.stdout.readline)
        assert line.strip() == b"connected"
        assert await dp.established(ma.pid, PORT) == 100  # all queued on A
        await dp.sync(APP, PORT, netns.pid, [mb], draining=[ma, mc])  # A drains
        os.kill(ma.pid, signal.SIGKILL)  # A's listener closes with 100 queued
        client.stdin.write(b"go\n")
        client.stdin.flush()
        out = await asyncio.to_thread(client.stdout.readline)
        tally = json.loads(out)
    finally:
        client.kill()
        client.wait()
    assert tally == {"web-b": 100}, tally
    assert (await dp.reasons(APP))["migrated"] >= 100


async def test_loader_failure_carries_the_verifier_log(
    dp: EbpfDataplane, netns: Netns, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.c"
    text = bpf_loader.source_path().read_text()
    assert "u32 s = *slot;" in text
    bad.write_text(text.replace("u32 s = *slot;", "u32 s = *(slot + 3);"))  # out of bounds
    monkeypatch.setenv("LBCTL_BPF_SRC", str(bad))
    report = await dp.check_program()
    assert report is not None and "invalid access to map value" in report
    with pytest.raises(EbpfError) as e:
        await dp.sync(APP, PORT, netns.pid, [])
    assert "\n" not in e.value.summary and "loading the eBPF program failed" in e.value.summary
    assert "invalid access to map value" in e.value.detail
    assert "invalid access to map value" in str(e.value)
    assert dp.pinned_apps() == []


async def test_restarted_daemon_keeps_slots_counters_and_steering(
    tmp_path: pathlib.Path, pin_root: pathlib.Path, netns: Netns
) -> None:
    pids = netns.farm(["web-1", "web-2"])
    first = EbpfDataplane(tmp_path / "state", pin_root)
    try:
        await first.sync(APP, PORT, netns.pid, members(pids))
        await connect(netns, 200)
        c1 = await first.counters(APP)
        first.close()  # the daemon is gone; the pinned program keeps steering
        during = await connect(netns, 200)
        assert_even(during, list(pids), 200, 0.15)
        second = EbpfDataplane(tmp_path / "state", pin_root)
        assert second.pinned_apps() == [APP]
        c2 = await second.counters(APP)
        assert c2 == {n: c1[n] + during[n] for n in pids}  # same slots, nothing lost
        t0 = time.monotonic()
        await second.sync(APP, PORT, netns.pid, members(pids))  # nothing to do
        assert time.monotonic() - t0 < 0.5
        after = await connect(netns, 200)
        assert_even(after, list(pids), 200, 0.15)
        assert await second.counters(APP) == {n: c2[n] + after[n] for n in pids}
    finally:
        await EbpfDataplane(tmp_path / "state", pin_root).remove(APP)


async def test_damaged_state_file_is_set_aside_and_the_app_steers_again(
    tmp_path: pathlib.Path, pin_root: pathlib.Path, netns: Netns,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarted daemon finds the app's state file damaged (valid JSON, wrong shape: the
    old code raised from deep inside the sync).  The sync must set it aside, start with no
    slots and steer again; web-1 left meanwhile, so the fresh slots differ from the lost
    ones and the sockmap holds leftovers that the sync must empty."""
    pids = netns.farm(["web-1", "web-2", "web-3"])
    state = tmp_path / "state"
    path = state / "ebpf" / f"{APP}.json"
    first = EbpfDataplane(state, pin_root)
    try:
        await first.sync(APP, PORT, netns.pid, members(pids))
        await connect(netns, 90)
        assert json.loads(path.read_text())["slots"] == {
            "web-1 tcp4 127.0.0.1": 0, "web-2 tcp4 127.0.0.1": 1, "web-3 tcp4 127.0.0.1": 2}
        first.close()
        path.write_text('{"held": {"x": "y"}}')

        second = EbpfDataplane(state, pin_root)
        stay = [m for m in members(pids) if m.name != "web-1"]
        with caplog.at_level(logging.WARNING, logger="lbctl.dataplane.ebpf"):
            await second.sync(APP, PORT, netns.pid, stay)
        [warning] = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
        assert str(path) in warning and "restart from 0" in warning
        assert path.with_name(f"{APP}.json.damaged").read_text() == '{"held": {"x": "y"}}'

        tally = await connect(netns, 200)
        assert_even(tally, ["web-2", "web-3"], 200, 0.15)  # web-1 gets nothing
        assert await second.counters(APP) == {"web-2": tally["web-2"], "web-3": tally["web-3"]}
        assert (await second.reasons(APP))["fallback"] == 0
        saved = json.loads(path.read_text())["slots"]
        assert set(saved) == {"web-2 tcp4 127.0.0.1", "web-3 tcp4 127.0.0.1"}
        fd = bpfsys.obj_get(str(pin_root / "web~t" / "sockets"))
        try:
            occupied = {s for s in range(MAX_SLOTS)
                        if bpfsys.map_lookup(fd, struct.pack("=I", s), 8) is not None}
        finally:
            os.close(fd)
        assert occupied == set(saved.values())  # no leftover of the lost bookkeeping
        await second.sync(APP, PORT, netns.pid, stay)  # and a quiet sync after it
        assert (await connect(netns, 50))["web-1"] == 0
    finally:
        await EbpfDataplane(state, pin_root).remove(APP)


async def test_program_upgrade_swaps_in_place(
    dp: EbpfDataplane, netns: Netns, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = netns.farm(["web-1", "web-2"])
    await dp.sync(APP, PORT, netns.pid, members(pids))
    await connect(netns, 100)
    old_tag = dp.loaded_tag(APP)
    src = tmp_path / "lbctl_reuseport.c"
    src.write_text(bpf_loader.source_path().read_text() + "\n/* v2 */\n")
    monkeypatch.setenv("LBCTL_BPF_SRC", str(src))  # inherited by the loader process too
    await dp.sync(APP, PORT, netns.pid, members(pids))
    assert dp.loaded_tag(APP) == bpf_loader.source_tag(src) != old_tag
    tally = await connect(netns, 100)
    assert_even(tally, list(pids), 100, 0.15)
    assert sum((await dp.counters(APP)).values()) == 200  # carried over


async def test_failed_upgrade_keeps_the_pinned_program(
    dp: EbpfDataplane, netns: Netns, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = netns.farm(["web-1", "web-2"])
    await dp.sync(APP, PORT, netns.pid, members(pids))
    old_tag = dp.loaded_tag(APP)
    bad = tmp_path / "bad.c"
    bad.write_text("int broken(")
    monkeypatch.setenv("LBCTL_BPF_SRC", str(bad))
    await dp.sync(APP, PORT, netns.pid, members(pids)[:1], draining=members(pids)[1:])
    assert dp.loaded_tag(APP) == old_tag
    assert (await connect(netns, 50)) == {"web-1": 50}  # replica changes still applied


async def test_listener_checks_and_established(dp: EbpfDataplane, netns: Netns) -> None:
    plain = netns.farm(["web-plain"], mode="noreuse")
    with pytest.raises(ListenerError) as e:
        await dp.has_listener(plain["web-plain"], PORT, "web-plain")
    assert str(e.value) == (
        "web-plain listens on 8080 without SO_REUSEPORT: ebpf mode needs an app that sets "
        "SO_REUSEPORT; run it with --mode iptables"
    )
    with pytest.raises(ListenerError, match="without SO_REUSEPORT"):
        await dp.sync(APP, PORT, netns.pid, [Member("web-plain", plain["web-plain"])])
    assert not await dp.has_listener(plain["web-plain"], PORT + 1)
    assert not await dp.has_listener(netns.pid, PORT)  # the sleeper listens on nothing


async def test_established_counts_open_connections(dp: EbpfDataplane, netns: Netns) -> None:
    pids = netns.farm(["web-h"], mode="hold")
    assert await dp.has_listener(pids["web-h"], PORT)
    await dp.sync(APP, PORT, netns.pid, members(pids))
    client = netns.queue_client(3)
    try:
        assert client.stdout is not None
        assert (await asyncio.to_thread(client.stdout.readline)).strip() == b"connected"
        async def three_open() -> bool:
            return await dp.established(pids["web-h"], PORT) == 3

        assert await eventually(three_open)
    finally:
        client.kill()
        client.wait()
    # the daemon holds no duplicate of the listener: killing the replica frees the port
    os.kill(pids["web-h"], signal.SIGKILL)
    async def no_listener() -> bool:
        return not await dp.has_listener(pids["web-h"], PORT)

    assert await eventually(no_listener)
    fd = bpfsys.obj_get(str(dp.pin_root / "web~t" / "sockets"))
    try:
        assert bpfsys.map_lookup(fd, struct.pack("=I", 0), 8) is None
    finally:
        os.close(fd)  # the kernel dropped the closed socket from the sockmap
