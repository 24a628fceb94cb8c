"""The core scenarios on both engines: `lbctl daemon --docker-host unix:///run/podman/podman.sock`
does in both modes what it does beside Docker. Real daemon, real engine, real HTTP.

Run 3 replicas, traffic spread to all, an engine-side kill replaced, scale to 1, rm leaves
nothing (no container, no LBCTL- rule, route_localnet as it was). `make test` sets Podman up
(`make setup ENGINE=podman`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.engine import ENGINES, app_containers, docker
from harness.host import free_port, iptables_save
from harness.traffic import spread
from lbctl.dataplane.iptables import SYSCTL_STATE_FILE

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"


def _lbctl_rules() -> list[str]:
    return [ln for ln in iptables_save().splitlines() if "LBCTL" in ln]


def _engine_bridge(cli: str) -> str:
    """The host bridge of the engine's default network (where route_localnet matters)."""
    if cli == "docker":
        return "docker0"
    # CNI (Debian's Podman 4.3): cni-podman0; netavark: podman0.
    return docker("network", "inspect", "podman", "--format", "{{.NetworkInterface}}",
                  cli=cli).strip()


def _localnet_path(bridge: str) -> Path:
    return Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet")


def _localnet(bridge: str) -> str:
    return _localnet_path(bridge).read_text().strip()


def _localnet_before(bridge: str) -> str:
    """route_localnet on `bridge` as it is before lbctl touches it. On a fresh machine
    Podman's bridge does not exist until its first container runs; the kernel then creates
    it with net.ipv4.conf.default's value, which is what lbctl finds and records as the
    original (and must put back on rm)."""
    if not _localnet_path(bridge).exists():
        return _localnet("default")
    return _localnet(bridge)


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_core_scenario(daemon: Daemon, app_name: str, engine: str, mode: str) -> None:
    cli = ENGINES[engine][0]
    name = f"{app_name}{engine[0]}{mode[0]}"  # t1234-corescenapi, ...: one per case
    port = free_port()
    rules_before = _lbctl_rules()
    bridge = _engine_bridge(cli)
    localnet_before = _localnet_before(bridge)

    daemon.ok("run", name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "--mode", mode, timeout=90)
    st = daemon.status(name)
    assert st["ready"] == 3 and st["mode"] == mode, st

    cs = app_containers(name, cli=cli)
    assert all(c["Config"]["Labels"]["lbctl.managed"] == "true" for c in cs)
    sandboxes = [c for c in cs if c["Config"]["Labels"].get("lbctl.role") == "sandbox"]
    replicas = [c for c in cs if c not in sandboxes]
    assert len(replicas) == 3
    if mode == "ebpf":
        # one pause sandbox holds the namespace on both engines; replicas joined it
        (sandbox,) = sandboxes
        for c in replicas:
            assert c["HostConfig"]["NetworkMode"] == f"container:{sandbox['Id']}"
    else:
        assert sandboxes == []
    # The DNAT of 127.0.0.1 needs route_localnet on the engine's bridge, in both modes
    # (ebpf mode DNATs to the sandbox).
    assert _localnet(bridge) == "1"
    # ... and lbctl recorded what it found there as the value to restore.
    recorded = json.loads((daemon.state_dir / SYSCTL_STATE_FILE).read_text())
    assert recorded["route_localnet"][bridge] == localnet_before, recorded

    seen = spread(port, 300)
    print(f"{engine}/{mode}, 3 replicas, 300 requests: {dict(seen)}")
    assert set(seen) == {f"{name}-{i}" for i in (1, 2, 3)}
    assert min(seen.values()) >= 60, seen

    # A replica killed through the engine's own CLI: the event (or the next pass) replaces it.
    victim = next(c for c in replicas if c["Name"].lstrip("/") == f"{name}-2")
    t0 = time.monotonic()
    docker("kill", victim["Id"], cli=cli)
    daemon.wait(
        lambda: any(r["name"] == f"{name}-2" and r["state"] == "ready"
                    and r["container_id"] != victim["Id"]
                    for r in daemon.status(name)["replicas"]),
        20, "killed replica replaced",
    )
    print(f"{engine}/{mode}: killed replica replaced and ready in {time.monotonic() - t0:.2f}s")
    assert len(spread(port, 60)) == 3

    daemon.ok("scale", f"{name}=1")
    assert spread(port, 50) == Counter({f"{name}-1": 50})
    daemon.wait(lambda: len(app_containers(name, cli=cli)) == 1 + len(sandboxes), 30,
                "surplus replicas removed")

    daemon.ok("rm", name)
    assert app_containers(name, cli=cli) == []
    assert _lbctl_rules() == rules_before
    # route_localnet back as it was before lbctl set it (if the engine kept its bridge:
    # Podman's may go with its last container, and then there is nothing to restore).
    if _localnet_path(bridge).exists():
        assert _localnet(bridge) == localnet_before

