"""Hairpin against the real kernel, with br_netfilter on and off: lbctl's own rules (the real
DualStackRules) and hairpin.enable() in a network namespace that stands in for the host.

A private "host" namespace holds a bridge and two "containers" (namespaces with a server each
that answers its name over IPv4 and IPv6); both are backends of one app published on 0.0.0.0
and [::]. Each container calls the host's address on the bridge, so the DNAT sends it to the
other one or back to itself. Whether bridged packets pass netfilter
(net.bridge.bridge-nf-call-ip(6)tables) is a per-namespace setting since Linux 5.3, so both
cases run here without touching the real host (Docker turns it on there): this is where the
same-bridge rule (`! --physdev-is-bridged`) and hairpin_mode earn their place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip6tables-restore"),
                       reason="needs root, iproute2 and ip(6)tables"),
]

TAG = os.getpid() % 1000
HOST = f"lbhp{TAG}h"
CONTAINERS = {f"lbhp{TAG}a": ("10.77.0.2", "fd77::2"), f"lbhp{TAG}b": ("10.77.0.3", "fd77::3")}
BRIDGE = "lbhpbr0"  # inside HOST only
PORT, CPORT = 18080, 8080

SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2]))); s.listen(64)
name = sys.argv[1].encode()
while True:
    c, _ = s.accept()
    with c:
        c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name))
"""

CLIENT = r"""
import json, socket, sys, collections
seen = collections.Counter()
for _ in range(int(sys.argv[2])):
    try:
        with socket.create_connection((sys.argv[1], PORT), timeout=float(sys.argv[3])) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        seen[data.partition(b"\r\n\r\n")[2].decode()] += 1
    except OSError as e:
        seen["ERR " + type(e).__name__] += 1
print(json.dumps(seen))
""".replace("PORT", str(PORT))

