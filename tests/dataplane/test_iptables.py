"""The iptables data plane against the real kernel, with real traffic and no Docker.

Three network namespaces on a bridge `lbt0` that this test creates (10.251.0.0/24 exists only
inside them and on that bridge) stand in for containers; each runs a tiny TCP+UDP server that
answers its own name. Clients are this process on 127.0.0.1, the hard case (route_localnet +
MASQUERADE). Everything is removed in fixture finalizers, even when a test fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from harness.host import host_lock
from lbctl.dataplane.iptables import IptablesDataplane, IptablesError
from lbctl.dataplane.iptables.chains import SEP_PREFIX, bucket_chain, jump_spec, svc_chain
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service
from lbctl.settings import IptablesSettings

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("iptables-restore") or not shutil.which("ip"),
        reason="needs root, iproute2 and iptables",
    ),
]

BRIDGE = "lbt0"
GATEWAY = "10.251.0.1"
NAMES = ("web-0", "web-1", "web-2")
IPS = ("10.251.0.10", "10.251.0.11", "10.251.0.12")
NETNS = ("lbtns0", "lbtns1", "lbtns2")
TCP_PORT = 8000
UDP_PORT = 5353
# A "remote" client: its own namespace, routed to the host over a veth pair (no bridge).
CLIENT_NS = "lbtcl"
CLIENT_HOST_IP = "10.252.0.1"
CLIENT_IP = "10.252.0.2"
LOCALNET = pathlib.Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet")

# Runs in each namespace: answers every TCP request and every UDP datagram with its name.
SERVER = r"""
import socket, socketserver, sys, threading
name = sys.argv[1].encode()
class T(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name))
class U(socketserver.BaseRequestHandler):
    def handle(self):
        self.request[1].sendto(name, self.client_address)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
