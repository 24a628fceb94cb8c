"""A live scrape of a real daemon passes `promtool check metrics` (Prometheus' own linter of
the exposition format: names, units, help texts, counter suffixes), with apps of both modes
serving traffic, so every per-app and per-replica series is in the scrape."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from harness.daemon import Daemon
from harness.host import free_port
from harness.traffic import spread

pytestmark = pytest.mark.engine


def test_live_scrape_passes_promtool(daemon: Daemon, app_name: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make setup` installs Debian's prometheus package"
    ports = {}
    for mode in ("ebpf", "iptables"):
        ports[mode] = free_port()
        daemon.ok("run", f"{app_name}-{mode[0]}", "--image", "lbctl/demo:latest", "-p",
                  f"127.0.0.1:{ports[mode]}:8080", "--replicas", "2", "--mode", mode,
                  timeout=90)
        spread(ports[mode], 10)
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics",
                                timeout=5) as r:
        text = r.read()
    for series in ("lbctl_replica_connections_total", "lbctl_app_replicas",
                   "lbctl_bpf_verdicts_total", "lbctl_build_info"):
        assert series.encode() in text, series
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          timeout=30, check=False)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
    assert (lint.stdout + lint.stderr).strip() == b"", (lint.stdout + lint.stderr).decode()
