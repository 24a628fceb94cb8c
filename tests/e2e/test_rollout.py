"""Shipping a new version with zero failed requests, on the real engine and kernel, under a
bounded wrk load with a new connection per request: rolling updates in both modes (and on
Podman), a broken image that rolls back by itself, a canary's share of connections, undo,
a daemon killed mid-rollout, and a crash loop reported at once. Every test prints figures."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from harness.daemon import Daemon
from harness.engine import ENGINES, docker
from harness.host import free_port
from harness.traffic import spread
from harness.wrk import Wrk

pytestmark = pytest.mark.engine

OLD, NEW, BROKEN = "lbctl/demo:latest", "lbctl/demo:v2", "lbctl/demo:broken"
# A fast monitor keeps the tests short; the policy is the same as the default otherwise.
FAST = ("--monitor", "1")


@pytest.fixture(scope="module")
def images() -> Iterator[None]:
    """v2: the same server under a new name, a new revision to roll to; broken: one that
    exits at once (its PORT is out of range), as a bad release does."""
    docker("tag", OLD, NEW)
    subprocess.run(["docker", "build", "-q", "-t", BROKEN, "-"], check=True, text=True,
                   input=f"FROM {OLD}\nENV PORT=70000\n", capture_output=True,
                   env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"})
    for image in (NEW, BROKEN):
        subprocess.run(f"docker save {image} | podman load -q", shell=True, check=True,
                       capture_output=True)
    yield


def images_of(d: Daemon, app: str, cli: str = "docker") -> list[str]:
    ids = [r["container_id"] for r in d.status(app)["replicas"]]
    out = docker("inspect", "--format", "{{.Config.Image}}", *ids, cli=cli)
    return sorted(out.split())


def run(d: Daemon, app: str, port: int, mode: str, n: int = 4) -> None:
    d.ok("run", app, "--image", OLD, "-p", f"127.0.0.1:{port}:8080", "--replicas", str(n),
         "--mode", mode, *FAST, timeout=120)


def even(seen: dict[str, int], n: int, tolerance: float = 0.5) -> bool:
    total = sum(seen.values())
    return len(seen) == n and all(abs(v - total / n) <= tolerance * total / n
                                  for v in seen.values())


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_rolling_update_under_load_fails_no_request(
    daemon: Daemon, app_name: str, mode: str, images: None
) -> None:
    port = free_port()
    run(daemon, app_name, port, mode)
    load = Wrk(f"http://127.0.0.1:{port}/", seconds=30)
    time.sleep(2)
    t0 = time.monotonic()
    out = daemon.ok("update", app_name, "--image", NEW, timeout=120)
    took = time.monotonic() - t0
    res = load.result()
    st = daemon.status(app_name)
    seen = spread(port, 400)
    print(f"\n[{mode}] rolling update of 4 replicas under wrk: {took:.1f}s, {res['requests']} "
          f"requests, {res['failed']} failed; spread after {dict(seen)}")
    assert "revision 2 is live" in out
    assert res["failed"] == 0 and res["requests"] > 1000, res
    assert images_of(daemon, app_name) == [NEW] * 4
    assert st["revision"] == 2 and st["rollout"]["state"] == "complete" and st["ready"] == 4
    assert even(seen, 4), seen


def test_rolling_update_on_podman(daemon: Daemon, app_name: str, images: None) -> None:
    cli, host = ENGINES["podman"]
    daemon.kill(signal.SIGTERM)
    daemon.docker_host = host
    daemon.start()
    port = free_port()
    run(daemon, app_name, port, "ebpf")
    load = Wrk(f"http://127.0.0.1:{port}/", seconds=30)
    time.sleep(2)
    daemon.ok("update", app_name, "--image", NEW, timeout=120)
    res = load.result()
    print(f"\n[podman ebpf] rolling update: {res['requests']} requests, {res['failed']} failed")
    assert res["failed"] == 0 and res["requests"] > 1000, res
    assert images_of(daemon, app_name, cli) == [f"localhost/{NEW}"] * 4 or \
        images_of(daemon, app_name, cli) == [NEW] * 4


def test_a_broken_image_rolls_back_by_itself(
    daemon: Daemon, app_name: str, images: None
) -> None:
    port = free_port()
    run(daemon, app_name, port, "ebpf")
    load = Wrk(f"http://127.0.0.1:{port}/", seconds=20)
    time.sleep(2)
    t0 = time.monotonic()
    r = daemon.cli("update", app_name, "--image", BROKEN, timeout=120)
    took = time.monotonic() - t0
    res = load.result()
    st = daemon.status(app_name)
    print(f"\nbroken image: the command exited {r.returncode} after {took:.1f}s: "
          f"{r.stderr.strip()!r}; {res['requests']} requests, {res['failed']} failed")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "exited with code 1" in r.stderr and "rolled back to 1" in r.stderr
    assert took < 20
    assert res["failed"] == 0, res
    assert st["rollout"]["state"] == "rolled-back" and st["revision"] == 1
    daemon.wait(lambda: daemon.status(app_name)["converged"], 30, "back on revision 1")
    assert images_of(daemon, app_name) == [OLD] * 4
    hist = daemon.ok("rollout", "history", app_name)
    assert "image lbctl/demo:broken" in hist


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_a_canary_takes_its_share_until_undo(
    daemon: Daemon, app_name: str, mode: str, images: None
) -> None:
    port = free_port()
    run(daemon, app_name, port, mode)
    out = daemon.ok("update", app_name, "--image", NEW, "--canary", "25", timeout=120)
    assert "25% of new connections" in out
    st = daemon.status(app_name)
    canaries = {r["name"] for r in st["replicas"] if r["revision"] == 2}
    seen = spread(port, 2000)
    share = sum(seen[c] for c in canaries) / 2000
    print(f"\n[{mode}] canary 25%: {sorted(canaries)} got {share:.1%} of 2000 connections "
          f"({dict(seen)})")
    assert len(canaries) == 1 and len(st["replicas"]) == 5
    assert abs(share - 0.25) <= 0.05
    table = daemon.ok("status", app_name)
    assert "canary 25%" in table
    daemon.ok("rollout", "undo", app_name, timeout=120)
    assert images_of(daemon, app_name) == [OLD] * 4
    assert even(spread(port, 400), 4)


def test_daemon_killed_mid_rollout_finishes_it(
    daemon: Daemon, app_name: str, images: None
) -> None:
    port = free_port()
    run(daemon, app_name, port, "iptables")
    load = Wrk(f"http://127.0.0.1:{port}/", seconds=35)
    time.sleep(1)
    daemon.ok("update", app_name, "--image", NEW, "--no-wait")
    daemon.wait(lambda: sum(r["revision"] == 2 for r in daemon.status(app_name)["replicas"])
                >= 2, 30, "rollout half way")
    daemon.kill(signal.SIGKILL)
    time.sleep(2)
    daemon.start()
    t0 = time.monotonic()
    out = daemon.ok("rollout", "status", app_name, timeout=120)
    took = time.monotonic() - t0
    res = load.result()
    replicas = [c for c in json.loads(docker("inspect", *docker(
        "ps", "-q", "--filter", f"label=lbctl.app={app_name}").split()))]
    print(f"\ndaemon SIGKILL mid-rollout: restarted, finished in {took:.1f}s; {res}; "
          f"{len(replicas)} containers")
    assert "revision 2 is live" in out
    assert res["failed"] == 0, res
    assert len(replicas) == 4, "no replica lost or doubled"
    assert {c["Config"]["Image"] for c in replicas} == {NEW}


def test_a_crash_loop_is_reported_at_once(daemon: Daemon, app_name: str) -> None:
    t0 = time.monotonic()
    r = daemon.cli("run", app_name, "--image", OLD, "-p", f"127.0.0.1:{free_port()}:8080",
                   "--replicas", "2", "-e", "PORT=70000", timeout=90)
    took = time.monotonic() - t0
    print(f"\ncrash loop: exit {r.returncode} after {took:.1f}s: {r.stderr.strip()!r}")
    assert r.returncode == 1 and took < 15
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"{app_name}-" in line and "exited with code 1" in line and "PORT must be" in line
    assert json.loads(daemon.ok("status", "-o", "json"))["apps"] == []
