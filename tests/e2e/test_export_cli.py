"""`lbctl export` through the CLI against a real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.daemon import Daemon
from harness.host import free_port

pytestmark = pytest.mark.engine


def test_export_through_the_cli(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--mode", "iptables", "-e", "GREETING=hi",
              timeout=90)

    compose = yaml.safe_load(daemon.ok("export", app_name, "--format", "compose"))
    svc = compose["services"][app_name]
    assert svc["image"] == "lbctl/demo:latest"
    assert svc["deploy"]["replicas"] == 2
    assert svc["environment"]["GREETING"] == "hi"
    assert "command" not in svc
    assert svc["labels"] == {"lbctl.app": app_name}
    assert compose["x-lbctl"]["publish"] == f"127.0.0.1:{port}:8080/tcp"

    dep, service = yaml.safe_load_all(daemon.ok("export", app_name, "--format", "kubernetes"))
    assert dep["spec"]["replicas"] == 2
    assert service["spec"]["ports"][0]["port"] == port
    assert service["spec"]["ports"][0]["targetPort"] == 8080

    stack = yaml.safe_load(daemon.ok("export", app_name, "--format", "swarm"))
    assert stack["services"][app_name]["deploy"]["replicas"] == 2
    assert stack["services"][app_name]["ports"][0]["published"] == port

    for args, message in [
        (["export", "nosuchapp"], "no app named nosuchapp"),
        (["export", app_name, "--format", "helm"], "invalid choice"),
        (["export", "Bad/Name"], "invalid app name"),
    ]:
        r = daemon.cli(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, r.stderr)


def test_kubernetes_export_refuses_a_bind_mount(daemon: Daemon, app_name: str,
                                                 tmp_path: Path) -> None:
    """A pod has no host's files to bind: one line saying so, exit 2; the other formats
    carry the bind."""
    conf = tmp_path / "web.conf"
    conf.write_text("x\n")
    daemon.ok("run", app_name, "--image", "lbctl/demo:latest", "-p",
              f"127.0.0.1:{free_port()}:8080", "--replicas", "0", "-v", f"{conf}:/etc/web.conf:ro")
    r = daemon.cli("export", app_name, "--format", "kubernetes")
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1
    assert f"bind mount {conf}:/etc/web.conf:ro cannot be exported to Kubernetes" in r.stderr
    for fmt in ("compose", "swarm"):
        doc = yaml.safe_load(daemon.ok("export", app_name, "--format", fmt))
        assert doc["services"][app_name]["volumes"] == [f"{conf}:/etc/web.conf:ro"]
