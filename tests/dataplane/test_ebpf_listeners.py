"""Several listeners per replica against the real kernel: UDP flows, IPv6 and dual-stack
sockets, each reuseport group with its own table (namespaces and fixtures: ebpf_harness.py).

The replicas here are forked by MULTI_FARM, each with the sockets a spec lists on PORT:
tcp4/udp4 on 0.0.0.0, tcp6/udp6 on :: with IPV6_V6ONLY, tcpdual/udpdual on :: taking IPv4
too; "@ADDR" binds ADDR instead of the wildcard, a trailing "!" leaves SO_REUSEPORT off.
A TCP connection is answered with the replica's name, a datagram with "<name> <payload>", so
a client knows who answered what it sent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lbctl.dataplane import bpf_loader
from lbctl.dataplane.ebpf import EbpfDataplane, pins, table
from lbctl.model.dataplane import Member
from lbctl.model.errors import ListenerError
from tests.dataplane.ebpf_harness import APP, KERNEL, PORT, Netns, members

pytestmark = KERNEL

MULTI_FARM = r"""
import os, select, signal, socket, sys, time
port, specs, names = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
def make(spec):
    reuse = not spec.endswith("!")
    spec, _, addr = spec.rstrip("!").partition("@")
    proto, fam = spec[:3], spec[3:]
    family = socket.AF_INET if fam == "4" else socket.AF_INET6
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if fam == "dual" else 1)
    s.bind((addr or ("0.0.0.0" if fam == "4" else "::"), port))
    if proto == "tcp":
        s.listen(1024)
    return s
for name in names:
    socks = [make(spec) for spec in specs]
    pid = os.fork()
    if pid == 0:
        while True:
            for s in select.select(socks, [], [])[0]:
                if s.type == socket.SOCK_STREAM:
                    c, _ = s.accept()
                    c.sendall(name.encode())
                    c.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(name.encode() + b" " + data, peer)
    for s in socks:
        s.close()
    print(name, pid, flush=True)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(3600)
"""

# UDP flows, one client socket each, driven by lines on stdin:
#   add N FAMILY      N new flows (4: to 127.0.0.1, 6: to ::1); answers "ok"
#   send FIRST TAG    one datagram from every flow from index FIRST on, each answer read
#                     before the next is sent; answers a JSON list of who answered each
#                     ("mismatch" when the echo is not what that flow sent)
UDP_CLIENT = r"""
import json, socket, sys
port = int(sys.argv[1])
flows = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "add":
        for _ in range(int(cmd[1])):
            v6 = cmd[2] == "6"
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            flows.append((s, ("::1" if v6 else "127.0.0.1", port)))
        print("ok", flush=True)
    elif cmd[0] == "send":
        first = int(cmd[1])
        out = []
        for i, (s, addr) in enumerate(flows[first:], first):
            payload = f"{cmd[2]}-{i}"
            s.sendto(payload.encode(), addr)
            try:
                name, _, echo = s.recvfrom(2048)[0].decode().partition(" ")
                out.append(name if echo == payload else "mismatch")
            except OSError as e:
                out.append("error:" + type(e).__name__)
        print(json.dumps(out), flush=True)
"""

# n new TCP connections to HOST, one after the other; prints the tally of who answered.
TCP_CLIENT = r"""
import collections, json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tally = collections.Counter()
for _ in range(n):
    with socket.create_connection((host, port), timeout=5) as c:
        tally[c.recv(64).decode() or "eof"] += 1
