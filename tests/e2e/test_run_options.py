"""A real service's docker run options, end to end in both modes: a named volume, a
bind-mounted config file, a user network shared with a second container it reaches by name,
a memory limit, a non-root user and a health check. Real daemon, real engine, real traffic.

The demo server shows what a replica sees: GET /file serves $FILE (here a file on the named
volume) and GET /fetch relays a GET of $FETCH (the "database" container, by its name on the
user network); SIGUSR1 fails one replica's health check.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.engine import app_containers, docker
from harness.host import free_port

pytestmark = pytest.mark.engine



def request(port: int, path: str) -> tuple[int, str, str]:
    """(status, replica, body) of one GET on a new connection to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Replica") or "", resp.read().decode()
    finally:
        conn.close()


@dataclass
class Service:
    """What the app needs around it: a network, a data volume with a file, a config file
    and a "database" container on the network."""

    network: str
    volume: str
    conf: Path
    db: str
    image: str  # the demo server of this checkout (GET /file, GET /fetch, SIGUSR1)


@pytest.fixture
def service(daemon: Daemon, app_name: str, tmp_path: Path, demo_image: str
            ) -> Iterator[Service]:
    s = Service(f"{app_name}-net", f"{app_name}-data", tmp_path / "app.conf", f"{app_name}-db",
                demo_image)
    docker("network", "create", s.network)
    docker("volume", "create", s.volume)
    try:
        mountpoint = Path(docker("volume", "inspect", "-f", "{{.Mountpoint}}", s.volume).strip())
        (mountpoint / "x").write_text("on the volume\n")
        s.conf.write_text("setting = 1\n")
        docker("run", "-d", "--name", s.db, "--network", s.network,
               "-e", "LBCTL_REPLICA=the-db", s.image)
        yield s
    finally:
        # The daemon still runs (its fixture ends after this one): the app goes first, or it
        # would re-create what is removed here and keep the network busy.
        with contextlib.suppress(Exception):
            daemon.api("DELETE", f"/apps/{app_name}")
        docker("rm", "-f", s.db, check=False)
        for c in app_containers(app_name):  # a failed test's leftovers, before the network
            docker("rm", "-f", c["Id"], check=False)
        docker("network", "rm", s.network, check=False)
        docker("volume", "rm", s.volume, check=False)


