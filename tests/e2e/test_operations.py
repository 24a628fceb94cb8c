"""Operating lbctl: a real Prometheus scraping a real daemon, the systemd unit, the status view."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, Daemon, free_port, spread

pytestmark = pytest.mark.engine


def _query(prom_port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.load(resp)
    assert data["status"] == "success", data
    result: list[dict[str, object]] = data["data"]["result"]
    return result


def test_prometheus_scrape_adds_up(daemon: Daemon, app_name: str, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is installed by make setup"
    port = free_port()
    daemon.ok("run", app_name, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "--mode", "iptables")
    sent = 200
    seen = spread(port, sent)
    assert sum(seen.values()) == sent

    prom_port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: lbctl\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{daemon.metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        expr = f'sum(lbctl_replica_connections_total{{app="{app_name}"}})'
        deadline = time.monotonic() + 40
        total = -1.0
        while time.monotonic() < deadline:
            try:
                res = _query(prom_port, expr)
                if res:
                    total = float(res[0]["value"][1])  # type: ignore[index]
                    if total >= sent:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        print(f"requests sent {sent}, Prometheus says {total}")
        # the daemon's own readiness probes do not go through the DNAT, so the kernel's
        # counters see exactly the test's connections
        assert total == sent
        per = _query(prom_port, f'lbctl_replica_connections_total{{app="{app_name}"}}')
        assert len(per) == 3
        ready = _query(prom_port, f'lbctl_app_replicas{{app="{app_name}",state="ready"}}')
        assert float(ready[0]["value"][1]) == 3  # type: ignore[index]
        assert _query(prom_port, "lbctl_build_info")
        assert _query(prom_port, "lbctl_dataplane_sync_seconds_count")
    finally:
        proc.terminate()
        proc.wait(10)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is part of the base system"
    unit = (ROOT / "systemd" / "lbctl.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    # verify against this checkout's binary, as an install to /opt/lbctl would have it
    local = unit.replace("/opt/lbctl/.venv/bin/lbctl", str(ROOT / ".venv" / "bin" / "lbctl"))
    path = tmp_path / "lbctl.service"
    path.write_text(local)
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                       check=False)
    problems = [ln for ln in r.stderr.splitlines() if "lbctl.service" in ln]
    assert r.returncode == 0 and not problems, r.stderr
