"""Every kind of client end to end: a remote host, another container, a replica calling its
own service (hairpin), IPv6 and UDP. Real daemon, real engine, real rules, real traffic.

The other clients of the suite are this process on 127.0.0.1; here they are:
- a "remote host": a network namespace of the test's own behind a veth pair (tests.clients),
  reaching the host's address on that link over IPv4 and IPv6;
- a container on the engine's bridge (lbctl/client, built from images/client), reaching the
  host's address on that bridge;
- a replica's own network namespace (`--network container:<replica>`, or the sandbox's in
  ebpf mode, which is every replica's): its source address is the replica's, so the DNAT can
  send it back to itself, the hairpin case that needs both lbctl's MASQUERADE and the
  bridge port's hairpin_mode.
Each test ends with `lbctl rm` and checks that iptables-save and ip6tables-save are as they
were before the app existed (lbctl's own IPv6 network goes with its last app).

What runs where (3 replicas each; "both" = iptables and ebpf mode, Docker unless said):

| client                                  | TCP v4 | TCP v6 | UDP v4 | UDP v6 |
|-----------------------------------------|--------|--------|--------|--------|
| remote host (veth netns)                | both   | both   | both   | both   |
| this host (127.0.0.1, its IPv6 address) | both   | both   | both   | both   |
| container on docker0                    | both, Podman iptables | - | both | - |
| container on a user IPv6 network        | -      | both   | -      | both   |
| the app's own namespace (hairpin)       | both, Podman iptables | both | both | both |

docker0 has no IPv6 here, so IPv6 containers are on a network of the test's own; `::1` is
refused (the kernel cannot NAT it), checked at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.daemon import Daemon
from harness.engine import ENGINES, app_containers, docker
from harness.host import free_port, iptables_save
from tests.clients import (
    container_requests,
    hairpin_port,
    ip6tables_save,
    ipv6_forwarding,
    local_requests,
    ns_requests,
    remote_host,
    restore_ipv6_forwarding,
    source_image,
)

pytestmark = pytest.mark.engine

TAG = 20 + os.getpid() % 200  # this process's remote-host subnet (tests.clients.remote_host)


@pytest.fixture
def host_tables(daemon: Daemon) -> Iterator[tuple[str, str]]:
    """iptables-save and ip6tables-save before the test's app; afterwards IPv6 forwarding as it
    was (Docker turns it on for the whole host when lbctl creates its IPv6 network, and
    leaves it on) and no network of lbctl's left behind."""
    forwarding = ipv6_forwarding()
    try:
        yield iptables_save(), ip6tables_save()
    finally:
        for cli in ("docker", "podman"):
            ours = docker("network", "ls", "-q", "--filter", "label=lbctl.managed=true",
                          check=False, cli=cli).split()
            if ours:
                docker("network", "rm", *ours, check=False, cli=cli)
        restore_ipv6_forwarding(forwarding)


def _gateway(cli: str) -> str:
    """The host's address on the engine's default bridge."""
    name = "bridge" if cli == "docker" else "podman"
    info = json.loads(docker("network", "inspect", name, cli=cli))[0]
    if cli == "docker":
        cfg = info["IPAM"]["Config"][0]
        if "Gateway" in cfg:
            return str(cfg["Gateway"])
        # A freshly started dockerd may list the default bridge's subnet without its gateway
        # (seen on a fresh machine: IPAM Config held only "Subnet"); the address is the
        # bridge interface's own.
        bridge = info["Options"].get("com.docker.network.bridge.name", "docker0")
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge],
                             capture_output=True, text=True, check=True).stdout
        return out.split()[3].split("/")[0]
    for sub in info.get("subnets") or info.get("Subnets") or []:
        if sub.get("gateway"):
            return str(sub["gateway"])
    raise LookupError(f"no gateway in podman network: {info}")


def _replicas(name: str, n: int) -> set[str]:
    return {f"{name}-{i}" for i in range(1, n + 1)}


def _assert_spread(seen: Counter[str], name: str, n: int, sent: int, what: str) -> None:
    print(f"{what}: {dict(seen)}")
    assert sum(seen.values()) == sent
    assert set(seen) == _replicas(name, n), f"{what}: {dict(seen)}"
    assert min(seen.values()) >= sent // (3 * n), f"{what}: {dict(seen)}"


