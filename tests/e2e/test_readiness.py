"""Ready means it answers: lbctl's own readiness probe (`--ready-path`) on the real engine and
kernel, in both modes, under wrk load with a new connection per request and with keep-alive,
with the tests' own warm-up image (images/demo: WARMUP=N answers 503 for N seconds, /ready,
SIGHUP fails /ready). Every test prints figures.

- a first `run` returns once the replicas answer 200, and no client got a non-2xx;
- a rolling update from the plain image to the warming one: 0 non-2xx, 0 socket errors;
- a replica whose check path starts failing leaves the data plane and comes back when it
  passes, and is not restarted meanwhile (readiness is not liveness); in ebpf mode, where
  every replica shares one address and port, only that one leaves: each probe reached the
  replica it named.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from harness.daemon import Daemon
from harness.engine import docker
from harness.host import free_port
from harness.traffic import Load, spread
from harness.wrk import Wrk

pytestmark = pytest.mark.engine

WARMUP = 2  # seconds the warming replicas answer 503 (each of 3 in turn: the rollout waits 3 x 2 s)
READY = ("--ready-path", "/ready")
MODES = ["iptables", "ebpf"]


@contextmanager
def load(port: int, seconds: int) -> Iterator[dict[str, dict[str, Any]]]:
    """wrk with a new connection per request and wrk with keep-alive, side by side, for
    `seconds`; the dict gets both results (`close`, `keepalive`) once they are over."""
    url = f"http://127.0.0.1:{port}/"
    runs = {"close": Wrk(url, seconds, connections=8, close=True),
            "keepalive": Wrk(url, seconds, connections=8, close=False)}
    out: dict[str, dict[str, Any]] = {}
    try:
        yield out
    finally:
        for kind, w in runs.items():
            out[kind] = w.result()


def brief(res: dict[str, Any]) -> str:
    return (f"{res['requests']} requests, non-2xx {res['non2xx']}, socket errors "
            f"{res['connect'] + res['read'] + res['write'] + res['timeout']} (connect "
            f"{res['connect']}, read {res['read']}, write {res['write']}, timeout "
            f"{res['timeout']})")


def states(d: Daemon, app: str) -> dict[str, str]:
    return {r["name"]: r["state"] for r in d.status(app)["replicas"]}


def probes_of(d: Daemon, app: str, replica: str) -> dict[str, float]:
    """lbctl_replica_probe_total of one replica, by result."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics",
                                  timeout=5).read().decode()
    pat = re.compile(rf'^lbctl_replica_probe_total\{{app="{app}",replica="{replica}",'
                     r'result="([a-z_]+)"\} ([0-9.e+]+)$', re.M)
    return {m[1]: float(m[2]) for m in pat.finditer(text)}


@pytest.mark.parametrize("mode", MODES)
def test_a_first_run_returns_once_its_replicas_answer(
    daemon: Daemon, app_name: str, mode: str, demo_image: str
) -> None:
    """Clients from before the app exists (harness.traffic.Load: wrk gives up when its first
    connect is refused): refused until a replica is ready, then answered, never a 503."""
    port = free_port()
    with Load(port, clients=4, seconds=30) as close, \
            Load(port, clients=4, seconds=30, keepalive=True) as keep:
        time.sleep(0.5)
        t0 = time.monotonic()
        daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
                  "--replicas", "3", "--mode", mode, "-e", f"WARMUP={WARMUP}", *READY,
                  timeout=90)
        took = time.monotonic() - t0
        seen = spread(port, 60)  # spread() fails on any answer but a 200
        st = daemon.status(app_name)
        time.sleep(1)
    print(f"\n[{mode}] run of 3 replicas warming {WARMUP}s returned after {took:.1f}s; "
          f"then {dict(seen)}")
    for kind, ld in (("new connection per request", close), ("keep-alive", keep)):
        print(f"  {kind}: {ld.ok} answered, {ld.non2xx} non-2xx, "
              f"{len(ld.failed) - ld.non2xx} refused or broken (before a replica was ready)")
    assert st["ready"] == 3 and len(seen) == 3
    # It waited through the warm-up: every replica was probed while it answered 503.
    for r in st["replicas"]:
        assert r["probe"]["verdict"] == "pass", r
        assert r["probe"]["last_failure"]["status"] == 503, r
    assert st["readiness"]["path"] == "/ready"
    for ld in (close, keep):
        assert ld.non2xx == 0, ld.failed[-3:]  # no client ever saw a warming replica
        assert ld.ok > 100
    assert set(close.seen) == set(seen)  # (keep-alive clients stay where they connected)


