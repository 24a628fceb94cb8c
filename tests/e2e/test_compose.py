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
from harness.engine import docker
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
        subprocess.run(
            ["docker-compose", "-p", project, "-f", str(c.file), "down", "--timeout", "2"],
            capture_output=True, timeout=120, check=False,
        )


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
