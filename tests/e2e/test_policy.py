"""Who may ask for what, and whose the host port is, with the real daemon, engine, kernel and
traffic.

- A member of the `lbctl` group (a throwaway user, removed afterwards) asks for a bind mount
  of `/` and for port 22: 403 with one line naming the rule, `lbctl` exits 2, and the rules,
  the containers and the state file are byte for byte what they were. Root asks for the same
  and gets it: its replicas read the host's files, and port 22 answers.
- While an app exists its host port is lbctl's: no other process can bind it (plain, every
  address, SO_REUSEADDR, SO_REUSEPORT), while clients on 127.0.0.1, on the host's own
  non-loopback address and from another host (a network namespace behind a veth pair) are
  served by the replicas, in both modes; after `lbctl rm` the port is free.
- A process that took the port while the daemon was down is named in `lbctl status` and
  `lbctl doctor`, gets none of the traffic, and the port is taken back once it lets go.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import PREFIX
from harness.daemon import Daemon
from harness.engine import app_containers, docker
from harness.host import free_port, iptables_save
from harness.traffic import get, spread
from tests.e2e.members import Member

pytestmark = pytest.mark.engine

def lbctl_containers() -> str:
    """Every lbctl container on the engine (any daemon's), as docker lists them."""
    return "\n".join(sorted(docker("ps", "-a", "--no-trunc", "--filter", "label=lbctl.app",
                                   "--format", "{{.ID}} {{.Names}} {{.State}}").splitlines()))


def snapshot(d: Daemon) -> tuple[str, str, bytes]:
    state = d.state_dir / "state.json"
    return iptables_save(), lbctl_containers(), state.read_bytes() if state.exists() else b""


def test_a_member_is_refused_root_mounts_and_port_22_and_root_is_not(
    daemon: Daemon, policy_daemon: Path, member: Member, app_name: str, demo_image: str,
) -> None:
    # An app of root's, so that there are rules and containers that must stay as they are.
    daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{free_port()}:8080",
              "--mode", "iptables", timeout=90)
    port, theirs = free_port(), f"{app_name}m"
    run = ["run", theirs, "--image", demo_image, "--replicas", "1", "--mode", "iptables"]
    asks = {
        "bind mount of /": ([*run, "-p", f"127.0.0.1:{port}:8080", "-v", "/:/host"],
                            f"policy: bind mount of / is not allowed (volume /:/host) "
                            f"(allowed_bind_sources in {policy_daemon})"),
        "port 22": ([*run, "-p", "127.0.0.1:22:8080"],
                    f"policy: host port 22 is below 1024 (allowed_ports in {policy_daemon})"),
    }
    before = snapshot(daemon)
    assert app_name in before[1]
    for what, (argv, line) in asks.items():
        r = member.lbctl(daemon.socket, *argv)
        print(f"member asks for {what}: exit {r.returncode}, {r.stderr.strip()!r}")
        assert r.returncode == 2, r
        assert r.stderr == f"lbctl: {line}\n" and r.stdout == "", r
        body = {"name": theirs, "image": demo_image, "publish": argv[argv.index("-p") + 1],
                **({"volume": ["/:/host"]} if "-v" in argv else {})}
        assert member.request(daemon.socket, "POST", "/apps", body) == (403, {"error": line})
    assert snapshot(daemon) == before, "a refused request changed something"
    log = daemon.log.read_text()
    assert "refused: policy: host port 22 is below 1024" in log
    assert f"uid={member.uid}" in log

    # Root asks for the same: a read-only bind mount of / that the replica reads the host's
    # files through, and port 22 (nothing on this host serves it; if something did, root
    # would get the port's own refusal, a 400, and never the policy's 403).
    daemon.ok("run", theirs, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
              "-v", "/:/host:ro", "-e", "FILE=/host/etc/hostname", "--mode", "iptables")
    mounts = [c["Mounts"] for c in app_containers(theirs)]
    assert mounts and all({"Type": "bind", "Source": "/", "Destination": "/host", "RW": False}
                          .items() <= m[0].items() for m in mounts), mounts
    assert _http(port, "/file") == Path("/etc/hostname").read_text()
    daemon.ok("rm", theirs)

    ssh = f"{app_name}s"
    r = daemon.cli("run", ssh, "--image", demo_image, "-p", "127.0.0.1:22:8080",
                   "--mode", "iptables")
    print(f"root asks for port 22: exit {r.returncode} {r.stderr.strip()!r}")
    if r.returncode == 0:
        assert not _bindable("127.0.0.1", 22), "root's app does not hold port 22"
        assert get(22) == f"{ssh}-1"
        daemon.ok("rm", ssh)
        assert _bindable("127.0.0.1", 22)
    else:  # a host with sshd: the policy let root through, the port's holder did not
        assert r.returncode == 2 and "port 127.0.0.1:22/tcp is already in use" in r.stderr, r
        assert "policy" not in r.stderr