# Lines the engines write for their own containers and networks: others' containers may come
# and go while a test runs (the e2e lock serializes lbctl's tests, not every engine user).
_ENGINE_LINE = re.compile(r"DOCKER|docker0|br-[0-9a-f]{12}|CNI-|cni-podman|podman")


def _same_rules(after: str, before: str) -> None:
    assert "LBCTL" not in after
    if after != before:
        def ours(text: str) -> list[str]:
            return [ln for ln in text.splitlines() if not _ENGINE_LINE.search(ln)]
        assert ours(after) == ours(before)


def _assert_host_as_before(d: Daemon, name: str, tables: tuple[str, str], cli: str) -> None:
    d.ok("rm", name)
    assert app_containers(name, cli=cli) == []
    _same_rules(iptables_save(), tables[0])
    _same_rules(ip6tables_save(), tables[1])
    assert "lbctl" not in docker("network", "ls", "--format", "{{.Name}}", cli=cli).split()


def _holder(name: str, mode: str) -> dict[str, Any]:
    """The container holding the app's address: a replica (iptables mode) or the sandbox
    (ebpf mode, whose namespace every replica shares)."""
    role = "sandbox" if mode == "ebpf" else "replica"
    return next(c for c in app_containers(name)
                if c["Config"]["Labels"].get("lbctl.role", "replica") == role)


def _gateways(c: dict[str, Any]) -> tuple[str, str]:
    """The host's IPv4 and IPv6 addresses on the bridge of the container's DNAT-target
    network (the lbctl.network label, else its only network), as the container sees them."""
    nets = c["NetworkSettings"]["Networks"]
    net = nets[c["Config"]["Labels"].get("lbctl.network") or next(iter(nets))]
    assert net["Gateway"] and net["IPv6Gateway"], net
    return str(net["Gateway"]), str(net["IPv6Gateway"])


def _forward_jump_first() -> bool:
    rules = [ln for ln in subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True,
                                         text=True, check=True).stdout.splitlines()
             if ln.startswith("-A FORWARD")]
    return bool(rules) and rules[0].endswith("-j LBCTL-FORWARD")


@contextlib.contextmanager
def _ipv6_network(name: str) -> Iterator[tuple[str, str]]:
    """A user network with IPv6 (a unique-local /64 of this process's): a place for client
    containers that call over IPv6, which the engine's default bridge has not. Yields its
    name and the host's IPv6 address on it.

    Creating it is also what a user's `docker network create` or `compose up` does to a
    running app: Docker puts its FORWARD jumps back above lbctl's, and below them its
    isolation drops every client on another bridge until lbctl's next sync (20-30 s of
    timeouts before lbctl watched network events). lbctl must be first again at once."""
    subnet = f"fd6d:{os.getpid() % 65536:x}::"
    t0 = time.monotonic()
    net_id = docker("network", "create", "--ipv6", "--subnet", f"{subnet}/64", "--label",
                    "lbctl.test=1", name).strip()
    holder = ""
    try:
        created = time.monotonic()
        while not _forward_jump_first() and time.monotonic() - created < 10:
            time.sleep(0.02)
        back = time.monotonic() - created
        print(f"network {name} created in {created - t0:.2f}s; lbctl's FORWARD jump first "
              f"again {1000 * back:.0f} ms later")
        assert _forward_jump_first() and back < 3, f"lbctl's FORWARD jump not first ({back}s)"
        # The bridge's address goes through duplicate address detection when its first
        # container comes up, and packets to it are dropped meanwhile (~1 s): a client's
        # first request would time out for reasons of the kernel's. One container holds the
        # bridge up while the clients come and go, as on any network in use.
        holder = docker("run", "-d", "--rm", "--label", "lbctl.test=1", "--network", name,
                        "lbctl/pause:latest").strip()
        gateway, bridge = f"{subnet}1", f"br-{net_id[:12]}"
        deadline = time.monotonic() + 10
        while _tentative(bridge, gateway) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _tentative(bridge, gateway), f"{gateway} on {bridge} stays tentative"
        yield name, gateway  # the engine's gateway: the subnet's first address
    finally:
        if holder:
            docker("rm", "-f", holder, check=False)
        docker("network", "rm", name, check=False)


