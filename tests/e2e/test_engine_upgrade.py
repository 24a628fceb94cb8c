"""Engine upgrades without loss: upgrading the engine's package restarts dockerd. With
Docker's live-restore on, the containers outlive the engine, and lbctl's data plane (kernel
rules, the attached eBPF program) never depended on it: a restart under load fails no
request, and the daemon finds the same containers when the engine answers again.

`lbctl doctor` says whether the engine keeps containers across its restarts and how to turn
it on; this test turns it on exactly that way (harness.dockerd.live_restore) and puts the
engine's configuration back afterwards.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from harness import dockerd
from harness.daemon import Daemon
from harness.engine import app_containers
from harness.host import free_port
from harness.wrk import Wrk

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"


def doctor_says(d: Daemon) -> str:
    """`lbctl doctor`'s line (and fix) about engine restarts."""
    out = d.cli("doctor", timeout=120).stdout.splitlines()
    i = next(i for i, line in enumerate(out) if "engine restarts" in line)
    fix = out[i + 1] if i + 1 < len(out) and out[i + 1].lstrip().startswith("fix:") else ""
    return out[i] + "\n" + fix


def reconnects(d: Daemon) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5)
    for line in body.read().decode().splitlines():
        if line.startswith("lbctl_runtime_watch_reconnects_total "):
            return float(line.split()[1])
    raise AssertionError("no lbctl_runtime_watch_reconnects_total")


def test_engine_restart_with_live_restore_fails_no_request(daemon: Daemon, app_name: str) -> None:
    apps = {"iptables": (f"{app_name}-i", free_port()), "ebpf": (f"{app_name}-e", free_port())}
    for mode, (name, port) in apps.items():
        daemon.ok("run", name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
                  "--replicas", "2", "--mode", mode, timeout=90)
    before = doctor_says(daemon)
    if dockerd.live_restore_enabled():  # this host's engine is configured with it already
        assert "live-restore)" in before, before
    else:
        assert "WARN" in before and '"live-restore": true' in before, before
    with dockerd.live_restore():
        on = doctor_says(daemon)
        assert on.startswith("ok") and "live-restore" in on, on
        ids = {c["Id"] for name, _ in apps.values() for c in app_containers(name)}
        seen = reconnects(daemon)
        loads = {mode: Wrk(f"http://127.0.0.1:{port}/", 10) for mode, (_, port) in apps.items()}
        time.sleep(2)
        with dockerd.always_running():
            t0 = time.monotonic()
            dockerd.stop()
            t_stopped = time.monotonic()
            dockerd.start()
            t_up = time.monotonic()
        results = {mode: w.result() for mode, w in loads.items()}
        daemon.wait(lambda: reconnects(daemon) > seen, 30, "the daemon's watch to reconnect")
        daemon.wait(lambda: all(daemon.status(n)["converged"] for n, _ in apps.values()), 30,
                    "both apps converged")
        after = {c["Id"] for name, _ in apps.values() for c in app_containers(name)}
    print(f"\nengine restart with live-restore: dockerd stopped in {t_stopped - t0:.2f}s, "
          f"answered {t_up - t_stopped:.2f}s later; under wrk: " + ", ".join(
              f"{mode} {r['requests']} requests, {r['failed']} failed"
              for mode, r in results.items()))
    for mode, r in results.items():
        assert r["requests"] > 0 and r["failed"] == 0, (mode, r)
    assert after == ids, "containers were replaced: live-restore did not keep them"
    assert daemon.proc is not None and daemon.proc.poll() is None
    for name, _ in apps.values():
        assert daemon.status(name)["ready"] == 2