print(json.dumps(tally), flush=True)
"""


def farm(ns: Netns, specs: str, names: list[str]) -> dict[str, int]:
    p = ns.run(MULTI_FARM, str(PORT), specs, *names)
    assert p.stdout is not None
    pids = {}
    for _ in names:
        name, pid = p.stdout.readline().decode().split()
        pids[name] = int(pid)
    return pids


class UdpFlows:
    """A UDP_CLIENT in the namespace."""

    def __init__(self, ns: Netns) -> None:
        self.proc = ns.run(UDP_CLIENT, str(PORT), stdin=True)
        self.count = 0

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode()

    async def add(self, n: int, family: str = "4") -> range:
        """n new flows; their indexes."""
        assert (await asyncio.to_thread(self._ask, f"add {n} {family}")).strip() == "ok"
        self.count += n
        return range(self.count - n, self.count)

    async def send(self, tag: str, first: int = 0) -> list[str]:
        """One datagram from each flow from `first` on: who answered each."""
        out: list[str] = json.loads(await asyncio.to_thread(self._ask, f"send {first} {tag}"))
        return out


@pytest.fixture
def flows(netns: Netns) -> Iterator[UdpFlows]:
    yield UdpFlows(netns)  # killed with the namespace's processes


async def tcp_tally(ns: Netns, host: str, n: int) -> collections.Counter[str]:
    out = await asyncio.to_thread(
        subprocess.run, ns.exec(sys.executable, "-c", TCP_CLIENT, host, str(PORT), str(n)),
        capture_output=True, check=True, timeout=60,
    )
    return collections.Counter(json.loads(out.stdout))


def state(dp: EbpfDataplane) -> dict[str, dict[str, int]]:
    data: dict[str, dict[str, int]] = json.loads((dp.state_dir / "ebpf" / f"{APP}.json")
                                                 .read_text())
    return data


def assert_spread(tally: collections.Counter[str], names: list[str], tol: float) -> None:
    n = sum(tally.values())
    even = n / len(names)
    print(f"{n} over {len(names)}: {dict(sorted(tally.items()))} (even {even:.0f})")
    assert set(tally) == set(names), tally
    for name in names:
        assert abs(tally[name] - even) <= tol * even, (name, tally)


async def assert_clean(dp: EbpfDataplane) -> None:
    """Every verdict came from the right group's table: no socket of another group was ever
    tried (select_error), nothing fell back to the kernel's choice."""
    reasons = await dp.reasons(APP)
    assert reasons["select_error"] == reasons["fallback"] == reasons["no_group"] == 0, reasons


# ------------------------------------------------------------------------ tests


async def test_udp_flows_spread_and_stay_on_their_replica(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows
) -> None:
    names = ["web-1", "web-2", "web-3"]
    pids = farm(netns, "udp4,tcp4", names)
    assert await dp.has_listener(pids["web-1"], PORT, "web-1", "udp")
    await dp.sync(APP, PORT, netns.pid, members(pids), proto="udp")
    assert state(dp)["groups"] == {"udp4 0.0.0.0": 0}  # the TCP sockets are not the app's
    await flows.add(600)
    rounds = [await flows.send(f"r{i}") for i in range(3)]
    first = rounds[0]
    assert all(r == first for r in rounds), "a flow changed replicas"
    tally = collections.Counter(first)
    assert_spread(tally, names, 0.25)
    # the program counts flows, not datagrams
    assert await dp.counters(APP) == dict(tally)
    await assert_clean(dp)
    # a replica's recent flows, as a drain reads them
    for name in names:
        assert await dp.active_flows(APP, name, 5.0) == tally[name]