def _tentative(bridge: str, addr: str) -> bool:
    """The address on the bridge is missing or still in duplicate address detection."""
    out = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", bridge],
                         capture_output=True, text=True, check=False).stdout
    lines = [ln for ln in out.splitlines() if f" {addr}/" in ln]
    return not lines or any("tentative" in ln for ln in lines)


def _every_container_client(name: str, mode: str, proto: str, port: int, client: str,
                            net6: tuple[str, str], sent: int = 45) -> None:
    """Containers, over both families, against a dual-stack app of 3 replicas: one on
    docker0 (IPv4: the default bridge has no IPv6) and one on a user IPv6 network, each to the
    host's address on its own bridge (so the DNAT sends it across bridges, through lbctl's
    FORWARD rules); and the app's own namespace to the host's addresses on the app's bridge
    (the hairpin, which needs lbctl's MASQUERADE and the port's hairpin_mode in both
    families)."""
    what = f"{mode}/{proto}"
    gw = _gateway("docker")
    seen = container_requests(client, proto, gw, port, sent)
    _assert_spread(seen, name, 3, sent, f"{what}: container on docker0 to {gw}")
    seen = container_requests(client, proto, net6[1], port, sent, network=net6[0])
    _assert_spread(seen, name, 3, sent, f"{what}: container on {net6[0]} to [{net6[1]}]")

    caller = _holder(name, mode)
    me = caller["Name"].lstrip("/")
    for gw in _gateways(caller):
        seen = container_requests(client, proto, gw, port, sent,
                                  network=f"container:{caller['Id']}")
        _assert_spread(seen, name, 3, sent, f"{what}: {me} calling its app at {gw}")
        if mode == "iptables":  # ebpf: the caller is the sandbox, no replica
            assert me in seen, "the DNAT never sent the replica to itself: no hairpin"


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_tcp_clients_of_every_kind_over_both_families(daemon: Daemon, app_name: str, mode: str,
                                                      host_tables: tuple[str, str]) -> None:
    """A dual-stack TCP app of 3 replicas, from a remote host, this host, containers and its
    own namespace, over IPv4 and IPv6; `rm` leaves both rule sets as they were."""
    image, client = source_image("demo"), source_image("client")
    port = free_port()
    daemon.ok("run", app_name, "--image", image, "-p", f"0.0.0.0:{port}:8080",
              "-p", f"[::]:{port}:8080", "--replicas", "3", "--mode", mode,
              "-e", "BIND=::", timeout=120)
    st = daemon.status(app_name)
    assert st["publish"] == f"0.0.0.0:{port}:8080/tcp"
    assert st["publishes"] == [f"0.0.0.0:{port}:8080/tcp", f"[::]:{port}:8080/tcp"]
    assert st["ready"] == 3
    sent = 0
    with remote_host(TAG) as r:
        seen = ns_requests(r, "tcp", r.host_ip, port, 90)
        _assert_spread(seen, app_name, 3, 90, f"{mode}: remote host over IPv4 to {r.host_ip}")
        seen = ns_requests(r, "tcp", r.host_ip6, port, 90)
        _assert_spread(seen, app_name, 3, 90, f"{mode}: remote host over IPv6 to {r.host_ip6}")
        # This host's own clients, to its IPv6 address on that link, and on 127.0.0.1.
        seen = local_requests("tcp", r.host_ip6, port, 60)
        _assert_spread(seen, app_name, 3, 60, f"{mode}: local client to {r.host_ip6}")
        sent = 240
    seen = local_requests("tcp", "127.0.0.1", port, 60)
    _assert_spread(seen, app_name, 3, 60, f"{mode}: local client to 127.0.0.1")
    sent += 60
    with _ipv6_network(f"{app_name}-c6") as net6:
        _every_container_client(app_name, mode, "tcp", port, client, net6)
    sent += 4 * 45

    # IPv6 loopback is never NATed (the kernel drops the replies): a [::] publish leaves ::1
    # to the host, where nothing listens, so a ::1 client is refused at once, not left hanging.
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("::1", port), 3):
        pass
    print(f"{mode}: [::1] refused in {1000 * (time.monotonic() - t0):.1f} ms")

    # Both families' connections are counted per replica.
    total = sum(r["connections_total"] for r in daemon.status(app_name)["replicas"])
    print(f"{mode}: connections_total over the replicas: {total} (sent {sent})")
    assert total >= sent
    _assert_host_as_before(daemon, app_name, host_tables, "docker")