def run_args(app: str, port: int, mode: str, s: Service) -> list[str]:
    return [
        "run", app, "--image", s.image, "-p", f"127.0.0.1:{port}:8080", "--replicas", "2",
        "--mode", mode, "-v", f"{s.volume}:/data:ro", "-v", f"{s.conf}:/etc/app.conf:ro",
        "--network", s.network, "-m", "64m", "-u", "1000:1000",
        "--health-cmd", '["/httpd", "--check"]', "--health-interval", "1s",
        "--health-timeout", "1s", "--health-retries", "1", "--read-only",
        "-l", "team=web", "--add-host", "legacy-db:10.255.0.1", "--dns", "10.255.0.53",
        "--stop-timeout", "3", "-e", "FILE=/data/x", "-e", f"FETCH={s.db}:8080",
    ]


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_real_service_options_in_both_modes(
    daemon: Daemon, app_name: str, service: Service, mode: str
) -> None:
    port = free_port()
    daemon.ok(*run_args(app_name, port, mode, service), timeout=120)
    replicas = {f"{app_name}-1", f"{app_name}-2"}

    # The DNAT targets the address on the user network: route_localnet on its bridge only.
    bridge = "br-" + docker("network", "inspect", "-f", "{{.Id}}", service.network).strip()[:12]
    assert _localnet(bridge) == "1"

    # Every replica sees the volume and reaches the database by its name.
    files: Counter[str] = Counter()
    for _ in range(40):
        status, who, body = request(port, "/file")
        assert (status, body) == (200, "on the volume\n"), (who, status, body)
        files[who] += 1
    assert set(files) == replicas, files
    for _ in range(10):
        assert request(port, "/fetch")[::2] == (200, "the-db\n")

    # docker inspect shows every option where docker run would have put it.
    cs = {c["Name"].lstrip("/"): c for c in app_containers(app_name)}
    sandbox = cs.get(f"{app_name}-sandbox")
    for name in replicas:
        c = cs[name]
        host, cfg = c["HostConfig"], c["Config"]
        assert host["Memory"] == 64 << 20 and cfg["User"] == "1000:1000"
        assert host["Binds"] == [f"{service.volume}:/data:ro",
                                 f"{service.conf}:/etc/app.conf:ro"]
        assert host["ReadonlyRootfs"] is True and cfg["StopTimeout"] == 3
        assert cfg["Healthcheck"]["Test"] == ["CMD", "/httpd", "--check"]
        assert cfg["Labels"]["team"] == "web"
        assert c["State"]["Health"]["Status"] == "healthy"
        if mode == "iptables":
            # on the user network, and known there by the app's name
            assert app_name in c["NetworkSettings"]["Networks"][service.network]["Aliases"]
            assert host["ExtraHosts"] == ["legacy-db:10.255.0.1"]
            assert host["Dns"] == ["10.255.0.53"]
        else:
            # Namespace options live on the sandbox the replicas share.
            assert sandbox is not None
            assert host["NetworkMode"] == f"container:{sandbox['Id']}"
            assert not host.get("ExtraHosts") and not host.get("Dns")
    if mode == "ebpf":
        assert sandbox is not None
        assert set(sandbox["NetworkSettings"]["Networks"]) == {service.network}
        assert app_name in sandbox["NetworkSettings"]["Networks"][service.network]["Aliases"]
        assert sandbox["HostConfig"]["ExtraHosts"] == ["legacy-db:10.255.0.1"]
        assert sandbox["HostConfig"]["Dns"] == ["10.255.0.53"]
        assert "Memory" not in sandbox["HostConfig"] or not sandbox["HostConfig"]["Memory"]
    else:
        assert sandbox is None

    # An unhealthy health check takes the replica out of the data plane.
    sick = f"{app_name}-1"
    docker("kill", "-s", "USR1", sick)
    daemon.wait(lambda: _state(daemon, app_name, sick) == "unhealthy", 15, f"{sick} unhealthy")
    seen = Counter(request(port, "/")[1] for _ in range(60))
    assert seen == Counter({f"{app_name}-2": 60}), seen
    docker("kill", "-s", "USR1", sick)  # well again: back in service
    daemon.wait(lambda: _state(daemon, app_name, sick) == "ready", 15, f"{sick} ready again")
    assert set(Counter(request(port, "/")[1] for _ in range(60))) == replicas

    # Changing --memory rolls every replica to the new value, like a new image.
    out = daemon.ok("update", app_name, "--memory", "96m", timeout=180)
    assert "revision 2 is live" in out, out
    st = daemon.status(app_name)
    assert st["revision"] == 2 and st["ready"] == 2
    new = [c for c in app_containers(app_name) if c["Config"]["Labels"]["lbctl.role"] ==
           "replica" and c["State"]["Running"]]
    assert len(new) == 2 and all(c["HostConfig"]["Memory"] == 96 << 20 for c in new), [
        (c["Name"], c["HostConfig"]["Memory"]) for c in new]
    assert all(c["Config"]["Labels"]["lbctl.revision"] == "2" for c in new)
    assert request(port, "/fetch")[::2] == (200, "the-db\n")

    daemon.ok("rm", app_name)
    assert _localnet(bridge) == "0"  # put back once no backend needs it
    # The user's network and data volume are theirs: lbctl removes neither.
    assert docker("volume", "inspect", "-f", "{{.Name}}", service.volume).strip()
    assert docker("network", "inspect", "-f", "{{.Name}}", service.network).strip()


def _localnet(bridge: str) -> str:
    return Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").read_text().strip()


def _state(daemon: Daemon, app: str, replica: str) -> str | None:
    for r in daemon.status(app)["replicas"]:
        if r["name"] == replica:
            return str(r["state"])
    return None


def test_ebpf_refuses_to_change_namespace_options_in_place(
    daemon: Daemon, app_name: str, service: Service
) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", service.image, "-p", f"127.0.0.1:{port}:8080",
              "--mode", "ebpf", "--network", service.network, timeout=90)
    state = (daemon.state_dir / "state.json").read_bytes()
    r = daemon.cli("update", app_name, "--dns", "10.0.0.1")
    assert r.returncode == 2 and "sandbox" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (daemon.state_dir / "state.json").read_bytes() == state