@pytest.mark.parametrize("mode", MODES)
def test_a_rollout_to_a_warming_image_fails_no_request(
    daemon: Daemon, app_name: str, mode: str, demo_image: str
) -> None:
    port = free_port()
    # A keep-alive client that does not retry (wrk) needs the stopping server to close its
    # connection gracefully (its answer saying `Connection: close`), not under a request on
    # the way: the server's part of a keep-alive rollout, whatever readiness does.
    daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "--mode", mode, *READY, "--monitor", "1",
              "-e", "IDLE_CLOSE_MS=200", timeout=90)
    with load(port, 30) as res:
        time.sleep(1)
        t0 = time.monotonic()
        out = daemon.ok("update", app_name, "-e", f"WARMUP={WARMUP}", timeout=120)
        took = time.monotonic() - t0
    st = daemon.status(app_name)
    print(f"\n[{mode}] rollout of 3 replicas to one that warms {WARMUP}s: {took:.1f}s\n"
          f"  new connection per request: {brief(res['close'])}\n"
          f"  keep-alive: {brief(res['keepalive'])}")
    assert "revision 2 is live" in out
    assert st["revision"] == 2 and st["ready"] == 3
    assert all(r["revision"] == 2 for r in st["replicas"])
    for kind in ("close", "keepalive"):
        assert res[kind]["failed"] == 0, (kind, res[kind])
        assert res[kind]["requests"] > 1000, (kind, res[kind])


def placement(mode: str, port: int) -> list[str]:
    """`run` flags for a mode; "host": ebpf mode with --network host, where the replicas
    listen on the host's port themselves and a probe goes to the published address there."""
    if mode == "host":
        return ["-p", f"127.0.0.1:{port}:{port}", "--mode", "ebpf", "--network", "host",
                "-e", f"PORT={port}"]
    return ["-p", f"127.0.0.1:{port}:8080", "--mode", mode]


@pytest.mark.parametrize("mode", [*MODES, "host"])
def test_a_failing_check_path_takes_the_replica_out_and_back_without_a_restart(
    daemon: Daemon, app_name: str, mode: str, demo_image: str
) -> None:
    """SIGHUP makes web-2's /ready answer 503 while it keeps serving every other path: it
    leaves the data plane at the third failed probe (0.25 s apart) and comes back at the first
    pass, the same container all along. The other two stay ready throughout: in ebpf mode
    (and on the host's network) that is the probe reaching the replica it names (an answer
    from any replica would keep web-2 in, or take the others out)."""
    port = free_port()
    daemon.ok("run", app_name, "--image", demo_image, *placement(mode, port),
              "--replicas", "3", *READY, timeout=90)
    victim = f"{app_name}-2"
    others = {f"{app_name}-1", f"{app_name}-3"}
    before = json.loads(docker("inspect", victim))[0]
    with load(port, 12) as res:
        time.sleep(1)
        t0 = time.monotonic()
        docker("kill", "-s", "HUP", victim)
        daemon.wait(lambda: states(daemon, app_name)[victim] == "unready", 5, "unready")
        left = time.monotonic() - t0
        # Out for a while: the others stay ready all the time, and only they answer.
        watched = []
        for _ in range(15):
            watched.append(states(daemon, app_name))
            time.sleep(0.1)
        seen = spread(port, 90)
        failure = next(r for r in daemon.status(app_name)["replicas"]
                       if r["name"] == victim)["probe"]["last_failure"]
        t1 = time.monotonic()
        docker("kill", "-s", "HUP", victim)
        daemon.wait(lambda: states(daemon, app_name)[victim] == "ready", 5, "ready again")
        back = time.monotonic() - t1
        again = spread(port, 90)
    after = json.loads(docker("inspect", victim))[0]
    counts = probes_of(daemon, app_name, victim)
    print(f"\n[{mode}] {victim}'s /ready failing: unready after {left:.2f}s (last probe: "
          f"{failure['message']}), back {back:.2f}s after it passed; while out "
          f"{dict(seen)}, after {dict(again)}; probes of it {counts}\n"
          f"  new connection per request: {brief(res['close'])}\n"
          f"  keep-alive: {brief(res['keepalive'])}")
    assert all(s[victim] == "unready" and all(s[o] == "ready" for o in others)
               for s in watched), watched
    assert set(seen) == others and sum(seen.values()) == 90
    assert victim in again
    assert failure["reason"] == "status" and failure["status"] == 503
    assert counts.get("status", 0) >= 3 and counts.get("ok", 0) > 0, counts
    # Readiness is not liveness: the same container, never restarted.
    assert after["Id"] == before["Id"] and after["State"]["StartedAt"] == \
        before["State"]["StartedAt"] and after["RestartCount"] == 0
    for kind in ("close", "keepalive"):
        assert res[kind]["failed"] == 0, (kind, res[kind])