@pytest.mark.parametrize(
    ("engine", "mode"),
    [("docker", "iptables"), ("docker", "ebpf"), ("podman", "iptables")],
)
def test_container_client_and_hairpin(daemon: Daemon, app_name: str, engine: str, mode: str,
                                      host_tables: tuple[str, str]) -> None:
    cli = ENGINES[engine][0]
    name = f"{app_name}{engine[0]}{mode[0]}"
    image, client = source_image("demo", cli), source_image("client", cli)
    port = free_port()
    daemon.ok("run", name, "--image", image, "-p", f"0.0.0.0:{port}:8080",
              "--replicas", "3", "--mode", mode, timeout=120)
    gw = _gateway(cli)

    # Another container on the engine's bridge, to the host's address on that bridge.
    seen = container_requests(client, "tcp", gw, port, 60, cli=cli)
    _assert_spread(seen, name, 3, 60, f"{engine}/{mode}: container on the bridge to {gw}")

    # A replica calling its own service through the published address: its namespace is
    # the replica's (ebpf mode: the sandbox's, shared by every replica).
    cs = app_containers(name, cli=cli)
    role = "sandbox" if mode == "ebpf" else "replica"
    caller = next(c for c in cs if c["Config"]["Labels"].get("lbctl.role", "replica") == role)
    me = caller["Name"].lstrip("/")
    seen = container_requests(client, "tcp", gw, port, 30, network=f"container:{caller['Id']}",
                              cli=cli)
    print(f"{engine}/{mode}: {me} calling {gw}:{port}: {dict(seen)}")
    assert sum(seen.values()) == 30 and set(seen) <= _replicas(name, 3), seen
    if mode == "iptables":
        assert me in seen, "the DNAT never sent the replica to itself: hairpin not exercised"

    # What makes the hairpin work where bridges pass netfilter: the port's hairpin_mode,
    # which lbctl set (Docker does not; Podman's CNI config does). Without it, the calls the
    # DNAT sends back to the caller are lost: all of them in ebpf mode.
    port_mode = hairpin_port(int(caller["State"]["Pid"]))
    assert port_mode.read_text().strip() == "1"
    port_mode.write_text("0\n")
    try:
        tries = 10 if mode == "ebpf" else 24
        off = container_requests(client, "tcp", gw, port, tries, timeout_ms=400,
                                 network=f"container:{caller['Id']}", cli=cli)
    finally:
        port_mode.write_text("1\n")
    answered = {k: v for k, v in off.items() if not k.startswith("ERR")}
    print(f"{engine}/{mode}: with hairpin_mode=0: {sum(answered.values())} of {tries} "
          f"answered: {dict(off)}")
    assert me not in answered
    if mode == "ebpf":
        assert not answered
    else:
        assert sum(answered.values()) < tries
    _assert_host_as_before(daemon, name, host_tables, cli)


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_udp_clients_of_every_kind_over_both_families(daemon: Daemon, app_name: str, mode: str,
                                                      host_tables: tuple[str, str]) -> None:
    """A dual-stack UDP app of 3 replicas: flows from every kind of client spread over the
    replicas, a flow keeps its replica, and moves when that one leaves the data plane."""
    image, client = source_image("demo"), source_image("client")
    port = free_port()
    daemon.ok("run", app_name, "--image", image, "-p", f"0.0.0.0:{port}:5353/udp",
              "-p", f"[::]:{port}:5353/udp", "--replicas", "3", "--mode", mode,
              "-e", "UDP_PORT=5353", "-e", "BIND=::", timeout=120)
    assert daemon.status(app_name)["ready"] == 3
    # A UDP replica is ready once it runs (no handshake to probe): give the three a moment to
    # bind, bounded, before measuring.
    deadline = time.monotonic() + 10
    first = local_requests("udp", "127.0.0.1", port, 30, timeout=0.5)
    while set(first) != _replicas(app_name, 3) and time.monotonic() < deadline:
        first = local_requests("udp", "127.0.0.1", port, 30, timeout=0.5)
    print(f"{mode}/udp: first datagrams after run returned: {dict(first)}")

    # Each datagram from a socket of its own: a new flow, DNATed afresh. The demo's reply
    # starts with the replica's name (or is "<name> <payload>" where it echoes).
    seen = local_requests("udp", "127.0.0.1", port, 90)
    _assert_spread(seen, app_name, 3, 90, f"{mode}/udp: local client to 127.0.0.1")
    with remote_host(TAG) as r:
        seen = ns_requests(r, "udp", r.host_ip, port, 90)
        _assert_spread(seen, app_name, 3, 90,
                       f"{mode}/udp: remote host over IPv4 to {r.host_ip}")
        seen = ns_requests(r, "udp", r.host_ip6, port, 90)
        _assert_spread(seen, app_name, 3, 90,
                       f"{mode}/udp: remote host over IPv6 to {r.host_ip6}")
        # Containers reach a service whose replicas live on lbctl's own network across
        # bridges, through lbctl's FORWARD rules ahead of Docker's isolation.
        with _ipv6_network(f"{app_name}-c6") as net6:
            _every_container_client(app_name, mode, "udp", port, client, net6)
        _flows_leave_a_paused_replica(daemon, app_name, port, ["127.0.0.1", r.host_ip6])
    _assert_host_as_before(daemon, app_name, host_tables, "docker")


