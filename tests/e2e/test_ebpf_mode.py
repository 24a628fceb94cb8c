"""ebpf mode end to end: real daemon, real engine, the real program in the real kernel."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.engine import app_containers, docker
from harness.host import free_port, iptables_save
from harness.traffic import spread
from harness.wrk import Wrk

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"


def run_app(d: Daemon, name: str, port: int, replicas: int, *extra: str) -> None:
    d.ok("run", name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
         "--replicas", str(replicas), "--mode", "ebpf", *extra, timeout=90)


def test_spread_and_counters_come_from_the_program(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    run_app(daemon, app_name, port, 3)
    st = daemon.status(app_name)
    assert st["mode"] == "ebpf" and st["ready"] == 3
    # one sandbox holds the namespace; replicas joined it; no docker-proxy publishes it
    cs = app_containers(app_name)
    sandbox = next(c for c in cs if c["Config"]["Labels"].get("lbctl.role") == "sandbox")
    assert not sandbox["HostConfig"].get("PortBindings")
    for c in cs:
        if c is not sandbox:
            assert c["HostConfig"]["NetworkMode"] == f"container:{sandbox['Id']}"

    seen = spread(port, 300)
    print(f"ebpf, 3 replicas, 300 requests: {dict(seen)}")
    assert sum(seen.values()) == 300
    assert min(seen.values()) >= 60, seen
    # the program's counters saw exactly these connections (readiness in ebpf mode does
    # not connect, so nothing else goes through the program)
    counted = {r["name"]: r["connections_total"] for r in daemon.status(app_name)["replicas"]}
    assert counted == dict(seen)


def test_scale_down_under_load_loses_nothing(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    run_app(daemon, app_name, port, 4)
    wrk = Wrk(f"http://127.0.0.1:{port}/", seconds=40)
    cycles = 0
    t0 = time.monotonic()
    try:
        time.sleep(1.0)
        while cycles < 5 and time.monotonic() - t0 < 33:
            daemon.ok("scale", f"{app_name}=1")
            daemon.ok("scale", f"{app_name}=4")
            cycles += 1
    finally:
        res = wrk.result()
    print(f"ebpf scale 4->1->4 x{cycles} under load: {res}")
    assert cycles == 5, "the scale cycles must fit in the load window"
    assert res["requests"] > 2000
    assert res["failed"] == 0, wrk.output
    assert len(spread(port, 40)) == 4


def test_reference_plain_reuseport_loses_connections(tmp_path: Path) -> None:
    """Without lbctl (no program, no drain), stopping replicas abruptly under the same load
    fails requests: the loss the drain exists to avoid."""
    tag = f"lbctl-test-ref-{int(time.time())}"
    sandbox = docker("run", "-d", "--name", f"{tag}-sb", "--label", "lbctl.test=1",
                     "lbctl/pause:latest").strip()
    names = [f"{tag}-{i}" for i in range(4)]
    try:
        for n in names:
            docker("run", "-d", "--name", n, "--label", "lbctl.test=1",
                   "--network", f"container:{sandbox}", "-e", f"LBCTL_REPLICA={n}", IMAGE)
        ip = json.loads(docker("inspect", sandbox))[0]["NetworkSettings"]["IPAddress"]
        time.sleep(0.5)
        wrk = Wrk(f"http://{ip}:8080/", seconds=14)
        time.sleep(1.0)
        for _ in range(4):
            docker("kill", *names[1:])
            time.sleep(1.0)
            docker("start", *names[1:])
            time.sleep(1.5)
        res = wrk.result()
        print(f"plain SO_REUSEPORT, 3 of 4 killed x4 under load: {res}")
        assert res["requests"] > 2000
        assert res["failed"] > 0, wrk.output
    finally:
        docker("rm", "-f", *names, f"{tag}-sb", check=False)


def test_app_without_reuseport_is_refused_and_leaves_nothing(
    daemon: Daemon, app_name: str
) -> None:
    port = free_port()
    before = iptables_save()
    r = daemon.cli("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
                   "--replicas", "2", "--mode", "ebpf", "-e", "REUSEPORT=0", timeout=90)
    print(r.stderr)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "SO_REUSEPORT" in lines[0] and "iptables" in lines[0]
    assert app_containers(app_name) == []
    assert iptables_save() == before
    assert not daemon.pin_root.exists() or list(daemon.pin_root.iterdir()) == []
    assert json.loads(daemon.ok("status", "-o", "json"))["apps"] == []
