"""Socket activation end to end (`--activation`, or an image labelled io.lbctl.listen-fds=true):
replicas in network namespaces of their own on the engine's bridge serve listeners the daemon
made in the host's namespace and handed to them through the shim, steered by the real program.
Real daemon, engine, kernel and traffic, from this host and from a remote host.

What the sandbox path guarantees, kept: spread and per-replica counters, both families, UDP,
scaling under load and a daemon SIGKILL with no failed request, a replica that starts while no
daemon runs, hairpin; isolation: a port a replica opens is its own, the host's loopback is out
of its reach; an image that ignores LISTEN_FDS is refused in one line; `rm` leaves nothing.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.activation import activation_image
from harness.daemon import Daemon, scale_cycles_and_a_kill_under_load
from harness.engine import ENGINES, app_containers, docker
from harness.host import free_port, iptables_save
from harness.traffic import get, spread
from lbctl.dataplane.ebpf.pins import pin_dir
from tests.clients import ip6tables_save, local_requests, ns_requests, remote_host

pytestmark = pytest.mark.engine

TAG = 20 + (os.getpid() + 151) % 200  # a remote-host subnet apart from the other e2e tests'
SHIM = "/.lbctl/activate"


@pytest.fixture(scope="session")
def act_image(demo_image: str) -> str:
    """This checkout's demo, labelled as taking an inherited listener."""
    return activation_image(demo_image)


def _names(app: str, n: int) -> set[str]:
    return {f"{app}-{i}" for i in range(1, n + 1)}