async def test_draining_udp_replica_keeps_its_flows_and_gets_no_new_one(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows
) -> None:
    pids = farm(netns, "udp4", ["web-1", "web-2", "web-3"])
    one, two, three = members(pids)
    await dp.sync(APP, PORT, netns.pid, [one, two, three], proto="udp")
    old = await flows.add(300)
    before = await flows.send("a")
    on_two = [i for i in old if before[i] == "web-2"]
    assert len(on_two) > 50

    await dp.sync(APP, PORT, netns.pid, [one, three], draining=[two], proto="udp")
    assert await flows.send("b") == before  # every old flow where it was, web-2's too
    new = await flows.add(300)
    fresh = await flows.send("c", new.start)
    assert "web-2" not in fresh
    assert_spread(collections.Counter(fresh), ["web-1", "web-3"], 0.25)
    assert await dp.active_flows(APP, "web-2", 2.0) == len(on_two)

    # quiet web-2's flows only: the others keep talking, web-2 goes idle
    for _ in range(5):
        await asyncio.sleep(0.5)
        others = await flows.send("d", new.start)
        assert others == fresh
    assert await dp.active_flows(APP, "web-2", 2.0) == 0
    assert await dp.active_flows(APP, "web-1", 2.0) > 0
    print(f"web-2 kept {len(on_two)} flows while draining, idle after 2.5 s")

    # web-2 leaves: its flows are placed again, on ready replicas only
    await dp.sync(APP, PORT, netns.pid, [one, three], proto="udp")
    after = await flows.send("e")
    assert "web-2" not in after
    assert [after[i] for i in old if i not in on_two] == [before[i] for i in old
                                                          if i not in on_two]  # fmt: skip
    assert (await dp.reasons(APP))["flow_moved"] == len(on_two)


async def test_udp_flows_of_a_dead_replica_move_to_a_ready_one(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows
) -> None:
    """The controller has not noticed yet: the socket left the map with the process, and the
    program must not keep the flow on a slot that is empty."""
    pids = farm(netns, "udp4", ["web-1", "web-2"])
    await dp.sync(APP, PORT, netns.pid, members(pids), proto="udp")
    await flows.add(100)
    before = await flows.send("a")
    os.kill(pids["web-1"], signal.SIGKILL)
    await asyncio.sleep(0.2)
    after = await flows.send("b")
    assert set(after) == {"web-2"}, collections.Counter(after)
    assert [a for a, b in zip(after, before, strict=True) if b == "web-2"] == [
        "web-2"] * before.count("web-2")  # fmt: skip


@pytest.mark.parametrize("proto", ["tcp", "udp"])
async def test_one_dual_stack_socket_serves_both_families(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows, proto: str
) -> None:
    """One [::] socket with IPV6_V6ONLY=0 per replica: one group, of family AF_INET6, that
    IPv4 clients reach too (the program must not class them by the packet's family)."""
    names = ["web-1", "web-2", "web-3"]
    pids = farm(netns, f"{proto}dual", names)
    await dp.sync(APP, PORT, netns.pid, members(pids), proto=proto)
    assert state(dp)["groups"] == {f"{proto}6 ::": 0}
    if proto == "tcp":
        v4 = await tcp_tally(netns, "127.0.0.1", 300)
        v6 = await tcp_tally(netns, "::1", 300)
        assert_spread(v4, names, 0.15)  # round-robin: near exact (a cursor per CPU)
        assert_spread(v6, names, 0.15)
    else:
        await flows.add(300, "4")
        await flows.add(300, "6")
        got = await flows.send("a")
        assert await flows.send("b") == got
        v4, v6 = collections.Counter(got[:300]), collections.Counter(got[300:])
        assert_spread(v4, names, 0.3)
        assert_spread(v6, names, 0.3)
    assert await dp.counters(APP) == dict(v4 + v6)
    await assert_clean(dp)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
