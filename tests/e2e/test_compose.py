"""lbctl beside docker-compose: containers that `docker-compose up --scale` starts with the
label lbctl.app=NAME are adopted as backends of NAME (iptables mode) and never removed by
lbctl. Real docker-compose (Debian's 1.29), real daemon, real rules, real HTTP."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.engine import app_containers, docker
from harness.host import free_port
from harness.traffic import spread

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"


class Compose:
    def __init__(self, tmp: Path, project: str, text: str) -> None:
        self.file = tmp / "docker-compose.yml"
        self.file.write_text(text)
        self.project = project

    def __call__(self, *args: str) -> str:
        r = subprocess.run(
            ["docker-compose", "-p", self.project, "-f", str(self.file), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stderr}"
        return r.stdout

    def containers(self) -> list[dict[str, object]]:
        ids = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}")
        return json.loads(docker("inspect", *ids.split())) if ids.split() else []


@contextlib.contextmanager
def compose_project(tmp: Path, project: str, text: str) -> Iterator[Compose]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: run `make setup`")
    c = Compose(tmp, project, text)
    try:
        yield c
    finally:
        # By hand first: `down` gives up on a service whose network_mode container is gone.
        for cid in docker("ps", "-aq", "--filter",
                          f"label=com.docker.compose.project={project}").split():
            docker("rm", "-f", cid, check=False)
        subprocess.run(
            ["docker-compose", "-p", project, "-f", str(c.file), "down", "-v", "--timeout", "2"],
            capture_output=True, timeout=120, check=False,
        )
        # ... and refuses the whole file then, so the project's network is left to us too.
        label = f"label=com.docker.compose.project={project}"
        for kind in ("network", "volume"):
            for name in docker(kind, "ls", "-q", "--filter", label).split():
                docker(kind, "rm", name, check=False)


def _localnet(bridge: str) -> str:
    return Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").read_text().strip()


def _bridge_of(container: dict[str, object]) -> str:
    nets = container["NetworkSettings"]["Networks"]  # type: ignore[index]
    (net_id,) = [n["NetworkID"] for n in nets.values()]
    return f"br-{net_id[:12]}"


def test_compose_replicas_are_adopted_and_survive_rm(
    daemon: Daemon, app_name: str, tmp_path: Path
) -> None:
    port = free_port()
    # The app owns the host port; it creates no replica of its own.
    daemon.ok("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "0", "--mode", "iptables", timeout=30)
    text = (
        "services:\n"
        "  web:\n"
        f"    image: {IMAGE}\n"
        f"    labels: {{lbctl.app: {app_name}}}\n"
    )
    with compose_project(tmp_path, app_name.replace("-", ""), text) as compose:
        compose("up", "-d", "--scale", "web=3")
        cs = compose.containers()
        assert len(cs) == 3
        hostnames = {str(c["Config"]["Hostname"]) for c in cs}  # type: ignore[index]
        bridge = _bridge_of(cs[0])
        daemon.wait(lambda: daemon.status(app_name)["ready"] == 3, 30, "3 adopted replicas")
        st = daemon.status(app_name)
        assert all(r["adopted"] for r in st["replicas"]), st
        # The compose project's own bridge, not docker0, got route_localnet.
        assert _localnet(bridge) == "1"

        seen = spread(port, 300)
        print(f"3 compose containers, 300 requests: {dict(seen)}")
        assert set(seen) == hostnames  # the demo answers with its hostname
        assert min(seen.values()) >= 60, seen

        daemon.ok("rm", app_name)
        # lbctl never removes what it did not create ...
        after = compose.containers()
        assert sorted(str(c["Id"]) for c in after) == sorted(str(c["Id"]) for c in cs)
        assert all(c["State"]["Running"] for c in after)  # type: ignore[index]
        # ... but takes back what it set on the host.
        assert _localnet(bridge) == "0"


def test_exported_compose_file_beside_lbctl_replicas(
    daemon: Daemon, app_name: str, tmp_path: Path
) -> None:
    """One app, backends on two bridges: lbctl's replica on docker0 and compose containers
    (from the file `lbctl export` wrote) on the project's bridge; all get traffic."""
    port = free_port()
    daemon.ok("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "1", "--mode", "iptables", timeout=60)
    exported = daemon.ok("export", app_name, "--format", "compose")
    # The export says where lbctl's replicas run (network_mode: bridge, docker0); without
    # it docker-compose puts its containers on the project's own bridge: backends on two.
    assert "network_mode: bridge\n" in exported
    exported = exported.replace("    network_mode: bridge\n", "")
    with compose_project(tmp_path, app_name.replace("-", ""), exported) as compose:
        compose("up", "-d", "--scale", f"{app_name}=2")
        cs = compose.containers()
        assert len(cs) == 2
        bridge = _bridge_of(cs[0])
        daemon.wait(lambda: daemon.status(app_name)["ready"] == 3, 30, "1 own + 2 adopted")
        assert _localnet(bridge) == "1" and _localnet("docker0") == "1"
        seen = spread(port, 300)
        print(f"1 lbctl replica + 2 compose containers, 300 requests: {dict(seen)}")
        assert f"{app_name}-1" in seen and len(seen) == 3
        assert min(seen.values()) >= 60, seen
        daemon.ok("rm", app_name)
        assert len(compose.containers()) == 2


def _compose_app(app: str, mode: str, image: str) -> str:
    return f"""
services:
  web:
    image: {image}
    profiles: [lbctl]   # docker-compose leaves it to lbctl
    x-lbctl: {{app: {app}, publish: "127.0.0.1:${{WEB_PORT:?set WEB_PORT}}:8080", mode: {mode}}}
    deploy:
      replicas: 2
      resources: {{limits: {{memory: 64m}}}}
    volumes: [data:/data:ro, ./app.conf:/etc/app.conf:ro]
    networks: [front, backend]   # front carries the traffic; db is on backend
    user: "1000:1000"
    environment: {{FILE: /data/x, FETCH: "db:8080"}}
    healthcheck: {{test: [CMD, /httpd, --check], interval: 1s, timeout: 1s, retries: 1}}
  db:
    image: {image}
    networks: [backend]
    environment: {{LBCTL_REPLICA: the-db}}
volumes:
  data: {{}}
networks:
  front: {{}}
  backend: {{}}
"""


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_compose_file_applied_as_an_lbctl_app(
    daemon: Daemon, app_name: str, tmp_path: Path, demo_image: str, mode: str
) -> None:
    """The real service from a compose file: lbctl runs `web` (x-lbctl), docker-compose runs
    `db`, and they share the project's network and volume, which lbctl created with compose's
    labels so that docker-compose takes them as its own."""
    port = free_port()
    project = app_name.replace("-", "")
    proj_dir = tmp_path / project
    proj_dir.mkdir()
    (proj_dir / "app.conf").write_text("setting = 1\n")
    (proj_dir / ".env").write_text(f"WEB_PORT={port}\n")  # read by lbctl and compose alike
    with compose_project(proj_dir, project, _compose_app(app_name, mode, demo_image)) as compose:
        out = daemon.ok("apply", "-f", str(compose.file), timeout=180)
        assert "db: skipped" in out and f"{app_name}: created" in out, out
        volume, network = f"{project}_data", f"{project}_backend"
        labels = json.loads(docker("network", "inspect", "-f", "{{json .Labels}}", network))
        assert labels == {"com.docker.compose.project": project,
                          "com.docker.compose.network": "backend"}
        mountpoint = Path(docker("volume", "inspect", "-f", "{{.Mountpoint}}", volume).strip())
        (mountpoint / "x").write_text("on the project volume\n")
        r = subprocess.run(["docker-compose", "-p", project, "-f", str(compose.file), "up",
                            "-d", "db"], capture_output=True, text=True, timeout=120,
                           check=False)
        assert r.returncode == 0, r.stderr
        assert "has changed" not in r.stderr, r.stderr  # compose takes them as its own

        assert _body(port, "/file") == "on the project volume\n"
        assert _body(port, "/fetch") == "the-db\n"  # db, by its compose service name
        st = daemon.status(app_name)
        assert st["mode"] == mode and st["ready"] == 2
        reps = [c for c in app_containers(app_name)
                if c["Config"]["Labels"]["lbctl.role"] == "replica"]
        assert len(reps) == 2
        for c in reps:
            assert c["HostConfig"]["Memory"] == 64 << 20 and c["Config"]["User"] == "1000:1000"
            assert f"{volume}:/data:ro" in c["HostConfig"]["Binds"]
        holder = [c for c in app_containers(app_name)
                  if c["Config"]["Labels"]["lbctl.role"] == ("sandbox" if mode == "ebpf"
                                                             else "replica")]
        front = f"{project}_front"
        for c in holder:  # both networks; the engine lists them by name, backend first
            assert list(c["NetworkSettings"]["Networks"]) == [network, front]
        # ... but the DNAT goes to the address on front, the first the file names.
        front_bridge = "br-" + docker("network", "inspect", "-f", "{{.Id}}", front)[:12]
        back_bridge = "br-" + docker("network", "inspect", "-f", "{{.Id}}", network)[:12]
        assert (_localnet(front_bridge), _localnet(back_bridge)) == ("1", "0")

        # A key lbctl cannot honour: named, one line, exit 2, nothing changed.
        state = (daemon.state_dir / "state.json").read_bytes()
        bad = compose.file.with_name("bad.yml")
        bad.write_text(compose.file.read_text().replace("    user:", "    privileged: true\n"
                                                                  "    user:"))
        r = daemon.cli("apply", "-f", str(bad))
        assert r.returncode == 2 and "services.web.privileged" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert (daemon.state_dir / "state.json").read_bytes() == state

        daemon.ok("rm", app_name)
        # lbctl removes neither: the volume holds data, the network is the project's.
        assert docker("volume", "inspect", "-f", "{{.Name}}", volume).strip() == volume
        compose("down", "-v", "--timeout", "2")


def _body(port: int, path: str) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, (path, resp.status, body)
        return body
    finally:
        conn.close()


def test_compose_containers_adopted_in_ebpf_mode(
    daemon: Daemon, app_name: str, tmp_path: Path
) -> None:
    """docker-compose's containers join an ebpf app's sandbox with network_mode, are adopted
    and get connections from the program; one started without it is named in status."""
    port = free_port()
    daemon.ok("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "0", "--mode", "ebpf", timeout=60)
    text = (
        "services:\n"
        "  web:\n"
        f"    image: {IMAGE}\n"
        f"    network_mode: container:{app_name}-sandbox\n"
        f"    labels: {{lbctl.app: {app_name}}}\n"
        "  stray:\n"
        f"    image: {IMAGE}\n"
        f"    labels: {{lbctl.app: {app_name}}}\n"
    )
    with compose_project(tmp_path, app_name.replace("-", ""), text) as compose:
        compose("up", "-d", "--scale", "web=2")
        cs = compose.containers()
        web = sorted(str(c["Name"]).lstrip("/") for c in cs if "web" in str(c["Name"]))
        stray = next(str(c["Name"]).lstrip("/") for c in cs if "stray" in str(c["Name"]))
        daemon.wait(lambda: daemon.status(app_name)["ready"] == 2, 30, "2 adopted replicas")
        seen = spread(port, 200)  # both answer with the sandbox's hostname: count in lbctl
        assert sum(seen.values()) == 200
        st = daemon.status(app_name)
        per = {r["name"]: r for r in st["replicas"]}
        print(f"ebpf mode, 2 adopted compose containers: "
              f"{ {n: per[n]['connections_total'] for n in web} }")
        assert all(per[n]["adopted"] and per[n]["state"] == "ready" for n in web)
        assert all(per[n]["connections_total"] >= 40 for n in web), per
        assert per[stray]["state"] != "ready" and per[stray]["connections_total"] == 0
        assert f"network_mode: container:{app_name}-sandbox" in per[stray]["note"]
        table = daemon.ok("status", app_name)
        assert f"{stray}:\n    not in the app's namespace: give it network_mode:" in table
        assert all(len(line) <= 80 for line in table.splitlines()), table
        daemon.ok("rm", app_name)
        after = compose.containers()
        assert len(after) == 3  # lbctl removes nothing it did not create
        # docker-compose down refuses a service whose network_mode container is gone (the
        # README says: take them down first); these are removed by hand.
        docker("rm", "-f", *[str(c["Id"]) for c in after])