# Runs in HOST: lbctl's rules for the app, then hairpin mode on the backends' ports.
SYNC = r"""
import asyncio, json, sys
from pathlib import Path
from lbctl.dataplane import hairpin
from lbctl.dataplane.iptables import DualStackRules
from lbctl.model.dataplane import Backend, Service
from lbctl.model import Publish
backends = tuple(Backend(n, ip, CPORT, 1, ip6) for n, ip, ip6 in json.loads(sys.argv[2]))
svc = Service("web", Publish("0.0.0.0", PORT, CPORT), backends, ("BRIDGE",),
              (Publish("::", PORT, CPORT),))
rules = DualStackRules(Path(sys.argv[1]))
asyncio.run(rules.sync([svc] if sys.argv[3] == "sync" else []))
if sys.argv[3] == "sync":
    print(json.dumps([hairpin.enable(int(pid)) for pid in sys.argv[4:]]))
""".replace("CPORT", str(CPORT)).replace("PORT", str(PORT)).replace("BRIDGE", BRIDGE)


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def in_ns(ns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", ns, *args)


def _teardown() -> None:
    for ns in [HOST, *CONTAINERS]:
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def hostns(tmp_path: Path) -> Iterator[dict[str, int]]:
    """HOST with the bridge and both containers with their servers; name -> server PID."""
    _teardown()
    procs = []
    try:
        for ns in [HOST, *CONTAINERS]:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        h = ["ip", "-n", HOST]
        sh(*h, "link", "add", BRIDGE, "type", "bridge")
        sh(*h, "addr", "add", "10.77.0.1/24", "dev", BRIDGE)
        sh(*h, "-6", "addr", "add", "fd77::1/64", "dev", BRIDGE, "nodad")
        sh(*h, "link", "set", BRIDGE, "up")
        in_ns(HOST, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        pids = {}
        for i, (ns, (ip, ip6)) in enumerate(CONTAINERS.items()):
            sh(*h, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh(*h, "link", "set", f"port{i}", "master", BRIDGE, "up")
            c = ["ip", "-n", ns]
            sh(*c, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh(*c, "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            sh(*c, "link", "set", "eth0", "up")
            sh(*c, "route", "add", "default", "via", "10.77.0.1")
            sh(*c, "-6", "route", "add", "default", "via", "fd77::1")
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, ns,
                                     str(CPORT)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            procs.append(proc)
            pids[ns] = proc.pid
        # Each server answers on both its addresses, asked from HOST as lbctl's readiness
        # probes ask a replica. That also leaves HOST a neighbour entry for each: with
        # br_netfilter, an IPv6 packet DNATed to a port of the same bridge is dropped while
        # the host has none yet (the first SYN, then TCP retries after 1 s; measured here),
        # where IPv4 resolves the neighbour and sends.
        deadline = time.monotonic() + 10
        for ns, addrs in CONTAINERS.items():
            for ip in addrs:
                while "open" not in in_ns(HOST, sys.executable, "-c",
                                          "import socket\ntry:\n socket.create_connection("
                                          f"('{ip}',{CPORT}),0.3).close(); print('open')\n"
                                          "except OSError: pass"):
                    assert time.monotonic() < deadline, f"server in {ns} did not start"
                    time.sleep(0.05)
        # `ip netns exec` starts the server through a child; the namespace is what counts.
        yield {ns: int(sh("ip", "netns", "pids", ns).split()[0]) for ns in CONTAINERS}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        _teardown()


def calls(ns: str, host: str, n: int, timeout: float = 0.5) -> Counter[str]:
    return Counter(json.loads(in_ns(ns, sys.executable, "-c", CLIENT, host, str(n),
                                    str(timeout))))


def lbctl_in_host(tmp_path: Path, what: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(["ip", "netns", "exec", HOST, sys.executable, "-c", SYNC,
                        str(tmp_path), *args[:1], what, *args[1:]], capture_output=True,
                       text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("bridge_nf", ["1", "0"])
def test_every_container_is_served_whatever_bridges_do(
    hostns: dict[str, int], tmp_path: Path, bridge_nf: str
) -> None:
    in_ns(HOST, "sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={bridge_nf}",
          f"net.bridge.bridge-nf-call-ip6tables={bridge_nf}")
    backends = json.dumps([[ns, ip, ip6] for ns, (ip, ip6) in CONTAINERS.items()])
    changed = json.loads(lbctl_in_host(tmp_path, "sync", backends, *map(str, hostns.values())))
    assert changed == [["port0"], ["port1"]]  # hairpin mode set on each backend's port
    try:
        for ns in CONTAINERS:
            for host in ("10.77.0.1", "fd77::1"):
                seen = calls(ns, host, 40)
                print(f"bridge-nf-call={bridge_nf}: {ns} -> {host}:{PORT}: {dict(seen)}")
                # All answered, by itself (hairpin) and by the other one (same bridge).
                assert set(seen) == set(CONTAINERS), seen
    finally:
        lbctl_in_host(tmp_path, "clear", backends)
    assert "LBCTL" not in in_ns(HOST, "iptables-save") + in_ns(HOST, "ip6tables-save")


def test_self_calls_fail_without_hairpin_mode(hostns: dict[str, int], tmp_path: Path) -> None:
    """br_netfilter on (as Docker sets it): lbctl's MASQUERADE alone does not bring a call the
    DNAT sent back to its caller home; the port's hairpin_mode does."""
    in_ns(HOST, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
          "net.bridge.bridge-nf-call-ip6tables=1")
    first = next(iter(CONTAINERS))
    backends = json.dumps([[first, *CONTAINERS[first]]])  # the caller is the only backend
    lbctl_in_host(tmp_path, "sync", backends)  # rules only: no hairpin.enable
    try:
        before = calls(first, "10.77.0.1", 10)
        in_ns(HOST, "sh", "-c", "echo 1 > /sys/class/net/port0/brport/hairpin_mode")
        after = calls(first, "10.77.0.1", 10)
    finally:
        lbctl_in_host(tmp_path, "clear", backends)
    print(f"{first} calling itself through 10.77.0.1:{PORT}: hairpin_mode=0 {dict(before)}, "
          f"hairpin_mode=1 {dict(after)}")
    assert first not in before
    assert after == Counter({first: 10})
