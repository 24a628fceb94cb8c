"""Readiness probes in ebpf mode against the real kernel: a SYN from the app's namespace to
its own address, from port PROBE_PORT_BASE + slot, lands on that slot's socket whatever the
selection table says; a slot with no socket refuses it; the same port from another address is
balanced like any client (the program, bpf/lbctl_reuseport.c probe_slot())."""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess

from lbctl.dataplane.ebpf import EbpfDataplane
from lbctl.dataplane.ebpf.probe import PROBE_PORT_BASE
from tests.dataplane.ebpf_harness import APP, KERNEL, PORT, Netns, connect, members

pytestmark = KERNEL

# Connects from (SRC, SPORT) to 127.0.0.1:PORT in the namespace and prints what answered
# (the replica's name), or the error's name.
FROM_PORT = r"""
import socket, sys
src, sport, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, sport))
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        print(s.recv(64).decode() or "eof", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
    s.close()
"""


async def probe(dp: EbpfDataplane, replica: str, pid: int, n: int = 10) -> list[str]:
    """n probes of `replica` the way the daemon makes them; what answered each."""
    out = []
    for _ in range(n):
        got = await dp.probe_socket(APP, replica, pid, 4)
        assert got is not None, f"{replica} has no probe target"
        s, addr = got

        def ask(s: socket.socket = s, addr: str = addr) -> str:
            s.setblocking(True)
            s.settimeout(3)
            try:
                s.connect((addr, PORT))
                return s.recv(64).decode() or "eof"
            except OSError as e:
                return type(e).__name__
            finally:
                s.close()

        out.append(await asyncio.to_thread(ask))
    return out


def from_port(ns: Netns, src: str, sport: int, n: int) -> collections.Counter[str]:
    out = subprocess.run(ns.exec("python3", "-c", FROM_PORT, src, str(sport), str(PORT), str(n)),
                         capture_output=True, text=True, check=True, timeout=60)
    return collections.Counter(out.stdout.split())


async def test_a_probe_reaches_the_slot_it_names_whatever_the_table_says(
    netns: Netns, dp: EbpfDataplane
) -> None:
    pids = netns.farm(["web-1", "web-2", "web-3"])
    ready, starting = members({"web-1": pids["web-1"]}), members({"web-2": pids["web-2"]})
    # web-1 ready (in the table), web-2 starting (in the socket map only), web-3 in neither.
    await dp.sync(APP, PORT, netns.pid, ready, probing=starting)
    assert await connect(netns, 30) == {"web-1": 30}, "clients go by the table"

    assert await probe(dp, "web-2", pids["web-2"]) == ["web-2"] * 10
    assert await probe(dp, "web-1", pids["web-1"]) == ["web-1"] * 10
    assert await dp.probe_socket(APP, "web-3", pids["web-3"], 4) is None
    assert await dp.probe_socket(APP, "web-2", pids["web-2"], 6) is None  # no IPv6 socket

    # A slot with no socket refuses the probe: it is never answered by another replica.
    empty = PROBE_PORT_BASE + 700
    assert await asyncio.to_thread(from_port, netns, "127.0.0.1", empty, 5) == \
        {"ConnectionRefusedError": 5}

    # The probe port from another source address is an ordinary client (a remote macOS
    # client's ephemeral port may well be 61001): balanced by the table.
    await asyncio.to_thread(subprocess.run, ["ip", "-n", netns.name, "addr", "add",
                                             "10.99.0.1/32", "dev", "lo"], check=True)
    slot = dp._apps[APP].listeners["web-2"][0][0]
    assert await asyncio.to_thread(from_port, netns, "10.99.0.1", PROBE_PORT_BASE + slot,
                                   10) == {"web-1": 10}

    # Probes are not counted as steered connections; they have a reason of their own.
    counted = await dp.counters(APP)
    assert counted.get("web-1") == 40 and counted.get("web-2", 0) == 0, counted
    assert (await dp.reasons(APP))["probe"] == 20

    # A restarted daemon probes before its first sync: the slots from the state file (the
    # pinned socket map kept the sockets in them), so no replica looks unready for a pass.
    restarted = EbpfDataplane(dp.state_dir, dp.pin_root)
    assert await probe(restarted, "web-2", pids["web-2"], 3) == ["web-2"] * 3
    restarted.close()

    # Ready now: web-2 joins the table and keeps answering its probes.
    await dp.sync(APP, PORT, netns.pid, members({n: pids[n] for n in ("web-1", "web-2")}))
    assert set(await connect(netns, 30)) == {"web-1", "web-2"}
    assert await probe(dp, "web-2", pids["web-2"], 5) == ["web-2"] * 5