def _udp_ask(s: socket.socket, host: str, port: int, tries: int = 1) -> str:
    for _ in range(tries):
        s.sendto(b"which\n", (host, port))
        try:
            return s.recv(4096).decode().split()[0]
        except OSError:
            continue
    return "ERR no answer"


def _flows_leave_a_paused_replica(d: Daemon, name: str, port: int, hosts: list[str]) -> None:
    """UDP flows (one socket each: its datagrams are one conntrack entry) keep their replica,
    and move to another when theirs leaves the data plane while it still exists. Without
    lbctl deleting the removed backend's conntrack entries they would keep going to it until
    the entry times out. (A removed container is no test of that: Docker deletes the entries
    of an address it releases; a paused one keeps its address.)"""
    flows = [(h, socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET,
                               socket.SOCK_DGRAM)) for h in hosts for _ in range(8)]
    victim = ""
    try:
        for _, s in flows:
            s.settimeout(1.0)
        before = [_udp_ask(s, h, port, 3) for h, s in flows]
        again = [_udp_ask(s, h, port, 3) for h, s in flows]
        print(f"udp: {len(flows)} flows on {Counter(before)}")
        assert again == before, "a flow changed replica with nothing changed"
        victim = Counter(before).most_common(1)[0][0]
        docker("pause", victim)
        t0 = time.monotonic()
        d.wait(lambda: all(r["state"] != "ready" or r["name"] != victim
                           for r in d.status(name)["replicas"]), 15, f"{victim} out")
        after = [_udp_ask(s, h, port, 3) for h, s in flows]
        print(f"udp: {victim} paused, out of the data plane in {time.monotonic() - t0:.2f}s; "
              f"the flows now on {Counter(after)}")
        for was, now in zip(before, after, strict=True):
            assert now != victim and not now.startswith("ERR"), (before, after)
            if was != victim:
                assert now == was, "a flow of a replica still serving moved"
    finally:
        if victim:
            docker("unpause", victim, check=False)
        for _, s in flows:
            s.close()


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_ipv6_on_a_network_the_app_names(daemon: Daemon, app_name: str, mode: str,
                                         host_tables: tuple[str, str]) -> None:
    """An app that names networks is reached on the first one in both families: it must have
    IPv6 (else refused in one line), lbctl's own network is not made, and the user's networks
    stay when the app goes."""
    v6, v4 = f"{app_name}-v6", f"{app_name}-v4"
    docker("network", "create", "--ipv6", "--subnet", f"fd6c:{os.getpid() % 65536:x}::/64", v6)
    docker("network", "create", v4)
    image = source_image("demo")
    port = free_port()
    base = ["run", app_name, "--image", image, "-p", f"0.0.0.0:{port}:8080",
            "-p", f"[::]:{port}:8080", "--mode", mode, "-e", "BIND=::"]
    try:
        before = iptables_save(), ip6tables_save()
        r = daemon.cli(*base, "--network", v4, "--network", v6)
        print(f"{mode}: first network without IPv6: exit {r.returncode}: {r.stderr.strip()}")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"its network {v4} has no IPv6" in r.stderr
        assert daemon.api("GET", "/apps")["apps"] == []
        _same_rules(iptables_save(), before[0])
        _same_rules(ip6tables_save(), before[1])

        daemon.ok(*base, "--network", v6, "--network", v4, "--replicas", "3", timeout=120)
        holders = [c for c in app_containers(app_name)
                   if c["Config"]["Labels"].get("lbctl.role", "replica")
                   == ("sandbox" if mode == "ebpf" else "replica")]
        assert holders
        for c in holders:
            nets = c["NetworkSettings"]["Networks"]
            assert set(nets) == {v6, v4} and c["Config"]["Labels"]["lbctl.network"] == v6
            assert nets[v6]["GlobalIPv6Address"], nets
        assert "lbctl" not in docker("network", "ls", "--format", "{{.Name}}").split()
        with remote_host(TAG) as r6:
            seen = ns_requests(r6, "tcp", r6.host_ip, port, 60)
            _assert_spread(seen, app_name, 3, 60, f"{mode} on {v6}: remote host over IPv4")
            seen = ns_requests(r6, "tcp", r6.host_ip6, port, 60)
            _assert_spread(seen, app_name, 3, 60, f"{mode} on {v6}: remote host over IPv6")
        _assert_host_as_before(daemon, app_name, host_tables, "docker")
        # The user's networks are theirs: lbctl removes neither.
        assert {v6, v4} <= set(docker("network", "ls", "--format", "{{.Name}}").split())
    finally:
        for c in app_containers(app_name):  # a failed test's leftovers, before the networks
            docker("rm", "-f", c["Id"], check=False)
        docker("network", "rm", v6, v4, check=False)