def test_a_health_check_of_the_shared_port_is_flagged_in_ebpf_mode(
    daemon: Daemon, app_name: str, demo_image: str
) -> None:
    """In ebpf mode the replicas share the port: a health check of localhost:PORT is
    answered by whichever replica the program picks. `run` says so in one line with the fix,
    and status keeps saying it."""
    port = free_port()
    r = daemon.cli("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
                   "--replicas", "0", "--mode", "ebpf", "--health-cmd",
                   '["/httpd", "--check", "localhost:8080"]', timeout=60)
    print(f"\nrun: exit {r.returncode}, stderr {r.stderr.strip()!r}")
    assert r.returncode == 0
    assert r.stderr.strip() == (
        f"lbctl: {app_name}: warning: --health-cmd asks localhost:8080, which in ebpf mode any "
        "replica may answer (they share the port): use --ready-path, lbctl's probe of each "
        "replica itself")
    assert daemon.status(app_name)["warnings"] == [r.stderr.strip().split("warning: ", 1)[1]]
    table = daemon.ok("status", app_name)
    assert "  warning: --health-cmd asks localhost:8080" in table
    assert all(len(line) <= 80 for line in table.splitlines()), table


@pytest.mark.parametrize("mode", MODES)
def test_a_restarted_daemon_keeps_the_probed_replicas_serving(
    daemon: Daemon, app_name: str, mode: str, demo_image: str
) -> None:
    """A daemon SIGKILLed and started again probes every replica before its first sync (in
    ebpf mode through the slots its state file names: the pinned socket map kept them), so
    it never publishes an empty set for a moment: no failed request across the restart."""
    port = free_port()
    daemon.ok("run", app_name, "--image", demo_image, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "3", "--mode", mode, *READY, timeout=90)
    ids = {r["name"]: r["container_id"] for r in daemon.status(app_name)["replicas"]}
    with load(port, 10) as res:
        time.sleep(1)
        daemon.kill(signal.SIGKILL)
        time.sleep(1)
        daemon.start()
        st = daemon.status(app_name)
        time.sleep(2)
    print(f"\n[{mode}] daemon SIGKILLed and restarted under load: ready "
          f"{st['ready']}/3 at its first status\n"
          f"  new connection per request: {brief(res['close'])}\n"
          f"  keep-alive: {brief(res['keepalive'])}")
    assert st["ready"] == 3
    assert {r["name"]: r["container_id"] for r in st["replicas"]} == ids
    for kind in ("close", "keepalive"):
        assert res[kind]["failed"] == 0, (kind, res[kind])
