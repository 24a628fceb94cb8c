"""The socket-activation prototype (bench.activation) keeps what the sandbox path guarantees,
against the real engine and kernel: replicas of lbctl/demo (this checkout's) in network
namespaces of their own serve the host port through listeners made in the host's namespace,
steered by lbctl's program:

- spread and per-replica counters; IPv4 and IPv6 on one dual-stack listener; UDP;
- isolation: a port a replica opens itself is not on the host, and the host's loopback is out
  of the replica's reach; a replica reaches the published port through the host's address
  (hairpin);
- the creator keeps no copy of a listener it handed over (a daemon killed after the handover
  takes nothing with it), and a replica that dies takes its listener out of the group;
- a drain under new-connection load fails no request (the listener leaves the table, its
  queue migrates, the replica stops).

Holds the host lock (the program's pins live in /sys/fs/bpf).
"""

from __future__ import annotations

import collections
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import activation
from bench.activation import ActivatedApp, Activation, ListenSpec
from harness import PREFIX
from harness.host import free_port, host_lock
from harness.traffic import get
from harness.wrk import Wrk

pytestmark = [pytest.mark.engine, pytest.mark.kernel]


@pytest.fixture
def act(tmp_path: Path) -> Iterator[Activation]:
    if os.geteuid() != 0 or shutil.which("docker") is None:
        pytest.fail("needs root and Docker: run `make setup`")
    with host_lock():
        a = Activation(tmp_path / "act")
        try:
            yield a
        finally:
            a.close()


def _names(tag: str, n: int = 2) -> list[str]:
    return [f"{PREFIX}-act{tag}-{i}" for i in range(1, n + 1)]


@pytest.fixture
def started() -> Iterator[list[ActivatedApp]]:
    apps: list[ActivatedApp] = []
    yield apps
    for g in apps:
        g.close(containers=True)


def _start(act: Activation, started: list[ActivatedApp], demo_image: str, tag: str,
           spec: ListenSpec, **environ: str) -> ActivatedApp:
    g = act.start(f"{PREFIX}-act{tag}", spec.port, _names(tag), image=demo_image, spec=spec,
                  environ=environ, cmd=("/httpd",))
    started.append(g)
    return g


def _pid(name: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name],
                              capture_output=True, text=True, check=True).stdout)


def _in_netns(name: str, script: str) -> str:
    r = subprocess.run(["nsenter", f"--net=/proc/{_pid(name)}/ns/net", "python3", "-c", script],
                       capture_output=True, text=True, timeout=20, check=True)
    return r.stdout.strip()