def test_ipv6_refused_in_one_line_where_it_cannot_work(daemon: Daemon, app_name: str,
                                                      tmp_path: Path) -> None:
    """[::1] cannot be NATed by the kernel: refused with exit 2 and nothing changed."""
    before = iptables_save(), ip6tables_save()
    r = daemon.cli("run", app_name, "--image", "lbctl/demo", "-p", "[::1]:8080:8080")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "does not NAT IPv6 loopback" in r.stderr
    r = daemon.cli("run", app_name, "--image", "lbctl/demo", "-p", "::1:8080:8080")
    assert r.returncode == 2 and "brackets" in r.stderr, r.stderr
    r = daemon.cli("run", app_name, "--image", "lbctl/demo", "-p", "0.0.0.0:80:8080",
                   "-p", "[::]:80:9090")
    assert r.returncode == 2 and "CONTAINER_PORT" in r.stderr, r.stderr
    assert daemon.api("GET", "/apps")["apps"] == []
    _same_rules(iptables_save(), before[0])
    _same_rules(ip6tables_save(), before[1])


def test_a_foreign_network_named_lbctl_is_neither_used_nor_removed(
    daemon: Daemon, app_name: str
) -> None:
    """Refused at once (exit 2, one line, nothing changed), not after the run's timeout."""
    docker("network", "create", "--label", "lbctl.test=1", "lbctl")
    try:
        before = iptables_save(), ip6tables_save()
        t0 = time.monotonic()
        r = daemon.cli("run", app_name, "--image", "lbctl/demo", "-p", f"[::]:{free_port()}:8080",
                       "--mode", "iptables", "--timeout", "30")
        took = time.monotonic() - t0
        print(f"run beside a foreign `lbctl` network: exit {r.returncode} in {took:.2f}s: "
              f"{r.stderr.strip()}")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "a network of that name exists and is not lbctl's" in r.stderr
        assert took < 5, "refused by admission, not by the run's timeout"
        assert daemon.api("GET", "/apps")["apps"] == []
        assert app_containers(app_name) == []
        _same_rules(iptables_save(), before[0])
        _same_rules(ip6tables_save(), before[1])
        labels = docker("network", "inspect", "lbctl", "--format", "{{json .Labels}}")
        assert json.loads(labels) == {"lbctl.test": "1"}
    finally:
        docker("network", "rm", "lbctl", check=False)