async def test_separate_ipv4_and_ipv6_sockets_each_get_their_group_s_table(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows, proto: str
) -> None:
    """An IPv4 and an IPv6-only socket per replica: two groups, two tables.  web-3 drains, so
    neither table may name it; select_error stays 0, so no table ever offered a socket of the
    other group."""
    pids = farm(netns, f"{proto}4,{proto}6", ["web-1", "web-2", "web-3"])
    one, two, three = members(pids)
    await dp.sync(APP, PORT, netns.pid, [one, two], draining=[three], proto=proto)
    groups = state(dp)["groups"]
    assert set(groups) == {f"{proto}4 0.0.0.0", f"{proto}6 ::"}
    assert len(state(dp)["slots"]) == 6  # a slot per listener
    if proto == "tcp":
        v4 = await tcp_tally(netns, "127.0.0.1", 200)
        v6 = await tcp_tally(netns, "::1", 200)
        assert_spread(v4, ["web-1", "web-2"], 0.15)
        assert_spread(v6, ["web-1", "web-2"], 0.15)
    else:
        await flows.add(300, "4")
        await flows.add(300, "6")
        got = await flows.send("a")
        v4, v6 = collections.Counter(got[:300]), collections.Counter(got[300:])
        assert_spread(v4, ["web-1", "web-2"], 0.25)
        assert_spread(v6, ["web-1", "web-2"], 0.25)
    # counters are per replica: the sum over its two listeners
    assert await dp.counters(APP) == {**dict(v4 + v6), "web-3": 0}
    await assert_clean(dp)
    # web-3 ready again: back in both tables
    await dp.sync(APP, PORT, netns.pid, [one, two, three], proto=proto)
    if proto == "tcp":
        assert (await tcp_tally(netns, "::1", 30))["web-3"] >= 7
    else:
        fresh = await flows.add(90, "6")
        assert (await flows.send("b", fresh.start)).count("web-3") > 10


async def test_sockets_bound_to_an_address_are_found_by_the_whole_key(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows
) -> None:
    """Groups bound to a specific address are registered in the `groups` hash (the wildcard
    ones in an array by protocol and family): UDP flows on both families steered by them."""
    names = ["web-1", "web-2", "web-3"]
    pids = farm(netns, "udp4@127.0.0.1,udp6@::1", names)
    await dp.sync(APP, PORT, netns.pid, members(pids), proto="udp")
    assert set(state(dp)["groups"]) == {"udp4 127.0.0.1", "udp6 ::1"}
    maps = pins.open_pins(dp.pin_root / "web~t")
    try:
        keys = table.registered_groups(maps.fds)
        # two hash keys, no wildcard (an int)
        assert sorted(len(k) if isinstance(k, bytes) else -1 for k in keys) == [28, 28]
    finally:
        maps.close()
    await flows.add(300, "4")
    await flows.add(300, "6")
    got = await flows.send("a")
    assert await flows.send("b") == got
    assert_spread(collections.Counter(got[:300]), names, 0.3)
    assert_spread(collections.Counter(got[300:]), names, 0.3)
    await assert_clean(dp)


async def test_a_group_without_sockets_is_unregistered(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows
) -> None:
    """The app's replicas move from IPv4 sockets to a dual-stack one (a new image): the
    IPv4 group's registration and table index go with its last socket."""
    old = farm(netns, "udp4", ["web-1"])
    new = farm(netns, "udpdual", ["web-2"])
    await dp.sync(APP, PORT, netns.pid, [Member("web-1", old["web-1"])], proto="udp")
    assert state(dp)["groups"] == {"udp4 0.0.0.0": 0}
    await dp.sync(APP, PORT, netns.pid, [Member("web-2", new["web-2"])],
                  draining=[Member("web-1", old["web-1"])], proto="udp")  # fmt: skip
    assert state(dp)["groups"] == {"udp4 0.0.0.0": 0, "udp6 ::": 1}
    await dp.sync(APP, PORT, netns.pid, [Member("web-2", new["web-2"])], proto="udp")
    assert state(dp)["groups"] == {"udp6 ::": 1}
    maps = pins.open_pins(dp.pin_root / "web~t")
    try:
        assert table.registered_groups(maps.fds) == [3]  # wildcard udp6 only
    finally:
        maps.close()
    # IPv6 clients reach the dual-stack group and its table; IPv4 ones reach the old IPv4
    # group (web-1 still listens, and an IPv4 socket outranks a dual-stack one for them),
    # which has no registration any more: the kernel's own choice, counted as such
    await flows.add(20, "6")
    assert set(await flows.send("a")) == {"web-2"}
    assert (await dp.reasons(APP))["no_group"] == 0
    v4 = await flows.add(10, "4")
    assert set(await flows.send("b", v4.start)) == {"web-1"}
    reasons = await dp.reasons(APP)
    assert reasons["no_group"] == 10 and reasons["select_error"] == 0