def _http(port: int, path: str) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return resp.read().decode()
    finally:
        conn.close()


# ---- the host port is lbctl's while the app exists ------------------------------------------


def _bindable(host: str, port: int, opt: int | None = None, family: int = socket.AF_INET,
              ) -> bool:
    """Whether another process can bind (and listen on) host:port right now."""
    code = ("import socket, sys\n"
            f"s = socket.socket({int(family)}, socket.SOCK_STREAM)\n"
            + (f"s.setsockopt(socket.SOL_SOCKET, {opt}, 1)\n" if opt is not None else "")
            + ("s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
               if family == socket.AF_INET6 else "")
            + f"s.bind(({host!r}, {port}))\ns.listen()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10,
                       check=False)
    assert r.returncode == 0 or "Address already in use" in r.stderr, r.stderr
    return r.returncode == 0


def _attempts(host: str, port: int) -> dict[str, bool]:
    return {
        f"{host}": _bindable(host, port),
        "0.0.0.0": _bindable("0.0.0.0", port),
        "dual-stack [::]": _bindable("::", port, family=socket.AF_INET6),
        "SO_REUSEADDR": _bindable(host, port, socket.SO_REUSEADDR),
        "SO_REUSEPORT": _bindable(host, port, socket.SO_REUSEPORT),
    }


@dataclass
class RemoteHost:
    """A network namespace behind a veth pair: a client whose packets arrive from outside
    the host (nat PREROUTING), to the host's address on the link."""

    ns: str
    host_ip: str
    peer_ip: str

    def get(self, port: int) -> str:
        code = ("import http.client\n"
                f"c = http.client.HTTPConnection({self.host_ip!r}, {port}, timeout=3)\n"
                "c.request('GET', '/', headers={'Connection': 'close'})\n"
                "r = c.getresponse()\nprint(r.status, r.read().decode().strip())\n")
        r = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=15, check=False)
        status, _, body = r.stdout.strip().partition(" ")
        assert r.returncode == 0 and status == "200", (r.stdout, r.stderr)
        return body


