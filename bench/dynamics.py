"""What happens while the replica set changes: scale under load, convergence, footprint."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.env import (
    PIN_ROOT,
    Env,
    container_ip,
    container_pid,
    proc_cpu_seconds,
    run_backend,
    run_sandbox,
)
from bench.image import PORT
from bench.rss import status_mb
from harness import wrk
from harness.engine import docker
from lbctl.dataplane.ebpf import pins, table
from lbctl.dataplane.iptables.chains import svc_chain

Log = Callable[[str], None]
SCALE_CONNECTIONS = 32


# ------------------------------------------------------------------- scale under load


@dataclass
class ScaleResult:
    path: str
    cycles: int
    action: str
    result: wrk.WrkResult

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "cycles": self.cycles, "action": self.action,
                **self.result.to_json()}


def _cycle_until(stop: float, step: Callable[[], None]) -> int:
    n = 0
    while time.monotonic() < stop:
        step()
        n += 1
    return n


def scale_under_load(env: Env, which: list[str], seconds: float, log: Log) -> list[ScaleResult]:
    """wrk with a new connection per request while the replica set changes under it."""
    out: list[ScaleResult] = []
    for path in which:
        if path in ("ebpf", "iptables"):
            app = f"bench-sl-{path}"
            port = env.run_app(app, 4, path)
            url = f"http://127.0.0.1:{port}/"

            def scale(app: str = app) -> None:
                env.scale(app, 1)
                time.sleep(0.5)
                env.scale(app, 4)
                time.sleep(0.5)

            action = "lbctl scale 4 -> 1 -> 4"
            step: Callable[[], None] = scale
            cleanup: Callable[[], object] = functools.partial(env.rm_app, app)
        else:
            sb = "bench-slrp-sandbox"
            run_sandbox(sb, "bench-slrp")
            names = [f"bench-slrp-{i}" for i in range(1, 5)]
            for name in names:
                run_backend(name, "bench-slrp", network=f"container:{sb}")
            url = f"http://{container_ip(sb)}:{PORT}/"
            time.sleep(1)

            def kill(names: list[str] = names) -> None:
                docker("kill", *names[1:])
                time.sleep(0.5)
                docker("start", *names[1:])
                time.sleep(1.0)

            action = "docker kill 3 of 4, docker start"
            step = kill
            cleanup = functools.partial(docker, "rm", "-f", sb, *names, check=False)
        try:
            wrk.run(url, 1, close=True, connections=SCALE_CONNECTIONS)  # warm
            proc = wrk.start(url, seconds, close=True, connections=SCALE_CONNECTIONS)
            time.sleep(1)
            cycles = _cycle_until(time.monotonic() + seconds - 4, step)
            res = wrk.finish(proc, seconds)
            out.append(ScaleResult(path, cycles, action, res))
            log(f"  scale under load {path}: {cycles} cycles, {res.requests} requests, "
                f"socket errors {res.socket_errors}, non-2xx {res.non2xx}")
        finally:
            cleanup()
    return out


# ------------------------------------------------------------------- convergence


@dataclass
class Convergence:
    mode: str
    kill_ms: list[float] = field(default_factory=list)  # kill -> out of the data plane
    scale_ms: list[float] = field(default_factory=list)  # scale request -> new replica answers

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "kill": summary(self.kill_ms), "scale": summary(self.scale_ms)}


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
            "max": max(xs) if xs else float("nan"),
            "mean": statistics.fmean(xs) if xs else float("nan")}


def _answer(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().read().decode().strip()
    except OSError:
        return None
    finally:
        conn.close()


def _has_replicas(env: Env, app: str, n: int) -> bool:
    return len(_replicas(env, app)) == n


def _replicas(env: Env, app: str) -> list[dict[str, Any]]:
    reps: list[dict[str, Any]] = env.lbctl().status(app)["replicas"]
    return reps


def _wait_ready(env: Env, app: str, n: int, timeout: float = 60) -> None:
    env.lbctl().wait(lambda: [r["state"] for r in _replicas(env, app)] == ["ready"] * n,
                     timeout=timeout, what=f"{app} at {n} ready replicas")


def _victim(env: Env, app: str) -> tuple[dict[str, Any], int]:
    """A ready replica (the second) and its host PID, once the app has 3 ready replicas and
    the engine reports that PID (0 means not running: never signal 0, the process group)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _wait_ready(env, app, 3)
        victim = _replicas(env, app)[1]
        pid = container_pid(victim["container_id"])
        if pid > 0:
            return victim, pid
        time.sleep(0.2)
    raise RuntimeError(f"{app}: no running replica to kill")


def convergence(env: Env, modes: list[str], tries: int, log: Log) -> list[Convergence]:
    """Per mode: (a) SIGKILL a replica's process, time until the data plane has dropped it;
    (b) ask for one more replica, time until the new replica answers a request."""
    out: list[Convergence] = []
    for mode in modes:
        app = f"bench-cv-{mode}"
        port = env.run_app(app, 3, mode)
        c = Convergence(mode)
        out.append(c)
        try:
            for i in range(tries):
                victim, pid = _victim(env, app)
                gone = _watcher(env, app, mode, victim["name"])
                t0 = time.monotonic()
                assert pid > 1, pid  # never a process group
                os.kill(pid, signal.SIGKILL)
                c.kill_ms.append((gone(t0) - t0) * 1e3)
                log(f"  convergence {mode} kill {i + 1}/{tries}: {c.kill_ms[-1]:.1f} ms")
            _wait_ready(env, app, 3)
            env.scale(app, 2)
            for i in range(tries):
                env.lbctl().wait(functools.partial(_has_replicas, env, app, 2), timeout=60,
                                 what="scale-down finished")
                known = {r["name"] for r in _replicas(env, app)}
                t0 = time.monotonic()
                env.lbctl().api("POST", f"/apps/{app}/scale", {"replicas": 3})
                deadline = t0 + 60
                while time.monotonic() < deadline:
                    body = _answer(port)
                    if body is not None and body not in known:
                        break
                    time.sleep(0.002)
                else:
                    raise RuntimeError(f"{app}: the new replica never answered")
                c.scale_ms.append((time.monotonic() - t0) * 1e3)
                log(f"  convergence {mode} scale {i + 1}/{tries}: {c.scale_ms[-1]:.1f} ms")
                _wait_ready(env, app, 3)
                env.scale(app, 2)
        finally:
            env.rm_app(app)
    return out


