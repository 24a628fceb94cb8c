# SPDX-License-Identifier: Apache-2.0
"""The offline images against the real engine: lbctl/demo replicas sharing the
network namespace of an lbctl/pause sandbox, as lbctl's ebpf mode runs them, and
lbctl/demo given its listeners by socket activation (LISTEN_FDS, through the shim
images/activate).

Uses the docker CLI (no lbctl code), so a failure here points at the images,
not at the daemon. Every container is named ``lbctl-test-img-*`` and labelled
``lbctl.test=1``, and is removed even when a test fails.
"""

from __future__ import annotations

import collections
import http.client
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

DEMO = "lbctl/demo:latest"
DEMO_HEALTH = "lbctl/demo-health:latest"
PAUSE = "lbctl/pause:latest"
PORT = 8080


def docker(*args: str, timeout: float = 30, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def logs(name: str) -> str:
    proc = subprocess.run(
        ["docker", "logs", name], capture_output=True, text=True, timeout=10, check=False
    )
    return proc.stdout + proc.stderr


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module", autouse=True)
def _engine_and_images() -> None:
    if shutil.which("docker") is None:
        pytest.fail("no docker CLI: run 'make setup'")
    proc = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if proc.returncode != 0:
        pytest.fail("no Docker engine answers: run 'make setup'")
    for image in (DEMO, DEMO_HEALTH, PAUSE):
        if subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, check=False
        ).returncode:
            pytest.fail(f"image {image} missing: run 'make setup' (scripts/build-images.sh)")


class Pod:
    """A pause sandbox plus replicas in its network namespace."""

    def __init__(self) -> None:
        self.prefix = f"lbctl-test-img-{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []
        self.sandbox = self._run(f"{self.prefix}-sb", PAUSE)
        self.ip = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", self.sandbox)
        assert self.ip, "sandbox has no IP on the default bridge"

    def _run(self, name: str, image: str, *opts: str) -> str:
        self.names.append(name)
        docker("run", "-d", "--name", name, "--label", "lbctl.test=1", *opts, image)
        return name

    def replica(self, replica: str, image: str = DEMO, **env: str) -> str:
        opts = ["--network", f"container:{self.sandbox}", "-e", f"LBCTL_REPLICA={replica}"]
        for k, v in env.items():
            opts += ["-e", f"{k}={v}"]
        return self._run(f"{self.prefix}-{replica}", image, *opts)

    def wait_listening(self, name: str) -> None:
        wait_for(lambda: "listening on" in logs(name), 10, f"{name} to listen")

    def get(self, *, close: bool = True) -> tuple[int, str, str]:
        """One request on a new connection: (status, X-Replica, body)."""
        conn = http.client.HTTPConnection(self.ip, PORT, timeout=2)
        try:
            conn.request("GET", "/", headers={"Connection": "close"} if close else {})
            resp = conn.getresponse()
            body = resp.read().decode()
            return resp.status, resp.getheader("X-Replica") or "", body
        finally:
            conn.close()

    def remove(self) -> None:
        # Replicas first: they live in the sandbox's namespace.
        for name in reversed(self.names):
            subprocess.run(
                ["docker", "rm", "-f", name], capture_output=True, timeout=30, check=False
            )


@pytest.fixture
def pod() -> Iterator[Pod]:
    p = Pod()
    try:
        yield p
    finally:
        p.remove()


@pytest.fixture
def pod_ab(pod: Pod) -> Pod:
    """A sandbox with replicas a and b, both listening on :8080."""
    for r in ("a", "b"):
        pod.replica(r)
    for r in ("a", "b"):
        pod.wait_listening(f"{pod.prefix}-{r}")
    return pod


def test_two_replicas_share_the_port(pod_ab: Pod) -> None:
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(200):
        status, replica, body = pod_ab.get()
        assert status == 200
        assert body == replica + "\n"
        seen[replica] += 1
    assert set(seen) == {"a", "b"}, seen
    for r in ("a", "b"):
        assert seen[r] >= 40, f"uneven spread over 200 connections: {dict(seen)}"


