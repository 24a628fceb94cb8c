"""The ebpf data plane against the real kernel: real sockets, real program, no Docker.

TCP replicas with one IPv4 listener each (tests/dataplane/ebpf_harness.py says how the
namespaces, farms and clients work); several listeners, IPv6 and UDP are in
test_ebpf_listeners.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import pathlib
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from lbctl.dataplane import bpf_loader, bpfsys, sockets
from lbctl.dataplane.ebpf import (
    MAX_SLOTS,
    REASONS,
    EbpfDataplane,
    apply,
    build_table,
    flows,
    layout,
    table,
)
from lbctl.model.dataplane import Member
from lbctl.model.errors import EbpfError, ListenerError
from tests.dataplane.ebpf_harness import (
    APP,
    KERNEL,
    PORT,
    Netns,
    assert_even,
    connect,
    eventually,
    members,
)

pytestmark = KERNEL

# ------------------------------------------------------------------------ tests


def test_build_table_weights_and_interleaving() -> None:
    assert build_table([]) == []
    assert build_table([(3, 0)]) == []
    t = build_table([(0, 3), (1, 1)])
    assert sorted(t) == [0, 0, 0, 1] and t != [0, 0, 0, 1]  # interleaved
    big = build_table([(i, 10) for i in range(64)])  # 640 > 256: scaled, every one present
    assert len(big) <= 256 and set(big) == set(range(64))
    assert max(collections.Counter(big).values()) - min(collections.Counter(big).values()) <= 1


LOAD_AND_PIN = r"""
import sys
from lbctl.dataplane import bpf_loader
bpf_loader.load(bpf_loader.source_path(), __import__("pathlib").Path(sys.argv[1]))
"""


BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH = 1, 9  # flows never evicts; overflow does


def test_the_kernels_maps_have_the_sizes_python_uses(pin_root: pathlib.Path) -> None:
    """Key size, value size and entries of every map as the kernel built them from the C
    program (through bpf/lbctl_shared.h), against what the Python side packs and bounds
    (through lbctl.dataplane.ebpf.layout, test_ebpf_layout.py)."""
    pin = pin_root / "layout"
    subprocess.run([sys.executable, "-c", LOAD_AND_PIN, str(pin)], check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    d = layout.DEFINES
    expect = {
        "sockets": (bpfsys.BPF_MAP_TYPE_SOCKMAP, 4, 8, d["MAX_SLOTS"]),
        "wildcard": (None, 4, 4, d["N_WILDCARD"]),
        "groups": (None, table.GROUP_KEY_SIZE, 4, d["MAX_GROUPS"]),
        "selection": (None, 4, 4, d["MAX_GROUPS"] * 2 * d["TABLE_LEN"]),
        "config": (None, 4, 4, d["MAX_GROUPS"] * d["N_CFG"]),
        "flows": (BPF_MAP_TYPE_HASH, flows.KEY_SIZE, flows.VALUE_SIZE, d["MAX_FLOWS"]),
        "overflow": (BPF_MAP_TYPE_LRU_HASH, flows.KEY_SIZE, flows.VALUE_SIZE,
                     d["OVERFLOW_FLOWS"]),
        "steered": (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, d["MAX_SLOTS"]),
        "reasons": (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, d["N_REASONS"]),
        "cursor": (bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, d["MAX_GROUPS"]),
    }
    assert set(expect) == set(bpf_loader.MAP_NAMES)
    for name, (mtype, ksize, vsize, entries) in expect.items():
        fd = bpfsys.obj_get(str(pin / name))
        try:
            got = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        assert got[1:] == (ksize, vsize, entries), name
        assert mtype is None or got[0] == mtype, name


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
    # The map counts selections, the tally connections: equal but for a SYN the kernel
    # dropped after the program chose (a full accept queue on a busy host), whose retransmit
    # is chosen again, for the same replica (same 4-tuple, same hash). Seen once in a CI run.
    assert set(counters) == set(pids)
    assert all(counters[name] >= tally[name] for name in pids), (counters, tally)
    assert sum(counters.values()) - 1000 <= 5, (counters, tally)
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

    async def slot_empty() -> bool:
        return bpfsys.map_lookup(fd, struct.pack("=I", 0), 8) is None

    try:
        # the process's fds are gone before the kernel finishes closing the socket, so the
        # sockmap slot empties a moment later; a duplicate held anywhere keeps it forever
        assert await eventually(slot_empty)
    finally:
        os.close(fd)


async def test_upgrade_from_the_program_before_listener_groups(
    tmp_path: pathlib.Path, pin_root: pathlib.Path, netns: Netns
) -> None:
    """A host that ran the previous lbctl: its program (one table, no groups, no flows) is
    pinned and attached, its state file keys slots by replica name.  The first sync of this
    version must swap the current program in, keep every replica on its slot and counter,
    and steer on."""
    old_src = pathlib.Path(__file__).parent / "data" / "lbctl_reuseport_v1.c"
    old_tag = bpf_loader.source_tag(old_src)
    pin = pin_root / "web~t"
    pin.mkdir(parents=True)
    old_maps = ("sockets", "selection", "config", "steered", "reasons", "cursor")
    script = (
        "import sys, bcc\n"
        "from lbctl.dataplane import bpfsys\n"
        "src, pin, tag = sys.argv[1:4]\n"
        "b = bcc.BPF(src_file=src.encode())\n"
        "fn = b.load_func(b'lbctl_select', 21, attach_type=40)\n"
        "bpfsys.obj_pin(fn.fd, f'{pin}/prog_{tag}')\n"
        "for name in sys.argv[4:]:\n"
        "    bpfsys.obj_pin(bcc.libbcc.lib.bpf_table_fd(b.module, name.encode()),\n"
        "                   f'{pin}/{name}')\n"
    )
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, str(old_src), str(pin), old_tag,
                         *old_maps], check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pids = netns.farm(["web-1", "web-2"])

    def plant() -> dict[str, list[int]]:
        """What the old daemon wrote: a slot per name, one table (entries [0, 256)), its
        length and active half in config[1] and config[0]; the program attached."""
        fds = {name: bpfsys.obj_get(str(pin / name)) for name in old_maps}
        prog = bpfsys.obj_get(str(pin / f"prog_{old_tag}"))
        held = {}
        try:
            for slot, pid in enumerate(pids[n] for n in sorted(pids)):
                [listener] = sockets.find_listeners(pid, PORT)
                fd = sockets.take(listener)
                try:
                    bpfsys.map_update(fds["sockets"], struct.pack("=I", slot),
                                      struct.pack("=Q", fd))  # fmt: skip
                    held[str(slot)] = [pid, listener.inode, sockets.cookie(fd), listener.pid,
                                       listener.fd]  # fmt: skip
                    bpfsys.map_update(fds["selection"], struct.pack("=I", slot),
                                      struct.pack("=I", slot))  # fmt: skip
                    if slot == 0:
                        sockets.attach_program(fd, prog)
                finally:
                    os.close(fd)
            bpfsys.map_update(fds["config"], struct.pack("=I", 1), struct.pack("=I", 2))
        finally:
            for fd in [*fds.values(), prog]:
                os.close(fd)
        return held

    held = await asyncio.to_thread(plant)
    state = tmp_path / "state"
    (state / "ebpf").mkdir(parents=True)
    (state / "ebpf" / f"{APP}.json").write_text(json.dumps(
        {"slots": {"web-1": 0, "web-2": 1}, "retired": {}, "held": held}))
    before = await connect(netns, 100)
    assert_even(before, list(pids), 100, 0.15)  # the old program steers

    dp = EbpfDataplane(state, pin_root)
    try:
        await dp.sync(APP, PORT, netns.pid, members(pids))
        assert dp.loaded_tag(APP) == bpf_loader.source_tag() != old_tag
        assert {"wildcard", "groups", "flows"} <= set(os.listdir(pin))
        saved = json.loads((state / "ebpf" / f"{APP}.json").read_text())
        assert saved["slots"] == {"web-1 tcp4 127.0.0.1": 0, "web-2 tcp4 127.0.0.1": 1}
        assert await dp.counters(APP) == dict(before)  # carried, per replica
        after = await connect(netns, 100)
        assert_even(after, list(pids), 100, 0.15)
        assert await dp.counters(APP) == dict(before + after)
        assert (await dp.reasons(APP))["fallback"] == 0
    finally:
        await dp.remove(APP)


async def test_counters_never_wait_for_a_sync(
    dp: EbpfDataplane, netns: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape reads the pinned maps without the app's lock: here it answers while a sync
    holds that lock, stopped in the middle of its apply step until the scrape is done."""
    pids = netns.farm(["web-1", "web-2"])
    await dp.sync(APP, PORT, netns.pid, members(pids))
    tally = await connect(netns, 40)
    entered, release = threading.Event(), threading.Event()
    real = apply.apply

    def held_apply(*args: Any) -> None:
        entered.set()
        release.wait(60)
        real(*args)

    monkeypatch.setattr(apply, "apply", held_apply)
    sync = asyncio.create_task(dp.sync(APP, PORT, netns.pid, members(pids)[:1],
                                       draining=members(pids)[1:]))  # fmt: skip
    try:
        assert await asyncio.to_thread(entered.wait, 60)
        # The deadline only turns a deadlock (counters waiting for the lock the sync holds
        # until counters returns) into a failure instead of a hang.
        counted = await asyncio.wait_for(dp.counters(APP), 30)
        reasons = await asyncio.wait_for(dp.reasons(APP), 30)
        assert not sync.done()
    finally:
        release.set()
        await sync
    assert counted == {n: tally[n] for n in pids} and reasons["fallback"] == 0
    assert (await connect(netns, 20)) == {"web-1": 20}  # the sync went on afterwards


async def test_counters_fail_soft_while_the_pins_move_or_go(
    dp: EbpfDataplane, netns: Netns, pin_root: pathlib.Path
) -> None:
    """An upgrade renames the pin directory (pins.promote) and a remove deletes it, both
    without the counters' reader knowing: a read that finds no pins answers what it answered
    last, never less; a removed app has no counters."""
    pids = netns.farm(["web-1", "web-2"])
    await dp.sync(APP, PORT, netns.pid, members(pids))
    tally = await connect(netns, 30)
    counted = await dp.counters(APP)
    assert counted == {n: tally[n] for n in pids}
    pin = pin_root / "web~t"
    aside = pin.with_name("aside")
    pin.rename(aside)  # what a reader sees between promote()'s two steps
    try:
        assert await dp.counters(APP) == counted
        assert (await dp.reasons(APP))["fallback"] == 0
    finally:
        aside.rename(pin)
    await dp.remove(APP)
    assert await dp.counters(APP) == {}
    assert await dp.reasons(APP) == dict.fromkeys(REASONS, 0)