def _host_listeners(port: int, proto: str = "tcp") -> list[str]:
    """Sockets listening (TCP) or bound (UDP) on `port` in the host's namespace."""
    flag = "-Hltn" if proto == "tcp" else "-Huan"
    out = subprocess.run(["ss", flag, f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def _netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _in_netns(pid: int, script: str) -> str:
    """A Python snippet run in the network namespace of `pid` (only: the host's files)."""
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c", script],
                       capture_output=True, text=True, timeout=30, check=True)
    return r.stdout.strip()


def _nothing_left(d: Daemon, app: str, port: int, before: tuple[str, str],
                  proto: str = "tcp", cli: str = "docker") -> None:
    """What `lbctl rm` must leave: no container, no listener, no socket dir, no pin, no rule."""
    assert app_containers(app, cli=cli) == []
    assert _host_listeners(port, proto) == []
    assert not (d.state_dir / "activation" / app).exists()
    assert not pin_dir(d.pin_root, app).exists()
    assert (iptables_save(), ip6tables_save()) == before


def _counted(d: Daemon, app: str) -> dict[str, int]:
    return {r["name"]: r["connections_total"] for r in d.status(app)["replicas"]}


def test_the_images_label_makes_it_activated_and_both_families_are_served_to_local_and_remote_clients(  # noqa: E501
        daemon: Daemon, app_name: str, act_image: str) -> None:
    port = free_port()
    before = (iptables_save(), ip6tables_save())
    # No --activation: the image's label decides.
    daemon.ok("run", app_name, "--image", act_image, "-p", f"0.0.0.0:{port}:8080",
              "-p", f"[::]:{port}:8080", "--replicas", "3", timeout=90)
    st = daemon.status(app_name)
    assert (st["path"], st["mode"], st["ready"]) == ("activation", "ebpf", 3), st
    assert {r["listener"] for r in st["replicas"]} == {"held"}, st
    assert "ebpf (socket activation)" in daemon.ok("status", app_name)
    assert daemon.api("GET", f"/apps/{app_name}/spec")["activation"] is True

    # No sandbox, no rule: each replica a container of its own on the default bridge, run by
    # the shim in front of the image's entrypoint, in a namespace of its own.
    cs = app_containers(app_name)
    assert len(cs) == 3 and all(c["Config"]["Labels"]["lbctl.role"] == "replica" for c in cs)
    assert {c["HostConfig"]["NetworkMode"] for c in cs} == {"bridge"}
    assert all(c["Config"]["Entrypoint"] == [SHIM] and c["Config"]["Cmd"] == ["/httpd"]
               for c in cs)
    nets = {_netns(c["State"]["Pid"]) for c in cs}
    assert len(nets) == 3 and os.stat("/proc/self/ns/net").st_ino not in nets
    assert (iptables_save(), ip6tables_save()) == before
    # One listener per family per replica, in the host's namespace, held by the replica.
    assert len(_host_listeners(port)) == 6

    local = local_requests("tcp", "127.0.0.1", port, 60) + local_requests("tcp", "::1", port, 60)
    print(f"activation, 3 replicas, 120 local requests (IPv4, IPv6): {dict(local)}")
    assert set(local) == _names(app_name, 3) and min(local.values()) >= 35, local
    with remote_host(TAG) as r:
        remote = (ns_requests(r, "tcp", r.host_ip, port, 60)
                  + ns_requests(r, "tcp", r.host_ip6, port, 60))
    print(f"activation, 120 requests from a remote host (IPv4, IPv6): {dict(remote)}")
    assert set(remote) == _names(app_name, 3) and min(remote.values()) >= 35, remote
    # Every connection went through the program, counted per replica.
    want = dict(local + remote)
    daemon.wait(lambda: _counted(daemon, app_name) == want, 5, "the program's counters")

    daemon.ok("rm", app_name)
    _nothing_left(daemon, app_name, port, before)


def test_scaling_and_a_daemon_kill_under_load_fail_no_request(
        daemon: Daemon, app_name: str, act_image: str) -> None:
    port = free_port()
    # wrk keeps its connections alive and does not retry: a stopping replica closes an idle
    # one only after 200 ms of Connection: close answers (the demo's IDLE_CLOSE_MS), as a
    # server that drains keep-alive clients gracefully does.
    daemon.ok("run", app_name, "--image", act_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "-e", "IDLE_CLOSE_MS=200", timeout=90)
    res, output = scale_cycles_and_a_kill_under_load(daemon, app_name, port)
    print(f"activation, scale 3->1->3 x3 + daemon SIGKILL under load: {res}")
    assert res["requests"] > 2000
    assert res["failed"] == 0, output
    st = daemon.status(app_name)
    assert st["ready"] == 3 and {r["listener"] for r in st["replicas"]} == {"held"}, st
    assert set(spread(port, 30)) == _names(app_name, 3)


def test_a_replica_that_starts_while_no_daemon_runs_waits_for_its_listeners(
        daemon: Daemon, app_name: str, act_image: str) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", act_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--activation", timeout=90)
    a, b = sorted(_names(app_name, 2))
    daemon.kill()
    # Restarted by hand with no daemon: its shim finds the socket's file but nobody behind it.
    docker("restart", "-t", "2", b)
    time.sleep(1.0)
    assert docker("inspect", "-f", "{{.State.Running}}", b).strip() == "true"
    assert spread(port, 10) == {a: 10}  # b holds nothing yet; a serves
    daemon.start()  # binds b's socket again in the directory b's mount names
    daemon.wait(lambda: daemon.status(app_name)["ready"] == 2, 30, "b to get its listener")
    assert set(spread(port, 20)) == {a, b}
    assert "nothing serves listeners" not in docker("logs", b)  # it waited, did not give up


def test_udp_flows_spread_and_stay_on_their_replica(
        daemon: Daemon, app_name: str, act_image: str) -> None:
    port = free_port()
    before = (iptables_save(), ip6tables_save())
    daemon.ok("run", app_name, "--image", act_image, "-p", f"0.0.0.0:{port}:5300/udp",
              "-e", "UDP_ECHO=1", "--replicas", "3", timeout=90)
    assert daemon.status(app_name)["path"] == "activation"
    seen: Counter[str] = collections.Counter()
    for i in range(30):  # a flow each (a source port each), two datagrams per flow
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            names = set()
            for k in range(2):
                u.sendto(f"{i}.{k}".encode(), ("127.0.0.1", port))
                names.add(u.recvfrom(128)[0].decode().split()[0])
            assert len(names) == 1, names  # a flow stays on its replica
            seen.update(names)
    with remote_host(TAG) as r:
        remote = ns_requests(r, "udp", r.host_ip, port, 30)
    print(f"activation, UDP: 30 local flows {dict(seen)}, 30 remote {dict(remote)}")
    assert set(seen) == _names(app_name, 3), seen  # hashed over the ready replicas
    assert set(remote) == _names(app_name, 3), remote
    daemon.ok("rm", app_name)
    _nothing_left(daemon, app_name, port, before, "udp")


