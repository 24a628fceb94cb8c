"""An app handed over to Swarm for real: `lbctl export NAME --format swarm | docker stack
deploy -c - NAME` on a single-node swarm of the test's own (harness.swarm: a second dockerd
in a network namespace of its own, so the host's engine is left as it was), and the service
runs its replicas with the update and rollback config lbctl exported. The Kubernetes manifests
of the same app, through the CLI, pass the API's schemas (strict) offline.

Swarm's routing mesh needs IPVS, which this kernel lacks: the test checks the service's spec
and its running tasks, not traffic through the mesh."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from harness.daemon import LBCTL, Daemon
from harness.host import free_port, host_lock
from harness.swarm import SwarmEngine
from tests.formats import validate_compose, validate_kubernetes

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def swarm() -> Iterator[SwarmEngine]:
    """A single-node swarm for this module, with lbctl/demo loaded (no registry here). It
    holds the host lock while it runs; afterwards nothing of it is left."""
    with host_lock():
        engine = SwarmEngine()
        try:
            engine.start()
            engine.load_image("lbctl/demo:latest")
            yield engine
        finally:
            engine.stop()
        assert not engine.leftovers(), engine.leftovers()


def _tasks(engine: SwarmEngine, service: str) -> list[dict[str, Any]]:
    ids = engine.docker("service", "ps", "-q", "--filter", "desired-state=running",
                        service).split()
    if not ids:
        return []
    tasks: list[dict[str, Any]] = json.loads(engine.docker("inspect", *ids))
    return tasks


def test_swarm_stack_deploy_runs_the_exported_service(
        daemon: Daemon, app_name: str, swarm: SwarmEngine) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "--mode", "iptables", "-e", "GREETING=hi",
              "--parallelism", "2", "--delay", "1.5", "--monitor", "2",
              "--update-order", "stop-first", "--failure-action", "pause",
              "-m", "64m", "--cpus", "0.5", "--pids-limit", "200",
              "--health-cmd", '["/httpd", "--check"]', "--health-interval", "2s",
              "-v", f"{app_name}-data:/data", "--tmpfs", "/run:size=1m",
              "--shm-size", "8m", "--stop-timeout", "7", timeout=120)
    text = daemon.ok("export", app_name, "--format", "swarm")
    # pids (stack files 3.9) is newer than the schema Debian's docker-compose ships: the
    # deploy below is what checks it, with the CLI's own schema.
    doc = yaml.safe_load(text)
    limits = doc["services"][app_name]["deploy"]["resources"]["limits"]
    assert limits.pop("pids") == 200
    validate_compose(doc)
    assert doc["services"][app_name]["deploy"]["replicas"] == 3

    stack = app_name
    pipe = (f"{shlex.join([*LBCTL, 'export', app_name, '--format', 'swarm'])} | "
            f"docker -H {swarm.host} stack deploy --resolve-image never -c - {stack}")
    r = subprocess.run(pipe, shell=True, env=daemon.env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "Ignoring unsupported options" not in r.stderr, r.stderr
    service = f"{stack}_{app_name}"
    try:
        spec = json.loads(swarm.docker("service", "inspect", service))[0]["Spec"]
        assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
        update = {"Parallelism": 2, "Delay": 1_500_000_000, "FailureAction": "pause",
                  "Monitor": 2_000_000_000, "MaxFailureRatio": 0, "Order": "stop-first"}
        assert spec["UpdateConfig"] == update
        assert spec["RollbackConfig"] == {**update, "FailureAction": "pause"}
        task = spec["TaskTemplate"]
        assert task["Resources"]["Limits"] == {"NanoCPUs": 500_000_000,
                                               "MemoryBytes": 64 << 20, "Pids": 200}
        container = task["ContainerSpec"]
        assert container["Healthcheck"]["Test"] == ["CMD", "/httpd", "--check"]
        assert container["StopGracePeriod"] == 7_000_000_000
        assert "GREETING=hi" in container["Env"]
        mounts = {m["Target"]: m for m in container["Mounts"]}
        assert mounts["/data"]["Type"] == "volume"
        assert mounts["/data"]["Source"] == f"{app_name}-data"
        assert mounts["/run"] == {"Type": "tmpfs", "Target": "/run",
                                  "TmpfsOptions": {"SizeBytes": 1 << 20}}
        assert mounts["/dev/shm"] == {"Type": "tmpfs", "Target": "/dev/shm",
                                      "TmpfsOptions": {"SizeBytes": 8 << 20}}
        assert spec["EndpointSpec"]["Ports"] == [{
            "Protocol": "tcp", "TargetPort": 8080, "PublishedPort": port,
            "PublishMode": "ingress"}]
        # the service's tasks run, and are healthy by the exported health check
        deadline = time.monotonic() + 90
        while True:
            tasks = _tasks(swarm, service)
            running = [t for t in tasks if t["Status"]["State"] == "running"]
            healthy = [t for t in running if _health(swarm, t) == "healthy"]
            if len(healthy) == 3:
                break
            assert time.monotonic() < deadline, [t["Status"] for t in tasks]
            time.sleep(1)
    finally:
        swarm.docker("stack", "rm", stack, check=False)


def _health(engine: SwarmEngine, task: dict[str, Any]) -> str | None:
    cid = task["Status"].get("ContainerStatus", {}).get("ContainerID")
    if not cid:
        return None
    out = engine.docker("inspect", "--format", "{{.State.Health.Status}}", cid, check=False)
    return out.strip() or None


def test_kubernetes_manifests_through_the_cli_validate(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", "lbctl/demo:latest", "-p", f"0.0.0.0:{port}:8080",
              "-p", f"[::]:{port}:8080", "-e", "BIND=::", "--replicas", "0", "--mode", "ebpf",
              "-v", f"{app_name}-data:/data", "--health-cmd", '["/httpd", "--check"]',
              timeout=120)
    docs = validate_kubernetes(daemon.ok("export", app_name, "--format", "kubernetes"))
    assert [d["kind"] for d in docs] == ["Deployment", "PersistentVolumeClaim", "Service"]
    assert docs[2]["spec"]["externalTrafficPolicy"] == "Local"
    assert docs[2]["spec"]["ipFamilyPolicy"] == "PreferDualStack"