def _listeners_on(port: int) -> int:
    """TCP listeners on `port` in the host's namespace, whoever holds them."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return len(out.splitlines())


def _spread(port: int, n: int, host: str = "127.0.0.1") -> collections.Counter[str]:
    return collections.Counter(get(port, host=host, timeout=2) for _ in range(n))


def test_replicas_in_their_own_namespace_serve_the_host_port(
        act: Activation, started: list[ActivatedApp], demo_image: str) -> None:
    port, private = free_port(), free_port()
    g = _start(act, started, demo_image, "iso", ListenSpec(port, addr="::"),
               UDP_PORT=str(private), UDP_ECHO="1")
    a, b = g.names
    # every replica in a namespace of its own, none in the host's
    nets = {os.stat(f"/proc/{_pid(n)}/ns/net").st_ino for n in g.names}
    assert len(nets) == 2 and os.stat("/proc/self/ns/net").st_ino not in nets
    # one dual-stack listener each: IPv4 and IPv6 clients of the host port, round-robin
    assert _spread(port, 20) == {a: 10, b: 10}
    assert _spread(port, 20, host="::1") == {a: 10, b: 10}
    assert g.counters() == {a: 20, b: 20}
    # the creator kept nothing: the listeners' only owners are the replicas
    mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}
    held = {f"socket:[{lst.inode}]" for n in g.names
            for lst in activation.host_listeners(_pid(n), port)}
    assert len(held) == 2 and not held & mine
    # a port the replica opened itself is its own namespace's: answered there, not on the host
    ask_udp = ("import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               f"u.settimeout(1)\nu.sendto(b'hi', ('127.0.0.1', {private}))\n"
               "try:\n    print(u.recvfrom(64)[0].decode())\nexcept OSError as e:\n"
               "    print(type(e).__name__)\n")
    assert _in_netns(a, ask_udp) == f"{a} hi"
    host = subprocess.run(["python3", "-c", ask_udp], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()
    assert host in ("ConnectionRefusedError", "TimeoutError"), host
    # hairpin: a replica reaches the published port at the host's address on its bridge
    gw = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.Gateway}}", a],
                        capture_output=True, text=True, check=True).stdout.strip()
    hair = ("import http.client\nnames = set()\nfor _ in range(6):\n"
            f"    c = http.client.HTTPConnection('{gw}', {port}, timeout=2)\n"
            "    c.request('GET', '/')\n    names.add(c.getresponse().read().decode().strip())\n"
            "print(' '.join(sorted(names)))\n")
    assert _in_netns(a, hair) == f"{a} {b}"


def test_the_hosts_loopback_is_out_of_a_replicas_reach(
        act: Activation, started: list[ActivatedApp], demo_image: str) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host secret\n")

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        loop_port = srv.server_address[1]
        port = free_port()
        _start(act, started, demo_image, "lo", ListenSpec(port), FETCH=f"127.0.0.1:{loop_port}")

        def fetch() -> tuple[int, str]:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/fetch")
            r = c.getresponse()
            return r.status, r.read().decode()

        # the host itself reaches the service; the replica, asked on the host port, cannot
        c = http.client.HTTPConnection("127.0.0.1", loop_port, timeout=2)
        c.request("GET", "/")
        assert c.getresponse().read() == b"host secret\n"
        assert {fetch()[0] for _ in range(4)} == {502}  # both replicas (round-robin)
    finally:
        srv.shutdown()
        srv.server_close()


def test_udp_flows_are_steered_across_replicas(
        act: Activation, started: list[ActivatedApp], demo_image: str) -> None:
    port = free_port()
    g = _start(act, started, demo_image, "udp", ListenSpec(port, udp=True), UDP_ECHO="1")
    seen: collections.Counter[str] = collections.Counter()
    for i in range(16):  # a flow each (a source port each), two datagrams per flow
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            names = set()
            for k in range(2):
                u.sendto(f"{i}.{k}".encode(), ("127.0.0.1", port))
                names.add(u.recvfrom(128)[0].decode().split()[0])
            assert len(names) == 1, names  # a flow stays on its replica
            seen.update(names)
    # new flows are hashed over the ready replicas (not round-robin): both get some
    assert set(seen) == set(g.names), seen
    assert g.counters("udp") == seen  # one program decision per new flow


def test_a_drain_under_load_fails_no_request_and_a_dead_replica_leaves_the_group(
        act: Activation, started: list[ActivatedApp], demo_image: str) -> None:
    port = free_port()
    g = _start(act, started, demo_image, "drain", ListenSpec(port))
    a, b = g.names
    load = Wrk(f"http://127.0.0.1:{port}/", 5, connections=16, close=True)
    time.sleep(1.5)
    before = g.counters()
    g.sync(ready=[b], draining=[a])  # out of the table, still in the map: its queue migrates
    steered = g.counters()[a]
    subprocess.run(["docker", "stop", "-t", "10", a], capture_output=True, check=True,
                   timeout=30)  # SIGTERM: the demo closes its listener and finishes in flight
    result = load.result()
    assert result["requests"] > 1000 and result["failed"] == 0, result
    after = g.counters()
    assert before[a] > 0 and after[a] == steered and after[b] > before[b]
    # a's listener died with it: the host's namespace holds b's alone
    assert _listeners_on(port) == 1 and len(activation.host_listeners(_pid(b), port)) == 1
    assert _spread(port, 6) == {b: 6}