tcp = socketserver.ThreadingTCPServer(("0.0.0.0", %(tcp)d), T)
udp = socketserver.UDPServer(("0.0.0.0", %(udp)d), U)
threading.Thread(target=udp.serve_forever, daemon=True).start()
tcp.serve_forever()
""".replace("%(tcp)d", str(TCP_PORT)).replace("%(udp)d", str(UDP_PORT))


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def iptables_snapshot() -> list[str]:
    """`iptables-save` of every table minus comment lines and counters: what must be
    identical before the test and after sync([])."""
    lines = []
    for line in sh("iptables-save").splitlines():
        if line.startswith("#"):
            continue
        lines.append(re.sub(r" \[\d+:\d+\]$", "", line))  # chain policy counters
    return lines


def _docker_line(line: str) -> bool:
    return bool(re.search(r"DOCKER|docker0|br-[0-9a-f]{12}", line))


def assert_restored(before: list[str]) -> None:
    """iptables-save is back to `before`, line for line and in order. Only the Docker engine
    may have changed its own rules meanwhile (other tests' containers), so if anything
    differs, the comparison is repeated without Docker's lines."""
    after = iptables_snapshot()
    assert "LBCTL" not in "\n".join(after)
    if after != before:
        assert [x for x in after if not _docker_line(x)] == [
            x for x in before if not _docker_line(x)
        ]


def localnet() -> str:
    return LOCALNET.read_text()


def nat_rules() -> list[str]:
    return re.sub(r"\[\d+:\d+\]", "", sh("iptables-save", "-t", "nat")).splitlines()[1:-1]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _teardown_net() -> None:
    for ns in NETNS:
        sh("ip", "netns", "pids", ns, check=False)
        for pid in sh("ip", "netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "netns", "del", CLIENT_NS, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)
    sh("ip", "link", "del", "lbtc", check=False)


@pytest.fixture(scope="module")
def testnet() -> Iterator[None]:
    """Bridge + 3 namespaces with servers; the backends every test here uses."""
    _teardown_net()  # leftovers of an earlier interrupted run
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i, (ns, ip, name) in enumerate(zip(NETNS, IPS, NAMES, strict=True)):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"lbtv{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            sh("ip", "link", "set", f"lbtv{i}", "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        sh("ip", "netns", "add", CLIENT_NS)
        sh("ip", "link", "add", "lbtc", "type", "veth", "peer", "name", "eth0", "netns", CLIENT_NS)
        sh("ip", "addr", "add", f"{CLIENT_HOST_IP}/24", "dev", "lbtc")
        sh("ip", "link", "set", "lbtc", "up")
        sh("ip", "-n", CLIENT_NS, "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        sh("ip", "-n", CLIENT_NS, "link", "set", "eth0", "up")
        sh("ip", "-n", CLIENT_NS, "route", "add", "default", "via", CLIENT_HOST_IP)
        deadline = time.monotonic() + 10
        for ip in IPS:  # wait until each server answers on its own address
            while True:
                try:
                    socket.create_connection((ip, TCP_PORT), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
        _teardown_net()


@pytest.fixture
def host(testnet: None, tmp_path: pathlib.Path) -> Iterator[tuple[list[str], str]]:
    """A foreign chain to protect, then the host's iptables and route_localnet as they were
    before lbctl touched anything; leftovers are removed even if the test fails."""
    with host_lock():
        assert "LBCTL-" not in sh("iptables-save"), "a stray lbctl owns this host's rules"
        yield from _host(tmp_path)


def _host(tmp_path: pathlib.Path) -> Iterator[tuple[list[str], str]]:
    sh("iptables", "-w", "-N", "FOREIGN-TEST")
    sh("iptables", "-w", "-A", "FOREIGN-TEST", "-p", "tcp", "--dport", "9", "-m", "comment",
       "--comment", "foreign rule", "-j", "RETURN")  # fmt: skip
    try:
        yield iptables_snapshot(), LOCALNET.read_text()
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(IptablesDataplane(tmp_path / "cleanup").sync([]))
        sh("iptables", "-w", "-F", "FOREIGN-TEST", check=False)
        sh("iptables", "-w", "-X", "FOREIGN-TEST", check=False)


def service(n: int, port: int, proto: str = "tcp", app: str = "lbtest") -> Service:
    container_port = TCP_PORT if proto == "tcp" else UDP_PORT
    backends = tuple(Backend(NAMES[i], IPS[i], container_port) for i in range(n))
    # As the controller builds it: the bridges of its backends (a deleted app's draining
    # containers aside), so none without a backend.
    return Service(app, Publish("127.0.0.1", port, container_port, proto), backends,
                   (BRIDGE,) if n else ())


async def get(port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()
    return data.decode().partition("\r\n\r\n")[2]


async def spread(port: int, n: int) -> collections.Counter[str]:
    return collections.Counter([await get(port) for _ in range(n)])


async def test_balance_scale_counters_and_full_removal(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    before, localnet_before = host
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    started = time.monotonic()
    await dp.sync([service(3, port)])
    assert time.monotonic() - started < 2
    assert localnet().strip() == "1"
    assert (tmp_path / "iptables-sysctl.json").exists()

    seen = await spread(port, 300)
    assert sum(seen.values()) == 300
    assert set(seen) == set(NAMES)
    assert min(seen.values()) >= 60, seen  # each of 3 gets >= 20 %
    counts = await dp.counters()
    assert counts == {("lbtest", n): seen[n] for n in NAMES}

    # Re-syncing the same services (here while traffic flows) and a restarted daemon (a new
    # instance over the existing rules) break no connection and keep the counters.
    async def resync() -> None:
        for _ in range(5):
            await dp.sync([service(3, port)])
            await asyncio.sleep(0.01)

    during, _ = await asyncio.gather(spread(port, 100), resync())
    restarted = IptablesDataplane(tmp_path)
    await restarted.sync([service(3, port)])
    after_restart = await restarted.counters()
    total = seen + during
    assert after_restart == {("lbtest", n): total[n] for n in NAMES}
    assert sum(after_restart.values()) == 400

    # Exactly one jump per built-in chain, however many syncs ran.
    saved = sh("iptables-save")
    assert saved.count("-j LBCTL-OUTPUT") == 1
    assert saved.count("-j LBCTL-INPUT") == 1

    # Scale to one backend: all traffic goes there, its counter keeps counting.
    await restarted.sync([service(1, port)])
    assert await spread(port, 50) == {"web-0": 50}
    assert await restarted.counters() == {("lbtest", "web-0"): total["web-0"] + 50}
    assert "LBCTL-SVC" in sh("iptables-save", "-t", "nat")

    # sync([]) puts the host back exactly as it was; the foreign chain is untouched.
    await restarted.sync([])
    assert_restored(before)
    foreign = sh("iptables", "-w", "-S", "FOREIGN-TEST").splitlines()
    assert foreign == [
        "-N FOREIGN-TEST",
        '-A FOREIGN-TEST -p tcp -m tcp --dport 9 -m comment --comment "foreign rule" -j RETURN',
    ]
    assert localnet() == localnet_before
    assert await restarted.counters() == {}
    with pytest.raises(ConnectionRefusedError):
        await get(port)  # nothing listens on the host port itself


# Runs in the client namespace: N new connections, prints {answer: count} as JSON.
REMOTE_CLIENT = r"""
import collections, json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = collections.Counter()
for _ in range(n):
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    seen[data.partition(b"\r\n\r\n")[2].decode()] += 1
print(json.dumps(seen))
"""


async def test_remote_clients_on_all_addresses(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    """0.0.0.0 publishing: another host's client goes through PREROUTING and FORWARD (whose
    policy Docker sets to DROP), keeps its source address, and local clients still work."""
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    svc = service(3, port)
    await dp.sync([Service(svc.app, Publish("0.0.0.0", port, TCP_PORT), svc.backends, (BRIDGE,))])
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", CLIENT_NS, sys.executable, "-c", REMOTE_CLIENT,
        CLIENT_HOST_IP, str(port), "90",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    remote = json.loads(out)
    assert sum(remote.values()) == 90 and set(remote) == set(NAMES), remote
    assert sum((await spread(port, 30)).values()) == 30  # 127.0.0.1 is a local address too
    assert sum((await dp.counters()).values()) == 120
    await dp.sync([])
    assert_restored(host[0])
    assert localnet() == host[1]


async def test_zero_backends_refused_at_once(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    await dp.sync([service(0, port)])
    assert localnet() == host[1]  # no backend: no route_localnet needed
    assert "REJECT" in sh("iptables", "-w", "-S", "LBCTL-INPUT")
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await get(port)
    assert time.monotonic() - started < 0.5
    await dp.sync([service(2, port)])
    assert await get(port) in NAMES[:2]
    await dp.sync([])
    assert_restored(host[0])


async def test_a_held_service_drops_new_connections_until_its_deadline(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    """A traffic hold (lbctl pause, iptables mode): the SYN of a new connection is dropped in
    raw, so the client is neither refused nor reset and connects at a retry once the hold is
    over; a connection open before it goes on; the deadline is the rule's own."""
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    await dp.sync([service(2, port)])
    # Nothing of lbctl's in raw before an app is paused: hooks every packet would cross.
    assert "LBCTL-" not in sh("iptables-save", "-t", "raw")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # open before the hold
    await dp.sync([dataclasses.replace(service(2, port), hold_until=time.time() + 3)])
    try:
        assert "-j DROP" in sh("iptables", "-w", "-t", "raw", "-S", "LBCTL-HOLD-OUTPUT")
        started = time.monotonic()
        answered = await asyncio.wait_for(get_waiting(port), 20)
        waited = time.monotonic() - started
        assert answered in NAMES[:2]
        assert waited >= 2.0, waited  # held to its deadline (then a SYN retry, 1 s apart)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 2)).decode().endswith(tuple(NAMES[:2]))
    finally:
        writer.close()
    await dp.sync([service(2, port)])
    assert sh("iptables", "-w", "-t", "raw", "-S", "LBCTL-HOLD-OUTPUT").strip() == \
        "-N LBCTL-HOLD-OUTPUT"
    await dp.sync([])
    assert_restored(host[0])
    assert "LBCTL-" not in sh("iptables-save", "-t", "raw")


async def get_waiting(port: int) -> str:
    """As get(), but the connect may take as long as the kernel retries its SYN."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()
    return data.decode().partition("\r\n\r\n")[2]


async def test_refused_rules_are_one_line_and_the_app_keeps_its_previous_ones(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    assert await dp.sync([service(2, port)]) == {}
    rules = nat_rules()
    bad = Service("lbtest", Publish("127.0.0.1", port, TCP_PORT), (Backend("web-9", "10.251.0.300", 1),), (BRIDGE,))  # fmt: skip  # noqa: E501
    errors = await dp.sync([bad])
    msg = errors["lbtest"]
    assert "\n" not in msg and "line" in msg and "10.251.0.300" in msg, msg
    assert msg.endswith("its previous rules are kept"), msg
    assert (tmp_path / "iptables-failed.rules").exists()
    # The refused transaction was all or nothing, and the one tried without the app's new
    # rules left its previous ones: they still serve.
    assert nat_rules() == rules
    assert await get(port) in NAMES[:2]
    await dp.sync([])
    assert_restored(host[0])


async def test_one_apps_refused_rule_leaves_the_others_rules_in(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    """A restore the kernel refuses because of one app's rule: that app is left out (no
    previous rules: none, its port refused), the other app's rules land and serve."""
    good_port, bad_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    good = service(2, good_port, app="lbgood")
    bad = Service("lbbad", Publish("127.0.0.1", bad_port, TCP_PORT),
                  (Backend("web-2", IPS[2], TCP_PORT), Backend("web-9", "10.251.0.300", TCP_PORT)),
                  (BRIDGE,))  # fmt: skip
    errors = await dp.sync([bad, good])
    assert set(errors) == {"lbbad"}, errors
    assert "10.251.0.300" in errors["lbbad"] and errors["lbbad"].endswith("it has no rules")
    assert set(await spread(good_port, 30)) == set(NAMES[:2])
    assert localnet().strip() == "1"  # the good app's guard is in, so is the sysctl
    with pytest.raises(ConnectionRefusedError):
        await get(bad_port)
    assert "lbbad" not in sh("iptables-save")
    # Fixed: in at the next sync, beside the other.
    fixed = Service("lbbad", bad.publish, (Backend("web-2", IPS[2], TCP_PORT),), (BRIDGE,))
    assert await dp.sync([fixed, good]) == {}
    assert await spread(bad_port, 5) == {"web-2": 5}
    await dp.sync([])
    assert_restored(host[0])
    assert localnet() == host[1]


async def test_a_failing_restore_leaves_route_localnet_as_it_was(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    """route_localnet goes on only once the restore that installs the bridge's guard went
    through: a restore that fails (CVE-2020-8558: the sysctl without its guard opens the
    host's loopback to every container on the bridge) leaves it as it was."""
    assert host[1].strip() == "0"
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path)
    # One app's refused rules: that app alone on the bridge gets neither rules nor sysctl.
    bad = Service("lbbad", Publish("127.0.0.1", port, TCP_PORT),
                  (Backend("web-9", "10.251.0.300", TCP_PORT),), (BRIDGE,))
    assert set(await dp.sync([bad])) == {"lbbad"}
    assert localnet() == host[1]
    assert "route_localnet guard" not in sh("iptables-save")
    # A restore that fails whole: an app published on a host address (no route_localnet)
    # is removed while a foreign rule still jumps to its chain, so deleting that chain
    # fails the transaction, and with it the new 127.0.0.1 app's rules.
    remote = Service("lbremote", Publish(CLIENT_HOST_IP, port, TCP_PORT),
                     (Backend(NAMES[0], IPS[0], TCP_PORT),), (BRIDGE,))
    await dp.sync([remote])
    assert localnet() == host[1]
    sh("iptables", "-w", "-t", "nat", "-N", "FOREIGN-NAT")
    try:
        sh("iptables", "-w", "-t", "nat", "-A", "FOREIGN-NAT", "-j", svc_chain("lbremote"))
        with pytest.raises(IptablesError, match=r"CHAIN_DEL|busy|in use"):
            await dp.sync([service(2, port)])
        assert localnet() == host[1]
        assert "route_localnet guard" not in sh("iptables-save")
    finally:
        sh("iptables", "-w", "-t", "nat", "-F", "FOREIGN-NAT", check=False)
        sh("iptables", "-w", "-t", "nat", "-X", "FOREIGN-NAT", check=False)
    # The same sync once nothing holds the chain: guard first, then the sysctl.
    assert await dp.sync([service(2, port)]) == {}
    assert localnet().strip() == "1"
    assert "route_localnet guard for lbt0" in sh("iptables", "-w", "-S", "LBCTL-INPUT")
    assert set(await spread(port, 20)) == set(NAMES[:2])
    await dp.sync([])
    assert_restored(host[0])
    assert localnet() == host[1]


async def test_udp_flow_leaves_a_removed_backend(
    host: tuple[list[str], str], tmp_path: pathlib.Path
) -> None:
    assert shutil.which("conntrack"), "conntrack is installed by make setup"
    port = free_port(socket.SOCK_DGRAM)
    dp = IptablesDataplane(tmp_path)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))

        async def ask() -> str:
            await loop.sock_sendall(s, b"?")
            return (await asyncio.wait_for(loop.sock_recv(s, 100), 2)).decode()

        await dp.sync([service(3, port, "udp", app="lbudp")])
        first = await ask()
        assert all([await ask() == first for _ in range(5)])  # one flow sticks to a replica
        # Remove exactly that replica (its server keeps running, like a slow-dying container):
        # without the conntrack clean-up the flow would still reach it.
        rest = [i for i, n in enumerate(NAMES) if n != first]
        svc = service(3, port, "udp", app="lbudp")
        svc = Service(svc.app, svc.publish, tuple(svc.backends[i] for i in rest), (BRIDGE,))
        await dp.sync([svc])
        assert await ask() in {NAMES[i] for i in rest}
    await dp.sync([])
    assert_restored(host[0])


# --- the fast path (only the chains that changed, from memory) against the kernel ---------

# Runs in a namespace of its own (empty ruleset): a full sync from scratch of the services
# given as HostRules' JSON, with the host's bridge networks and bucket size; prints
# iptables-save. What the fast path left on the host must be exactly this.
SCRATCH = r"""
import asyncio, json, pathlib, sys, tempfile
from lbctl.controller.hostrules import _service
from lbctl.dataplane import hostnet
from lbctl.dataplane.iptables import IptablesDataplane
from lbctl.settings import IptablesSettings
doc = json.loads(sys.argv[1])
hostnet.connected_networks = lambda family, proc=None: doc["nets"]
services = [_service(d) for d in doc["services"]]
settings = IptablesSettings(bucket=doc["bucket"])
asyncio.run(IptablesDataplane(pathlib.Path(tempfile.mkdtemp()), settings=settings).sync(services))
import subprocess
print(subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout)
"""
SCRATCH_NS = "lbtscratch"


def lbctl_rules(saved: str | None = None) -> dict[str, list[str]]:
    """table:chain -> its rules in order, counters off, for our chains and the jumps into
    them: what a sync is responsible for, in a form where chain creation order is no matter."""
    out: dict[str, list[str]] = {}
    table = ""
    for line in (sh("iptables-save") if saved is None else saved).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":LBCTL-"):
            out.setdefault(f"{table}:{line[1:].split()[0]}", [])
        elif line.startswith("-A ") and "LBCTL-" in line:
            out.setdefault(f"{table}:{line.split()[1]}", []).append(line)
    return out


def from_scratch(services: list[Service], bucket: int) -> dict[str, list[str]]:
    from lbctl.controller.hostrules import _service_json
    from lbctl.dataplane import hostnet

    doc = {"bucket": bucket, "nets": hostnet.connected_networks(4),
           "services": [_service_json(s) for s in services]}  # fmt: skip
    sh("ip", "netns", "del", SCRATCH_NS, check=False)
    sh("ip", "netns", "add", SCRATCH_NS)
    try:
        out = sh("ip", "netns", "exec", SCRATCH_NS, sys.executable, "-c", SCRATCH,
                 json.dumps(doc))  # fmt: skip
    finally:
        sh("ip", "netns", "del", SCRATCH_NS, check=False)
    return lbctl_rules(out)


def everywhere(n: int, port: int, app: str = "lbtest", moved: dict[int, str] = {}) -> Service:  # noqa: B006
    """n backends behind 0.0.0.0 (every rule kind: DNAT, loopback and hairpin source NAT,
    FORWARD); `moved`: backend index -> the address it has instead of its own."""
    svc = service(n, port, app=app)
    backends = tuple(dataclasses.replace(b, ip=moved.get(i, b.ip))
                     for i, b in enumerate(svc.backends))  # fmt: skip
    return Service(app, Publish("0.0.0.0", port, TCP_PORT), backends, svc.bridges)


@pytest.fixture
def small_buckets() -> IptablesSettings:
    """Buckets of 2 backends: our 3 servers then make a bucketed service (2 + 1), the
    layout of every service over IptablesSettings.bucket backends."""
    return IptablesSettings(bucket=2)


async def test_fast_syncs_leave_what_a_full_sync_from_scratch_would(
    host: tuple[list[str], str], tmp_path: pathlib.Path, small_buckets: IptablesSettings
) -> None:
    port, other = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path, settings=small_buckets)
    await dp.sync([everywhere(3, port)])
    seen = await spread(port, 90)
    assert set(seen) == set(NAMES), seen  # every bucket serves

    steps = [
        [everywhere(3, port, moved={2: IPS[0]})],  # a replica restarted on a new address
        [everywhere(2, port)],  # scale down: a bucket goes
        [everywhere(3, port), everywhere(1, other, app="lbother")],  # scale up, a new app
        [everywhere(3, port)],  # the other app removed
    ]
    for services in steps:
        await dp.sync(services)
        assert dp.full_passes == 1  # each of these was the fast path
        assert lbctl_rules() == from_scratch(services, small_buckets.bucket), services

    # Counters survived every rewrite of the chains holding them (read, then carried over);
    # web-2 left at the scale-down, and its rule's counter with it (a full sync does alike).
    kept = {"web-0": seen["web-0"], "web-1": seen["web-1"], "web-2": 0}
    assert await dp.counters() == {("lbtest", n): kept[n] for n in NAMES}
    more = await spread(port, 60)
    assert set(more) == set(NAMES), more
    assert await dp.counters() == {("lbtest", n): kept[n] + more[n] for n in NAMES}
    await dp.sync([])
    assert_restored(host[0])


async def test_failed_fast_sync_falls_back_to_a_full_pass_that_repairs(
    host: tuple[list[str], str], tmp_path: pathlib.Path, small_buckets: IptablesSettings
) -> None:
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path, settings=small_buckets)
    good = [everywhere(3, port)]
    await dp.sync(good)
    # Behind lbctl's back: web-2's DNAT rule (alone in its bucket) is deleted.
    sep = bucket_chain(SEP_PREFIX, "lbtest", 1)
    sh("iptables", "-w", "-t", "nat", "-D", sep, "1")
    bad = [everywhere(3, port, moved={1: "10.251.0.300"})]
    # The fast pass's restore is refused: a full pass follows at once, which finds whose
    # rules they were and applies that app's previous ones, repairing the deleted rule.
    assert set(await dp.sync(bad)) == {"lbtest"}
    assert dp.full_passes == 2
    assert lbctl_rules() == from_scratch(good, small_buckets.bucket)
    assert await dp.sync(good) == {}
    assert dp.full_passes == 2
    assert set(await spread(port, 60)) == set(NAMES)
    await dp.sync([])
    assert_restored(host[0])


async def test_rules_removed_behind_our_back_come_back_with_the_periodic_full_pass(
    host: tuple[list[str], str], tmp_path: pathlib.Path, small_buckets: IptablesSettings,
) -> None:  # fmt: skip
    port = free_port(socket.SOCK_STREAM)
    dp = IptablesDataplane(tmp_path, settings=small_buckets)
    services = [everywhere(3, port)]
    await dp.sync(services)
    expected = lbctl_rules()
    sep = bucket_chain(SEP_PREFIX, "lbtest", 1)
    sh("iptables", "-w", "-t", "nat", "-F", sep)  # an admin flushes a chain of ours ...
    sh("iptables", "-w", "-t", "nat", "-D", "OUTPUT", *jump_spec("LBCTL-OUTPUT"))
    # ... which the fast path, trusting its memory, does not see (no change: nothing run) ...
    await dp.sync(services)
    assert lbctl_rules() != expected
    # ... and the next full pass repairs: HostRules asks for one every RESYNC_INTERVAL ...
    await dp.sync(services, full=True)
    assert lbctl_rules() == expected
    assert set(await spread(port, 60)) == set(NAMES)
    # ... and a data plane runs one by itself when its memory is full_resync_interval old
    # (here at once: the second sync of `later` would otherwise be a fast pass).
    quick = dataclasses.replace(small_buckets, full_resync_interval=0.0)
    later = IptablesDataplane(tmp_path, settings=quick)
    await later.sync(services)
    sh("iptables", "-w", "-t", "nat", "-F", sep)
    await later.sync(services)
    assert later.full_passes == 2
    assert lbctl_rules() == expected
    await dp.sync([])
    assert_restored(host[0])