def test_keepalive_and_head(pod_ab: Pod) -> None:
    conn = http.client.HTTPConnection(pod_ab.ip, PORT, timeout=2)
    try:
        replicas = set()
        for _ in range(5):  # one connection, one replica
            conn.request("GET", "/some/path")
            resp = conn.getresponse()
            assert resp.status == 200
            replicas.add(resp.read().decode().strip())
        assert len(replicas) == 1
        conn.request("HEAD", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == "2"
        assert resp.read() == b""
    finally:
        conn.close()


def test_reuseport_off_cannot_bind_next_to_a_replica(pod_ab: Pod) -> None:
    name = pod_ab.replica("noreuse", REUSEPORT="0")
    code = docker("wait", name, timeout=10)
    assert code == "1"
    assert "Address in use" in logs(name)


def test_sigterm_exits_zero_and_the_other_replica_serves(pod_ab: Pod) -> None:
    a = f"{pod_ab.prefix}-a"
    start = time.monotonic()
    docker("kill", "-s", "TERM", a)
    code = docker("wait", a, timeout=10)
    elapsed = time.monotonic() - start
    assert code == "0", logs(a)
    assert elapsed < 6, f"replica took {elapsed:.1f} s to stop"
    for _ in range(20):
        status, replica, _ = pod_ab.get()
        assert (status, replica) == (200, "b")


def test_sigterm_finishes_a_request_in_flight(pod: Pod) -> None:
    name = pod.replica("slow", DELAY_MS="1500")
    pod.wait_listening(name)
    conn = http.client.HTTPConnection(pod.ip, PORT, timeout=5)
    try:
        conn.request("GET", "/")
        time.sleep(0.3)  # the request is now waiting out DELAY_MS
        docker("kill", "-s", "TERM", name)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == b"slow\n"
        assert resp.getheader("Connection") == "close"
    finally:
        conn.close()
    assert docker("wait", name, timeout=10) == "0"


def test_udp_answers_with_the_replica_name(pod: Pod) -> None:
    name = pod.replica("u", UDP_PORT="9090")
    pod.wait_listening(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"ping", (pod.ip, 9090))
        data, _ = s.recvfrom(100)
    assert data == b"u\n"


def test_udp_echo_answers_with_the_name_and_the_payload(pod: Pod) -> None:
    name = pod.replica("e", UDP_PORT="9090", UDP_ECHO="1")
    pod.wait_listening(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for payload in (b"flow-1 0", b"", b"x" * 1400):
            s.sendto(payload, (pod.ip, 9090))
            data, _ = s.recvfrom(2048)
            assert data == b"e " + payload


def in_netns(name: str, script: str) -> str:
    """Run a Python script in the container's network namespace (the image has no shell),
    with IPv6 on its loopback: Docker's default bridge turns IPv6 off in a container, and
    ::1 is all these tests need."""
    net = f"--net=/proc/{docker('inspect', '-f', '{{.State.Pid}}', name)}/ns/net"
    subprocess.run(["nsenter", net, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"],
                   timeout=15, check=True)
    r = subprocess.run(["nsenter", net, "python3", "-c", script],
                       capture_output=True, text=True, timeout=15, check=True)
    return r.stdout.strip()


ASK_BOTH = """
import socket
out = []
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    try:
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.settimeout(1)
        u.sendto(b"hi", (host, 9090))
        out.append(u.recvfrom(64)[0].decode())
    except OSError as e:
        out.append(type(e).__name__)
    try:
        t = socket.create_connection((host, 8080), timeout=1)
        t.close()
        out.append("tcp")
    except OSError as e:
        out.append(type(e).__name__)
print(" | ".join(out))
"""


def test_bind_ipv6_any_serves_both_families_with_one_socket_each(pod: Pod) -> None:
    name = pod.replica("d", BIND="::", UDP_PORT="9090", UDP_ECHO="1")
    pod.wait_listening(name)
    assert "listening on :: (dual-stack)" in logs(name)
    assert in_netns(name, ASK_BOTH) == "d hi | tcp | d hi | tcp"
    assert pod.get() == (200, "d", "d\n")  # the sandbox's IPv4 address, from the host
    # --check asks ::1, BIND's family (the exec inherits the container's environment)
    check = subprocess.run(["docker", "exec", name, "/httpd", "--check"], capture_output=True,
                           text=True, timeout=15, check=False)
    assert check.returncode == 0, check.stderr


def test_v6only_takes_ipv6_clients_only(pod: Pod) -> None:
    name = pod.replica("v6", BIND="::", V6ONLY="1", UDP_PORT="9090", UDP_ECHO="1")
    pod.wait_listening(name)
    got = in_netns(name, ASK_BOTH).split(" | ")
    assert got[2:] == ["v6 hi", "tcp"] and got[1] == "ConnectionRefusedError", got


def test_demo_health_becomes_healthy(pod: Pod) -> None:
    name = pod.replica("h", DEMO_HEALTH)

    def healthy() -> bool:
        return docker("inspect", "-f", "{{.State.Health.Status}}", name) == "healthy"

    wait_for(healthy, 15, f"{name} to be healthy")


def test_sigusr1_makes_the_check_fail_and_again_pass(pod: Pod, demo_image: str) -> None:
    """SIGUSR1 marks one replica sick: its own `--check` fails (even though the check's GET
    may reach the other replica's listener in the shared namespace), the other's passes.
    (This checkout's server, not lbctl/demo:latest: that tag is shared with other builds.)"""
    sick = pod.replica("s", demo_image)
    well = pod.replica("w", demo_image)
    for name in (sick, well):
        pod.wait_listening(name)

    def check(name: str) -> int:
        return subprocess.run(["docker", "exec", name, "/httpd", "--check"],
                              capture_output=True, timeout=10, check=False).returncode

    assert check(sick) == check(well) == 0
    docker("kill", "-s", "USR1", sick)
    wait_for(lambda: check(sick) == 1, 5, f"{sick}'s check to fail")
    assert check(well) == 0
    assert "sick (SIGUSR1)" in logs(sick)
    docker("kill", "-s", "USR1", sick)
    wait_for(lambda: check(sick) == 0, 5, f"{sick}'s check to pass again")


def _status(ip: str, path: str) -> int:
    conn = http.client.HTTPConnection(ip, PORT, timeout=2)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_warmup_answers_503_until_it_is_warm_but_live_at_once(pod: Pod, demo_image: str
                                                              ) -> None:
    """WARMUP=N: the server listens at once and answers 503 on every path but /live for N
    seconds, then 200: the warm-up image of the readiness tests (a service loading its code
    or filling a cache). (This checkout's server: lbctl/demo:latest is shared.)"""
    name = pod.replica("warm", demo_image, WARMUP="3")
    pod.wait_listening(name)
    started = time.monotonic()
    seen = {path: _status(pod.ip, path) for path in ("/", "/ready", "/live", "/x")}
    assert time.monotonic() - started < 3, "the checks must run within the warm-up"
    assert seen == {"/": 503, "/ready": 503, "/live": 200, "/x": 503}, seen
    wait_for(lambda: _status(pod.ip, "/ready") == 200, 10, "the end of the warm-up")
    assert time.monotonic() - started >= 2.5  # not before its WARMUP (3 s, whole seconds)
    assert {path: _status(pod.ip, path) for path in ("/", "/live")} == {"/": 200, "/live": 200}


def test_sighup_fails_the_ready_path_and_again_passes_it(pod: Pod, demo_image: str) -> None:
    """SIGHUP marks a replica unready: its /ready answers 503 while every other path keeps
    answering (a replica that lost its database still runs); SIGHUP again: ready."""
    name = pod.replica("hup", demo_image)
    pod.wait_listening(name)
    assert _status(pod.ip, "/ready") == 200
    docker("kill", "-s", "HUP", name)
    wait_for(lambda: _status(pod.ip, "/ready") == 503, 5, "/ready to fail")
    assert _status(pod.ip, "/") == 200 and _status(pod.ip, "/live") == 200
    assert "unready (SIGHUP)" in logs(name)
    docker("kill", "-s", "HUP", name)
    wait_for(lambda: _status(pod.ip, "/ready") == 200, 5, "/ready to pass again")


def test_idle_close_lets_a_keepalive_client_move_on_without_an_error(pod: Pod,
                                                                     demo_image: str) -> None:
    """IDLE_CLOSE_MS: a draining server answers the requests of its keep-alive connections
    with `Connection: close` and closes one only once it has been idle that long, so wrk
    (which does not retry a request on a closed connection) moves to the other replica with
    no error when one stops under it."""
    names = [pod.replica(r, demo_image, IDLE_CLOSE_MS="200") for r in ("a", "b")]
    for name in names:
        pod.wait_listening(name)
    load = subprocess.Popen(["wrk", "-t1", "-c16", "-d4s", f"http://{pod.ip}:{PORT}/"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    docker("stop", "-t", "5", names[0])
    out, _ = load.communicate(timeout=30)
    print(f"\nkeep-alive wrk while one of 2 replicas stops: {out.strip().splitlines()[-3:]}")
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    assert re.search(r"[0-9]+ requests in", out), out


def test_file_and_fetch_show_a_volume_and_a_peer_by_name(tmp_path: Path, demo_image: str
                                                        ) -> None:
    """FILE serves what the container sees at a path (a bind mount here); FETCH relays a GET
    of another container reached by its name on a user network."""
    prefix = f"lbctl-test-img-{uuid.uuid4().hex[:8]}"
    net, peer, me = f"{prefix}-net", f"{prefix}-peer", f"{prefix}-me"
    data = tmp_path / "x"
    data.write_text("from the volume\n")
    docker("network", "create", "--label", "lbctl.test=1", net)
    try:
        docker("run", "-d", "--name", peer, "--label", "lbctl.test=1", "--network", net,
               "-e", "LBCTL_REPLICA=the-peer", demo_image)
        docker("run", "-d", "--name", me, "--label", "lbctl.test=1", "--network", net,
               "-v", f"{data.parent}:/data:ro", "-e", "FILE=/data/x",
               "-e", f"FETCH={peer}:8080", "-e", "LBCTL_REPLICA=me", demo_image)
        ip = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}',
                    me)
        wait_for(lambda: "listening on" in logs(me) and "listening on" in logs(peer), 10,
                 "both to listen")

        def get(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection(ip, PORT, timeout=5)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                return resp.status, resp.read().decode()
            finally:
                conn.close()

        assert get("/file") == (200, "from the volume\n")
        assert get("/fetch") == (200, "the-peer\n")
        assert get("/") == (200, "me\n")  # every other path: the name, as before
        docker("rm", "-f", peer)
        assert get("/fetch")[0] == 502
        data.unlink()
        assert get("/file")[0] == 404
    finally:
        subprocess.run(["docker", "rm", "-f", peer, me], capture_output=True, check=False)
        subprocess.run(["docker", "network", "rm", net], capture_output=True, check=False)


# --- socket activation: LISTEN_FDS and the shim (images/activate) -------------------------


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images/activate/activate.c of this checkout, compiled as build-images.sh does."""
    out = tmp_path_factory.mktemp("shim") / "activate"
    src = Path(__file__).resolve().parents[2] / "images" / "activate" / "activate.c"
    subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    return out


def _hand_over(directory: Path, socks: list[socket.socket], names: str) -> threading.Thread:
    """Serve `socks` once on directory/activation.sock, as lbctl's creator does, and close our
    copies: the container's process is then their only owner."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(directory / "activation.sock"))
    srv.listen(1)
    srv.settimeout(30)

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                socket.send_fds(conn, [names.encode()], [s.fileno() for s in socks])
        for s in socks:
            s.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _activated(name: str, image: str, shim: Path, directory: Path, *env: str) -> str:
    opts = ["-v", f"{directory}:/run/lbctl:ro", "-v", f"{shim}:/.lbctl/activate:ro",
            "--entrypoint", "/.lbctl/activate"]
    for e in env:
        opts += ["-e", e]
    docker("run", "-d", "--name", name, "--label", "lbctl.test=1", *opts, image, "/httpd")
    return name


def _refused(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(1)
        try:
            if kind == socket.SOCK_STREAM:
                s.connect(("127.0.0.1", port))
            else:
                s.sendto(b"x", ("127.0.0.1", port))
                s.recvfrom(64)
        except (ConnectionRefusedError, TimeoutError):
            return True
    return False


def test_listen_fds_serves_sockets_made_in_the_hosts_namespace(
        tmp_path: Path, demo_image: str, shim: Path) -> None:
    """Given by the shim a TCP listener, a UDP socket and one more TCP listener, all bound on
    the host's loopback, the demo (in a network namespace of its own) serves all three on the
    host (an activated app published on IPv4 and IPv6 is handed two listeners) and binds
    nothing in its own namespace. SIGUSR2 closes the inherited listener for good."""
    tcp, udp, extra = (socket.socket(socket.AF_INET, k)
                       for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_STREAM))
    tcp.bind(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    udp.bind(("127.0.0.1", port))
    extra.bind(("127.0.0.1", 0))
    extra_port = extra.getsockname()[1]
    for s in (tcp, extra):
        s.listen(16)
    handed = _hand_over(tmp_path, [tcp, udp, extra], "http:dns:spare")
    name = _activated(f"lbctl-test-img-{uuid.uuid4().hex[:8]}-act", demo_image, shim, tmp_path,
                      "LBCTL_REPLICA=act", "UDP_ECHO=1")
    try:
        handed.join(30)
        wait_for(lambda: "listening on inherited" in logs(name), 10, f"{name} to listen")
        assert (f"act listening on inherited sockets (LISTEN_FDS=3): 127.0.0.1 port {port}/tcp, "
                f"127.0.0.1 port {port}/udp") in logs(name)
        assert f"127.0.0.1 port {port}/udp and 1 more" in logs(name)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"act\n"
        conn.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            u.sendto(b"hi", ("127.0.0.1", port))
            assert u.recvfrom(64)[0] == b"act hi"
        extra_conn = http.client.HTTPConnection("127.0.0.1", extra_port, timeout=2)
        extra_conn.request("GET", "/")
        assert extra_conn.getresponse().read() == b"act\n"  # the third is served too
        extra_conn.close()
        # nothing bound in its own namespace: PORT's default 8080 is free there
        assert in_netns(name, "import socket\ntry:\n"
                              "    socket.create_connection(('127.0.0.1', 8080), 1)\n"
                              "except OSError as e:\n    print(type(e).__name__)\n"
                        ) == "ConnectionRefusedError"
        docker("kill", "-s", "USR2", name)
        wait_for(lambda: _refused(port), 5, "the inherited listener to close")
        docker("kill", "-s", "USR2", name)
        wait_for(lambda: "an inherited listener cannot be opened again" in logs(name), 5,
                 "the second SIGUSR2")
        assert _refused(port)
    finally:
        docker("rm", "-f", name, check=False)


def test_listen_fds_meant_for_another_process_is_ignored(pod: Pod, demo_image: str) -> None:
    """LISTEN_PID names the process the sockets are for (the demo is PID 1 here): another
    PID's variables, left in the environment, are not its own, and it binds as usual."""
    name = pod.replica("lp", demo_image, LISTEN_FDS="1", LISTEN_PID="2")
    pod.wait_listening(name)
    assert "listening on 0.0.0.0 port 8080" in logs(name)
    assert pod.get() == (200, "lp", "lp\n")


def test_the_shim_gives_up_when_nobody_hands_it_listeners(
        tmp_path: Path, demo_image: str, shim: Path) -> None:
    name = f"lbctl-test-img-{uuid.uuid4().hex[:8]}-noact"
    try:
        r = subprocess.run(
            ["docker", "run", "--name", name, "--label", "lbctl.test=1",
             "-v", f"{tmp_path}:/run/lbctl:ro", "-v", f"{shim}:/.lbctl/activate:ro",
             "--entrypoint", "/.lbctl/activate", "-e", "LBCTL_ACTIVATION_TIMEOUT=1",
             demo_image, "/httpd"],
            capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 111, r
        assert "nothing serves listeners on /run/lbctl/activation.sock" in r.stderr
    finally:
        docker("rm", "-f", name, check=False)


def test_log_requests_writes_one_stdout_line_per_request(pod: Pod, demo_image: str) -> None:
    """LOG_REQUESTS=1: each request's line goes to stdout before its answer, control bytes
    replaced (what `lbctl logs` tests read); the start and stop lines stay on stderr, and
    without it nothing per request is written."""
    quiet = pod.replica("q", demo_image)
    loud = pod.replica("l", demo_image, LOG_REQUESTS="1")
    for name in (quiet, loud):
        pod.wait_listening(name)
    docker("stop", "-t", "5", quiet)  # the shared port is the loud one's alone now

    def streams(name: str) -> tuple[list[str], str]:
        out = subprocess.run(["docker", "logs", name], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.splitlines(), out.stderr

    def stdout(name: str) -> list[str]:
        return streams(name)[0]

    for n in (1, 2, 3):
        assert pod.get() == (200, "l", "l\n")
        wait_for(lambda: len(stdout(loud)) >= n, 5, f"request line {n}")  # noqa: B023
        assert stdout(loud) == ["l GET / HTTP/1.1"] * n
    raw = socket.create_connection((pod.ip, PORT), timeout=2)
    try:
        raw.sendall(b"GET /a\x1b[2Jb HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        raw.close()
    wait_for(lambda: len(stdout(loud)) == 4, 5, "the fourth request line")
    assert stdout(loud)[-1] == "l GET /a?[2Jb HTTP/1.1"
    assert "listening on" in streams(loud)[1] and "GET" not in streams(loud)[1]
    assert stdout(quiet) == [] and "listening on" in streams(quiet)[1]