async def test_udp_flows_keep_their_replica_across_a_program_upgrade(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows, tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new program gets the old one's flow map: no flow changes replicas, even one that
    the new table alone would hash elsewhere (web-2 drains across the upgrade)."""
    pids = farm(netns, "udp4", ["web-1", "web-2", "web-3"])
    one, two, three = members(pids)
    await dp.sync(APP, PORT, netns.pid, [one, two, three], proto="udp")
    await flows.add(200)
    before = await flows.send("a")
    counted = await dp.counters(APP)
    src = tmp_path / "lbctl_reuseport.c"
    src.write_text(bpf_loader.source_path().read_text() + "\n/* v2 */\n")
    monkeypatch.setenv("LBCTL_BPF_SRC", str(src))
    old_tag = dp.loaded_tag(APP)
    await dp.sync(APP, PORT, netns.pid, [one, three], draining=[two], proto="udp")
    assert dp.loaded_tag(APP) == bpf_loader.source_tag(src) != old_tag
    assert await flows.send("b") == before
    assert await dp.counters(APP) == counted  # flows, carried; none new
    assert (await dp.reasons(APP))["flow_moved"] == 0


async def test_upgrade_from_the_previous_release_keeps_flows_counters_and_steering(
    dp: EbpfDataplane, netns: Netns, flows: UdpFlows, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host running the release before the shared header (data/lbctl_reuseport_v2.c: the
    sizes written in the C, 256 slots): the first sync of this version loads the current
    program beside it, carries the counters and the flow map into the larger maps, swaps,
    and every flow stays on its replica."""
    old_src = pathlib.Path(__file__).parent / "data" / "lbctl_reuseport_v2.c"
    monkeypatch.setenv("LBCTL_BPF_SRC", str(old_src))
    pids = farm(netns, "udp4,udp6", ["web-1", "web-2"])
    await dp.sync(APP, PORT, netns.pid, members(pids), proto="udp")
    assert dp.loaded_tag(APP) == bpf_loader.source_tag(old_src)
    await flows.add(100)
    await flows.add(50, family="6")
    before = await flows.send("a")
    assert set(before) == {"web-1", "web-2"}
    counted = await dp.counters(APP)
    assert sum(counted.values()) == 150
    monkeypatch.delenv("LBCTL_BPF_SRC")
    await dp.sync(APP, PORT, netns.pid, members(pids), proto="udp")
    assert dp.loaded_tag(APP) == bpf_loader.source_tag() != bpf_loader.source_tag(old_src)
    assert await flows.send("b") == before
    assert await dp.counters(APP) == counted
    reasons = await dp.reasons(APP)
    assert reasons["flow_moved"] == reasons["fallback"] == reasons["no_group"] == 0
    await flows.add(60)  # new flows, steered by the new program over both replicas
    after = await flows.send("c", 150)
    assert set(after) == {"web-1", "web-2"}
    assert sum((await dp.counters(APP)).values()) == 210


async def test_udp_socket_without_reuseport_is_refused(dp: EbpfDataplane, netns: Netns) -> None:
    pids = farm(netns, "tcp4,udp4!", ["web-plain"])
    assert await dp.has_listener(pids["web-plain"], PORT, "web-plain", "tcp")
    with pytest.raises(ListenerError) as e:
        await dp.has_listener(pids["web-plain"], PORT, "web-plain", "udp")
    assert str(e.value) == (
        "web-plain listens on 8080/udp without SO_REUSEPORT: ebpf mode needs an app that sets "
        "SO_REUSEPORT; run it with --mode iptables"
    )
    with pytest.raises(ListenerError, match="8080/udp without SO_REUSEPORT"):
        await dp.sync(APP, PORT, netns.pid, members(pids), proto="udp")
    assert not await dp.has_listener(pids["web-plain"], PORT + 1, "web-plain", "udp")