def test_bad_options_change_nothing(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    base = ["run", app_name, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:8080"]
    for extra in (["--privileged"], ["--memory", "lots"], ["--network", f"{app_name}-nonet"],
                  ["-v", "data:relative"], ["--label", "lbctl.role=x"], ["--cpus", "1024"]):
        r = daemon.cli(*base, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert daemon.api("GET", "/apps")["apps"] == []
    assert app_containers(app_name) == []
    # A network that exists but is not a bridge cannot carry the app's address.
    r = daemon.cli(*base, "--network", "host")
    assert r.returncode == 2 and "host" in r.stderr
    assert daemon.api("GET", "/apps")["apps"] == []


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
@pytest.mark.parametrize("engine", ["podman"])
def test_options_on_podman(
    daemon: Daemon, app_name: str, tmp_path: Path, demo_image: str, engine: str, mode: str
) -> None:
    """The same options through Podman's Docker-compatible API: the user network (joined by
    the replicas or the sandbox, and carrying the DNAT target), a named volume, a bind mount,
    a memory limit and a user. Podman 4.3 here runs no health checks (they need systemd
    timers) and resolves no container names (CNI without the dnsname plugin), so neither is
    asked for: the README says so."""
    cli = "podman"
    if subprocess.run([cli, "image", "exists", demo_image], check=False).returncode:
        subprocess.run(f"docker save {demo_image} | podman load -q", shell=True, check=True,
                       capture_output=True)
    net, vol = f"{app_name}-net", f"{app_name}-data"
    conf = tmp_path / "app.conf"
    conf.write_text("setting = 1\n")
    docker("network", "create", net, cli=cli)
    docker("volume", "create", vol, cli=cli)
    try:
        mountpoint = Path(docker("volume", "inspect", "-f", "{{.Mountpoint}}", vol,
                                 cli=cli).strip())
        (mountpoint / "x").write_text("on a podman volume\n")
        port = free_port()
        daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
                  "--replicas", "2", "--mode", mode, "--network", net, "-v", f"{vol}:/data:ro",
                  "-v", f"{conf}:/etc/app.conf:ro", "-m", "64m", "-u", "1000:1000",
                  "-e", "FILE=/data/x", timeout=120)
        seen: Counter[str] = Counter()
        for _ in range(40):
            status, who, body = request(port, "/file")
            assert (status, body) == (200, "on a podman volume\n"), (who, status, body)
            seen[who] += 1
        assert set(seen) == {f"{app_name}-1", f"{app_name}-2"}, seen
        cs = {c["Name"].lstrip("/"): c for c in app_containers(app_name, cli=cli)}
        holder = cs[f"{app_name}-sandbox"] if mode == "ebpf" else cs[f"{app_name}-1"]
        assert net in holder["NetworkSettings"]["Networks"]
        for i in (1, 2):
            c = cs[f"{app_name}-{i}"]
            assert c["HostConfig"]["Memory"] == 64 << 20 and c["Config"]["User"] == "1000:1000"
        daemon.ok("rm", app_name)
    finally:
        with contextlib.suppress(Exception):
            daemon.api("DELETE", f"/apps/{app_name}")
        for c in app_containers(app_name, cli=cli):
            docker("rm", "-f", c["Id"], check=False, cli=cli)
        docker("network", "rm", net, check=False, cli=cli)
        docker("volume", "rm", vol, check=False, cli=cli)


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_shm_size_and_group_add_reach_the_replicas_process(
    daemon: Daemon, app_name: str, demo_image: str, engine: str, mode: str
) -> None:
    """--shm-size 96m and --group-add 1234, on each engine and in each mode: the engine is
    sent them (inspect), the replica's /dev/shm is a 96 MiB tmpfs (statfs of it in the
    replica's mount namespace, as `df` inside would show), and its process has group 1234
    (its own /proc/self/status, served by the demo server through lbctl's port)."""
    cli = "podman" if engine == "podman" else "docker"
    if cli == "podman" and subprocess.run([cli, "image", "exists", demo_image],
                                          check=False).returncode:
        subprocess.run(f"docker save {demo_image} | podman load -q", shell=True, check=True,
                       capture_output=True)
    port = free_port()
    try:
        daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
                  "--mode", mode, "--shm-size", "96m", "--group-add", "1234",
                  "-e", "FILE=/proc/self/status", timeout=120)
        [c] = [c for c in app_containers(app_name, cli=cli) if c["Name"].lstrip("/") ==
               f"{app_name}-1"]
        assert c["HostConfig"]["ShmSize"] == 96 << 20
        assert c["HostConfig"]["GroupAdd"] == ["1234"]
        shm = os.statvfs(f"/proc/{c['State']['Pid']}/root/dev/shm")
        assert shm.f_blocks * shm.f_frsize == 96 << 20
        status, _, body = request(port, "/file")
        groups = [line.split()[1:] for line in body.splitlines() if line.startswith("Groups:")]
        assert status == 200 and groups and "1234" in groups[0], body
        daemon.ok("rm", app_name)
    finally:
        with contextlib.suppress(Exception):
            daemon.api("DELETE", f"/apps/{app_name}")
        for leftover in app_containers(app_name, cli=cli):
            docker("rm", "-f", leftover["Id"], check=False, cli=cli)