def _watcher(env: Env, app: str, mode: str, replica: str) -> Callable[[float], float]:
    """Returns a function that polls the kernel's data plane until `replica` is out of it and
    returns that moment (monotonic). iptables: its DNAT rule (comment app/replica) is gone
    from the app's chain. ebpf: its slot is out of the live selection table."""
    if mode == "iptables":
        chain, tag = svc_chain(app), f"{app}/{replica}"

        def present() -> bool:
            r = subprocess.run(["iptables", "-w", "-t", "nat", "-S", chain],
                               capture_output=True, text=True, check=False)
            return tag in r.stdout
    else:
        assert env.daemon is not None
        state_file = env.daemon.state_dir / "ebpf" / f"{app}.json"
        maps = pins.open_pins(pins.pin_dir(PIN_ROOT, app))

        def slot() -> tuple[int, int] | None:
            """(slot, table index) of the replica's listener, from the state file."""
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(state_file.read_text())
                for key, s in data["slots"].items():
                    name, _, group = key.partition(" ")
                    if name == replica and group:
                        return int(s), int(data["groups"][group])
            return None

        fixed: list[tuple[int, int]] = []  # once known: removal is watched in the table only

        def present() -> bool:
            found = fixed[0] if fixed else slot()
            if found is None or found[0] not in table.read_table(maps.fds, found[1])[1]:
                return False
            fixed[:] = [found]
            return True

    # `ready` in status means the controller put the replica in the data plane; check that
    # the kernel agrees before starting the clock.
    deadline = time.monotonic() + 10
    while not present():
        if time.monotonic() > deadline:
            if mode != "iptables":
                maps.close()
            raise RuntimeError(f"{replica} is ready in status but not in the data plane")
        time.sleep(0.01)

    def wait(t0: float) -> float:
        try:
            while time.monotonic() - t0 < 30:
                if not present():
                    return time.monotonic()
                time.sleep(0.001)
            raise RuntimeError(f"{replica} still in the data plane 30 s after the kill")
        finally:
            if mode != "iptables":
                maps.close()

    return wait


# ------------------------------------------------------------------- footprint


@dataclass
class Footprint:
    idle_seconds: float = 0.0
    idle_rss_mb: float = 0.0
    idle_cpu_pct: float = 0.0
    storm_seconds: float = 0.0
    storm_cycles: int = 0
    storm_rss_max_mb: float = 0.0
    storm_cpu_pct: float = 0.0
    hwm_mb: float = 0.0
    apps_idle: int = 0


def footprint(env: Env, idle: float, storm: float, log: Log) -> Footprint:
    """The daemon's RSS and CPU idle (with one app of 4 replicas in each mode) and during a
    storm of scale 1 <-> 4 in both modes at once."""
    d = env.lbctl()
    assert d.proc is not None
    pid = d.proc.pid
    fp = Footprint()
    apps = {"bench-fp-ebpf": "ebpf", "bench-fp-ipt": "iptables"}
    try:
        for app, mode in apps.items():
            env.run_app(app, 4, mode)
        fp.apps_idle = len(apps)
        for app in apps:
            _wait_ready(env, app, 4)
        time.sleep(2)
        c0, t0 = proc_cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        fp.idle_seconds = time.monotonic() - t0
        fp.idle_cpu_pct = 100 * (proc_cpu_seconds(pid) - c0) / fp.idle_seconds
        fp.idle_rss_mb = status_mb(pid)[0]
        log(f"  footprint idle: {fp.idle_rss_mb:.1f} MB RSS, {fp.idle_cpu_pct:.2f}% CPU")

        stop = threading.Event()
        peak = [fp.idle_rss_mb]

        def sample() -> None:
            while not stop.wait(0.2):
                with contextlib.suppress(OSError):
                    peak[0] = max(peak[0], status_mb(pid)[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        c0, t0 = proc_cpu_seconds(pid), time.monotonic()
        cycles = 0
        while time.monotonic() - t0 < storm:
            for target in (1, 4):
                d.ok("scale", *(f"{a}={target}" for a in apps), timeout=180)
            cycles += 1
        fp.storm_seconds = time.monotonic() - t0
        fp.storm_cpu_pct = 100 * (proc_cpu_seconds(pid) - c0) / fp.storm_seconds
        stop.set()
        sampler.join()
        fp.storm_cycles = cycles
        fp.storm_rss_max_mb = peak[0]
        fp.hwm_mb = status_mb(pid)[1]
        log(f"  footprint storm: {cycles} cycles in {fp.storm_seconds:.0f} s, "
            f"max {fp.storm_rss_max_mb:.1f} MB RSS, {fp.storm_cpu_pct:.1f}% CPU")
    finally:
        for app in apps:
            env.rm_app(app)
    return fp