class _Secret(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host secret\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_service() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 (a database's admin port, say): its port."""
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Secret)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def _fetch(port: int) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/fetch")
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def test_hairpin_and_isolation(daemon: Daemon, app_name: str, act_image: str,
                               loopback_service: int) -> None:
    port, private = free_port(), free_port()
    gateway = docker("network", "inspect", "bridge", "-f",
                     "{{(index .IPAM.Config 0).Gateway}}").strip() or "172.17.0.1"
    # FETCH: each replica calls the published port at the host's address on its bridge.
    daemon.ok("run", app_name, "--image", act_image, "-p", f"0.0.0.0:{port}:8080",
              "-e", f"FETCH={gateway}:{port}", "-e", f"UDP_PORT={private}", "-e", "UDP_ECHO=1",
              "--replicas", "2", timeout=90)
    names = _names(app_name, 2)
    answers = [_fetch(port) for _ in range(8)]
    print(f"activation, a replica calling the published address: {answers}")
    assert all(code == 200 for code, _ in answers), answers
    assert {body.strip() for _, body in answers} == names  # served, by either replica

    pid = next(c["State"]["Pid"] for c in app_containers(app_name))
    # A port the replica opens itself is its namespace's: answered there, not on the host.
    ask = ("import socket\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           f"u.settimeout(1)\nu.sendto(b'hi', ('127.0.0.1', {private}))\n"
           "try:\n    print(u.recvfrom(64)[0].decode())\nexcept OSError as e:\n"
           "    print(type(e).__name__)\n")
    assert _in_netns(pid, ask).endswith(" hi")
    on_host = subprocess.run(["python3", "-c", ask], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    assert on_host in ("ConnectionRefusedError", "TimeoutError"), on_host
    assert _host_listeners(private, "udp") == []
    # The host's 127.0.0.1 is out of the replica's reach (it is its own loopback there).
    reach = ("import socket\ntry:\n"
             f"    socket.create_connection(('127.0.0.1', {loopback_service}), timeout=2)\n"
             "    print('reached')\nexcept OSError as e:\n    print(type(e).__name__)\n")
    assert get(loopback_service) == "host secret"
    assert _in_netns(pid, reach) in ("ConnectionRefusedError", "TimeoutError", "timeout")


def test_an_image_that_ignores_listen_fds_is_refused_in_one_line(
        daemon: Daemon, app_name: str, demo_image: str) -> None:
    port = free_port()
    before = (iptables_save(), ip6tables_save())
    args = ["--image", demo_image, "-p", f"127.0.0.1:{port}:8080", "-e", "IGNORE_LISTEN_FDS=1",
            "--activation", "--replicas", "2"]
    r = daemon.cli("run", app_name, *args, timeout=90)
    print(f"lbctl run of an image that ignores LISTEN_FDS: {r.returncode} {r.stderr.strip()}")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "did not take the listener" in r.stderr and "LISTEN_FDS" in r.stderr, r.stderr
    _nothing_left(daemon, app_name, port, before)  # a first run that fails leaves nothing

    # Left running (--no-wait), it is reported in status and never served.
    daemon.ok("run", app_name, *args, "--no-wait")
    daemon.wait(lambda: {x["listener"] for x in daemon.status(app_name)["replicas"]}
                == {"not taken"} and len(daemon.status(app_name)["replicas"]) == 2, 15,
                "both replicas found not taken")
    st = daemon.status(app_name)
    assert st["ready"] == 0 and "did not take the listener" in st["error"], st
    assert "did not take the listener" in daemon.ok("status", app_name)
    # Not even queued to by the kernel while no replica is ready: the unused listeners were
    # shut down, so a client is refused at once rather than left waiting.
    assert _host_listeners(port) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    daemon.ok("rm", app_name)
    _nothing_left(daemon, app_name, port, before)


@pytest.mark.parametrize(("args", "says"), [
    (["-p", "0.0.0.0:{p}:8080", "--activation", "--mode", "iptables"], "needs mode ebpf"),
    (["-p", "0.0.0.0:{p}:{p}", "--activation", "--network", "host"], "two paths"),
    (["-p", "0.0.0.0:{p}:8080", "-p", "[::]:{q}:8080", "--activation"], "same HOST_PORT"),
])
def test_refusals_change_nothing(daemon: Daemon, app_name: str, act_image: str,
                                 args: list[str], says: str) -> None:
    port, other = free_port(), free_port()
    before = (iptables_save(), ip6tables_save())
    r = daemon.cli("run", app_name, "--image", act_image,
                   *[a.format(p=port, q=other) for a in args])
    assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert app_containers(app_name) == [] and (iptables_save(), ip6tables_save()) == before


def test_the_path_is_the_apps_for_good_and_false_keeps_the_sandbox(
        daemon: Daemon, app_name: str, act_image: str, demo_image: str) -> None:
    port, plain = free_port(), free_port()
    daemon.ok("run", app_name, "--image", act_image, "-p", f"127.0.0.1:{port}:8080",
              "--activation=false", timeout=90)
    daemon.ok("run", f"{app_name}p", "--image", demo_image, "-p", f"127.0.0.1:{plain}:8080",
              timeout=90)
    for name, p in ((app_name, port), (f"{app_name}p", plain)):
        st: dict[str, Any] = daemon.status(name)
        assert (st["path"], st["ready"]) == ("sandbox", 1), json.dumps(st)
        assert get(p) == f"{name}-1"
    # Changing the path is changing the data plane: refused, like --mode.
    r = daemon.cli("run", app_name, "--image", act_image, "-p", f"127.0.0.1:{port}:8080",
                   "--activation")
    assert r.returncode == 2 and "socket activation" in r.stderr and "lbctl rm" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    # A change that does not say keeps the path (and this one rolls the app).
    daemon.ok("update", app_name, "-e", "X=1", timeout=120)
    assert daemon.status(app_name)["path"] == "sandbox"


@pytest.mark.parametrize("engine", ["podman"])
def test_on_podman(daemon: Daemon, app_name: str, engine: str, demo_image: str) -> None:
    cli = ENGINES[engine][0]
    image = activation_image(demo_image, cli=cli)
    port = free_port()
    before = (iptables_save(), ip6tables_save())
    daemon.ok("run", app_name, "--image", image, "-p", f"0.0.0.0:{port}:8080", "--replicas",
              "3", timeout=120)
    st = daemon.status(app_name)
    assert (st["path"], st["ready"]) == ("activation", 3), st
    cs = app_containers(app_name, cli=cli)
    assert len(cs) == 3 and all(c["Config"]["Entrypoint"] in ([SHIM], SHIM) for c in cs)
    seen = local_requests("tcp", "127.0.0.1", port, 60)
    print(f"activation on Podman, 60 requests: {dict(seen)}")
    assert set(seen) == _names(app_name, 3) and min(seen.values()) >= 15, seen
    daemon.ok("rm", app_name)
    _nothing_left(daemon, app_name, port, before, cli=cli)


def test_nothing_of_activation_is_left_in_the_state_dir(daemon: Daemon, app_name: str,
                                                        act_image: str) -> None:
    """The replicas' socket directories follow them: scale down removes the leavers'."""
    port = free_port()
    daemon.ok("run", app_name, "--image", act_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", timeout=90)
    root = daemon.state_dir / "activation" / app_name
    assert sorted(p.name for p in root.iterdir()) == sorted(_names(app_name, 3))
    assert all((p / "activation.sock").is_socket() for p in root.iterdir())
    daemon.ok("scale", f"{app_name}=1")
    daemon.wait(lambda: sorted(p.name for p in root.iterdir()) == [f"{app_name}-1"], 10,
                "the leavers' socket dirs to go")
    assert Path(root / f"{app_name}-1" / "activation.sock").is_socket()