@pytest.fixture
def remote_host() -> Iterator[RemoteHost]:
    n = os.getpid() % 60
    ns, veth = f"lbctl-pol-{PREFIX}", f"lbp{PREFIX}"[:15]
    host_ip, peer_ip = f"198.18.{n}.1", f"198.18.{n}.2"  # RFC 2544 benchmarking space

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
    ip("netns", "add", ns)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", ns, "addr", "add", f"{peer_ip}/30", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", host_ip)
        yield RemoteHost(ns, host_ip, peer_ip)
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_the_host_port_stays_lbctls_and_traffic_reaches_the_replicas(
    daemon: Daemon, app_name: str, mode: str, remote_host: RemoteHost,
) -> None:
    """Two apps, one on 127.0.0.1 and one on every address: the daemon's placeholder holds
    each port, and every client still reaches the replicas through lbctl's DNAT."""
    local, wild = f"{app_name}l", f"{app_name}w"
    lport, wport = free_port(), free_port()
    for name, publish in ((local, f"127.0.0.1:{lport}:8080"), (wild, f"0.0.0.0:{wport}:8080")):
        daemon.ok("run", name, "--image", "lbctl/demo:latest", "-p", publish, "--replicas", "2",
                  "--mode", mode, timeout=90)
    replicas = {name: {f"{name}-1", f"{name}-2"} for name in (local, wild)}

    taken = {"127.0.0.1": _attempts("127.0.0.1", lport),
             "0.0.0.0": _attempts(remote_host.host_ip, wport)}
    print(f"\n{mode}: binds by another process while the apps exist: {taken}")
    assert not any(v for t in taken.values() for v in t.values()), taken
    assert _bindable("127.0.0.2", lport), "only the published address is held"

    # Served with the ports held: 127.0.0.1, the host's own address on the veth link, and
    # a client behind it (PREROUTING, forwarded to the replicas).
    seen = {"127.0.0.1": set(spread(lport, 20)),
            "0.0.0.0 from 127.0.0.1": set(spread(wport, 20)),
            f"0.0.0.0 from the host to {remote_host.host_ip}": {
                get(wport, host=remote_host.host_ip) for _ in range(20)},
            f"0.0.0.0 from {remote_host.peer_ip}": {remote_host.get(wport) for _ in range(20)}}
    print(f"{mode}: replicas that answered: {seen}")
    assert seen["127.0.0.1"] == replicas[local]
    for where in list(seen)[1:]:
        assert seen[where] == replicas[wild], (where, seen)
    for name in (local, wild):
        assert daemon.status(name)["port_conflict"] is None

    daemon.ok("rm", local)
    daemon.ok("rm", wild)
    assert _bindable("127.0.0.1", lport) and _bindable("0.0.0.0", wport)


def test_a_port_taken_while_the_daemon_was_down_is_reported_and_taken_back(
    daemon: Daemon, app_name: str,
) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "1", "--mode", "iptables", timeout=90)
    daemon.kill(signal.SIGTERM)
    assert _bindable("127.0.0.1", port), "a stopped daemon holds nothing"
    # A server that would answer "squatter" on the app's port, started while lbctl is down.
    squatter = subprocess.Popen(
        [sys.executable, "-c",
         "import socket\ns = socket.socket()\n"
         f"s.bind(('127.0.0.1', {port}))\ns.listen()\nprint('ready', flush=True)\n"
         "while True:\n    c, _ = s.accept()\n    c.recv(4096)\n"
         "    c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nsquatter\\n')\n    c.close()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "ready\n"
        daemon.start()
        conflict = daemon.status(app_name)["port_conflict"]
        comm = Path(f"/proc/{squatter.pid}/comm").read_text().strip()
        assert conflict == (f"port 127.0.0.1:{port}/tcp is also bound by pid {squatter.pid} "
                            f"({comm}), which gets none of its traffic (lbctl's rule sends "
                            "it to this app)"), conflict
        table = daemon.ok("status", app_name)
        doctor = subprocess.run([sys.executable, "-m", "lbctl", "doctor"], env=daemon.env,
                                capture_output=True, text=True, timeout=120, check=False)
        print(f"\n{table}\n{doctor.stdout}")
        assert f"  warning: port 127.0.0.1:{port}/tcp is also bound by pid" in table
        line = next(ln for ln in doctor.stdout.splitlines() if app_name in ln)
        assert line.startswith(f"TAKEN   host port of {app_name}") and str(squatter.pid) in line
        assert "fix: stop that process" in doctor.stdout and doctor.returncode == 1
        assert {get(port) for _ in range(10)} == {f"{app_name}-1"}, "the squatter got traffic"
    finally:
        squatter.kill()
        squatter.wait()
    # The discovery loop (every 5 s) takes the port back.
    deadline = time.monotonic() + 15
    while daemon.status(app_name)["port_conflict"] is not None:
        assert time.monotonic() < deadline, "the port was not taken back"
        time.sleep(0.2)
    assert not _bindable("127.0.0.1", port)
    assert "host port taken back" in daemon.log.read_text()
    doctor = subprocess.run([sys.executable, "-m", "lbctl", "doctor"], env=daemon.env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert "every host port held" in doctor.stdout, doctor.stdout
    daemon.ok("rm", app_name)
    assert _bindable("127.0.0.1", port)
