"""`lbctl pause` / `lbctl resume` on the real engine and kernel, under wrk: new connections
wait while the app is paused (neither refused nor reset) and are served once it resumes, with
0 failed requests; the latency shows the hold. The hold ends by itself at --max, outlives a
daemon SIGKILL (ebpf: the hold container keeps holding; iptables: the rule carries its
deadline, so the hold even ends with no daemon), and works for --network host apps. Every
test prints its figures."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from harness.daemon import Daemon
from harness.engine import docker
from harness.host import free_port
from harness.traffic import Load
from harness.wrk import Wrk

pytestmark = pytest.mark.engine

HOLD = 10  # seconds the tests hold, as the issue asks
# Longer than a hold and the SYN retry that follows it (iptables mode: 15 s after a SYN
# sent as a 10 s hold began).
WRK_TIMEOUT = 30


@pytest.fixture
def held(daemon: Daemon, pause_image: str) -> Iterator[Daemon]:
    """The daemon, restarted with this checkout's pause image (its `hold` mode)."""
    daemon.kill(signal.SIGTERM)
    daemon.start("--sandbox-image", pause_image)
    yield daemon


def run(d: Daemon, app: str, port: int, mode: str, *extra: str) -> None:
    d.ok("run", app, "--image", "lbctl/demo:latest", "-p", f"127.0.0.1:{port}:{port}",
         "-e", f"PORT={port}", "--replicas", "2", "--mode", mode, *extra, timeout=120)


def holds(d: Daemon, app: str) -> list[str]:
    out = docker("ps", "-a", "--filter", f"label=lbctl.app={app}", "--filter",
                 "label=lbctl.role=hold", "--format", "{{.Names}}")
    return out.split()


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_a_pause_under_load_holds_and_fails_nothing(held: Daemon, app_name: str,
                                                     mode: str) -> None:
    """wrk, a new connection per request, and keep-alive clients connected before the pause
    and during it; beside them clients that time each request from its connect (wrk's latency
    starts once it is connected, so it cannot see an iptables hold, which holds the SYN)."""
    port = free_port()
    run(held, app_name, port, mode)
    url = f"http://127.0.0.1:{port}/"
    close = Wrk(url, seconds=HOLD + 12, timeout=WRK_TIMEOUT)  # a new connection per request
    before = Wrk(url, seconds=HOLD + 12, timeout=WRK_TIMEOUT, close=False)  # keep-alive
    with Load(port, clients=4, seconds=HOLD + 12, timeout=WRK_TIMEOUT) as timed:
        time.sleep(3)
        t0 = time.monotonic()
        out = held.ok("pause", app_name, "--max", "60")
        held_at = time.monotonic()
        st = held.status(app_name)
        time.sleep(2)
        # Keep-alive clients that connect while it is paused: their connections wait.
        during = Wrk(url, seconds=HOLD, timeout=WRK_TIMEOUT, close=False)
        time.sleep(HOLD - (time.monotonic() - held_at) - 0.5)
        mid = held.status(app_name)
        t1 = time.monotonic()
        held.ok("resume", app_name)
        resumed = time.monotonic()
        after = held.status(app_name)
        res = {"close": close.result(), "keep-alive before": before.result(),
               "keep-alive during": during.result()}
    in_hold, failed_in_hold = timed.between(held_at + 0.2, t1)
    print(f"\n[{mode}] pause {held_at - t0:.2f}s to hold, resume {resumed - t1:.2f}s; held "
          f"{mid['hold']['held']} connection(s) at the end of a {t1 - held_at:.1f}s hold")
    for what, r in res.items():
        print(f"  wrk {what}: {r['requests']} requests, {r['failed']} failed, p50 "
              f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms")
    print(f"  timed clients: {timed.ok} answered, {len(timed.failed)} failed, slowest "
          f"{timed.slowest():.2f}s (connect included); answered during the hold: {in_hold}")
    assert "paused until" in out
    assert st["hold"]["paused"] and st["hold"]["holding"], st["hold"]
    assert after["hold"] is None, after["hold"]
    assert all(r["failed"] == 0 for r in res.values()), res
    assert not timed.failed, timed.failed[:3]
    # Nothing new got through while it held, and a client that came as it began waited it
    # out: the hold is in the latency.
    assert in_hold == 0 and failed_in_hold == 0
    assert timed.slowest() >= 0.8 * (t1 - held_at)
    # Connections open before it went on being served: lbctl holds connections, not
    # requests on open ones.
    assert res["keep-alive before"]["max_ms"] < 0.5 * HOLD * 1000
    assert res["close"]["requests"] > 1000 and res["keep-alive before"]["requests"] > 1000
    if mode == "ebpf":
        # The kernel completes the handshakes: wrk's requests wait, not its connects.
        assert res["close"]["max_ms"] >= 0.8 * (t1 - held_at) * 1000
        assert res["keep-alive during"]["max_ms"] >= 0.8 * (t1 - held_at - 2) * 1000
        assert mid["hold"]["held"] >= 16, mid["hold"]  # the new-connection clients at least
        assert holds(held, app_name) == []  # its container is gone once resumed


def test_ebpf_hold_outlives_a_daemon_kill_and_ends_at_max(held: Daemon, app_name: str) -> None:
    port = free_port()
    run(held, app_name, port, "ebpf")
    url = f"http://127.0.0.1:{port}/"
    load = Wrk(url, seconds=HOLD + 10, timeout=WRK_TIMEOUT)
    time.sleep(2)
    held.ok("pause", app_name, "--max", str(HOLD))
    paused = held.status(app_name)["hold"]
    held.kill(signal.SIGKILL)
    time.sleep(2)
    held.start("--sandbox-image", docker("inspect", "--format", "{{.Config.Image}}",
                                         holds(held, app_name)[0]).strip())
    again = held.status(app_name)["hold"]
    held.wait(lambda: held.status(app_name)["hold"] is None, HOLD + 5, "the hold's end")
    ended = time.time()
    res = load.result()
    print(f"\n[ebpf] daemon SIGKILL 2 s into a {HOLD} s hold, restarted: still held "
          f"({again}); the hold ended {ended - paused['until']:+.1f}s from --max; "
          f"{res['requests']} requests, {res['failed']} failed, max {res['max_ms']:.0f} ms")
    assert again["paused"] and again["holding"] and again["until"] == paused["until"]
    assert res["failed"] == 0, res
    assert res["max_ms"] >= 0.8 * HOLD * 1000
    assert holds(held, app_name) == []


def test_iptables_hold_ends_at_max_with_no_daemon(held: Daemon, app_name: str) -> None:
    """The rule carries the deadline: a hold ends by itself even while no daemon runs."""
    port = free_port()
    run(held, app_name, port, "iptables")
    url = f"http://127.0.0.1:{port}/"
    # Paused 2 s in for 6 s; a SYN dropped then is retried 1, 3, 7 s after it was sent: the
    # last ones reach a replica by 2 + 6 + 4 s. wrk runs 4 s past that.
    load = Wrk(url, seconds=16, timeout=WRK_TIMEOUT)
    with Load(port, clients=4, seconds=16, timeout=WRK_TIMEOUT) as timed:
        time.sleep(2)
        held.ok("pause", app_name, "--max", "6")
        until = held.status(app_name)["hold"]["until"]
        held.kill(signal.SIGKILL)
        res = load.result(linger=None)  # its whole run, the daemon dead from the 2nd second on
    held.start()
    st = held.status(app_name)
    print(f"\n[iptables] a 6 s hold with its daemon killed at once: {res['requests']} "
          f"requests, {res['failed']} failed; timed clients: {timed.ok} answered, "
          f"{len(timed.failed)} failed, slowest {timed.slowest():.1f}s; restarted "
          f"{time.time() - until:.1f}s after --max: hold {st['hold']}")
    assert res["failed"] == 0 and res["requests"] > 1000, res
    assert not timed.failed and timed.slowest() >= 0.8 * 6
    assert st["hold"] is None


def test_a_host_network_app_is_held_too(held: Daemon, app_name: str) -> None:
    port = free_port()
    run(held, app_name, port, "ebpf", "--network", "host")
    url = f"http://127.0.0.1:{port}/"
    load = Wrk(url, seconds=12, timeout=WRK_TIMEOUT)
    time.sleep(2)
    held.ok("pause", app_name)
    time.sleep(5)
    st = held.status(app_name)
    held.ok("resume", app_name)
    res = load.result()
    print(f"\n[ebpf host network] a 5 s hold: held {st['hold']['held']}; {res['requests']} "
          f"requests, {res['failed']} failed, max {res['max_ms']:.0f} ms")
    assert st["hold"]["holding"] and st["hold"]["held"] >= 1
    assert res["failed"] == 0 and res["max_ms"] >= 4000, res


def test_a_udp_app_is_not_paused(held: Daemon, app_name: str) -> None:
    port = free_port()
    held.ok("run", app_name, "--image", "lbctl/demo:latest", "-p",
            f"127.0.0.1:{port}:{port}/udp", "-e", f"UDP_PORT={port}", "--mode", "iptables")
    r = held.cli("pause", app_name)
    assert r.returncode == 2 and "UDP" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert held.status(app_name)["hold"] is None
