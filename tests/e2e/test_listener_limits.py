"""Nobody's connections take the daemon's file descriptors: floods of idle and half-sent
(slowloris) connections against both listeners of a real daemon, while it must fail a killed
replica over.

- As a member (uid nobody, in the lbctl group) against the control socket and the metrics
  port with the shipped caps: each listener holds at most its caps, the rest is answered 503
  and closed, idle and slow clients are cut, the daemon's open files stay bounded, root's
  requests go through, and a killed replica leaves the data plane within a second.
- As root (whose connections the caps do not count) with the daemon's RLIMIT_NOFILE lowered
  by prlimit: the listeners stop accepting at the fd reserve, and syncs (iptables-restore,
  engine calls, probes) go on: a killed replica's rule goes within a second and its
  replacement's comes.
"""

from __future__ import annotations

import grp
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from harness.daemon import Daemon
from harness.engine import app_containers, docker
from harness.host import free_port, iptables_save
from harness.traffic import spread
from tests.e2e.members import open_socket_daemon

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"
NOBODY = 65534
FLOOD = 2000  # connections the flood keeps trying to hold, both listeners together

# Keeps up to N connections open to each target for SECONDS, reconnecting as they are closed,
# half of them idle and half sending a never-ending head one byte a second (slowloris).
# Prints what happened as JSON: per target, connects tried, answered 503, closed by the
# daemon after being held (cut), and the most held at once.
FLOOD_SCRIPT = r"""
import json, resource, selectors, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
targets, n, seconds = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
stats = {t["name"]: {"tried": 0, "refused": 0, "cut": 0, "held_max": 0, "failed": 0}
         for t in targets}
conns = {t["name"]: {} for t in targets}
def connect(t):
    st = stats[t["name"]]
    st["tried"] += 1
    fam = socket.AF_UNIX if t["kind"] == "unix" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(t["addr"] if t["kind"] == "unix" else tuple(t["addr"]))
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        st["failed"] += 1  # the queue is full: the daemon is not accepting
        s.close()
        return
    slow = st["tried"] % 2 == 0
    conns[t["name"]][s] = {"slow": slow, "sent": 0, "at": time.monotonic()}
    sel.register(s, selectors.EVENT_READ, t)
end = time.monotonic() + seconds
tick = 0.0
while time.monotonic() < end:
    for t in targets:
        k = 0
        while len(conns[t["name"]]) < n // len(targets) and k < 100:
            connect(t)
            k += 1
        st = stats[t["name"]]
        st["held_max"] = max(st["held_max"], len(conns[t["name"]]))
    for key, _ in sel.select(timeout=0.05):
        s, t = key.fileobj, key.data
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        st = stats[t["name"]]
        if data.startswith(b"HTTP/1.1 503"):
            st["refused"] += 1
        else:
            st["cut"] += 1
        sel.unregister(s)
        conns[t["name"]].pop(s, None)
        s.close()
    if time.monotonic() - tick >= 1.0:
        tick = time.monotonic()
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
        for t in targets:
            for s, c in list(conns[t["name"]].items()):
                if c["slow"]:
                    byte = head[c["sent"]:c["sent"] + 1] or b"a"
                    try:
                        s.send(byte)
                        c["sent"] += 1
                    except OSError:
                        pass
print(json.dumps(stats), flush=True)
"""


def flood(targets: list[dict[str, Any]], seconds: float, as_uid: int | None,
          ) -> subprocess.Popen[str]:
    prefix = [] if as_uid is None else [
        "setpriv", f"--reuid={as_uid}", f"--regid={as_uid}",
        f"--groups={grp.getgrnam('lbctl').gr_gid}"]
    return subprocess.Popen([*prefix, sys.executable, "-c", FLOOD_SCRIPT, json.dumps(targets),
                             str(FLOOD), str(seconds)], stdout=subprocess.PIPE, text=True)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(?:\{([^}]*)\})? (\S+)$", line)
        if m and m[1] == name and all(f'{k}="{v}"' in (m[2] or "") for k, v in labels.items()):
            total += float(m[3])
    return total


@pytest.fixture
def open_socket(daemon: Daemon) -> Iterator[Daemon]:
    """The test's daemon again, its socket in a directory members can traverse (pytest's
    are root's alone), with short timeouts so that the cuts show within the test."""
    if subprocess.run(["getent", "group", "lbctl"], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", "--system", "lbctl"], check=True)  # as `make setup` does
    with open_socket_daemon(daemon, "--api-idle-timeout", "3", "--api-header-timeout", "2"):
        yield daemon


def targets(d: Daemon) -> list[dict[str, Any]]:
    return [{"name": "control", "kind": "unix", "addr": str(d.socket)},
            {"name": "metrics", "kind": "tcp", "addr": ["127.0.0.1", d.metrics_port]}]


def replacement_ip(app: str, victim: str) -> str | None:
    """The address of the running replica that took the victim's name, if there is one yet.
    The daemon removes the victim meanwhile: a container listed and gone before its inspect
    is a try again, not a failure."""
    try:
        cs = app_containers(app)
    except RuntimeError:
        return None
    for c in cs:
        if c["Name"] == f"/{app}-2" and c["Id"] != victim and c["State"]["Running"]:
            return str(c["NetworkSettings"]["IPAddress"])
    return None


def replica_id(app: str, index: int) -> str:
    return str(next(c["Id"] for c in app_containers(app) if c["Name"] == f"/{app}-{index}"))


@pytest.mark.parametrize("mode", ["ebpf", "iptables"])
def test_member_floods_hold_no_more_than_the_caps_and_failover_goes_on(
    open_socket: Daemon, app_name: str, mode: str
) -> None:
    d = open_socket
    assert d.proc is not None
    port = free_port()
    d.ok("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080", "--replicas", "3",
         "--mode", mode, timeout=90)
    before = open_files(d.proc.pid)
    victim = replica_id(app_name, 2)

    def victim_ready() -> bool:
        return any(r["container_id"] == victim and r["state"] == "ready"
                   for r in d.status(app_name)["replicas"])

    proc = flood(targets(d), 14, NOBODY)
    try:
        time.sleep(5)  # the flood is at full strength, and the first cuts have happened
        during = []
        for _ in range(5):
            during.append(open_files(d.proc.pid))
            time.sleep(0.2)
        assert victim_ready()  # root's requests go through
        t_kill = time.monotonic()
        docker("kill", victim)
        d.wait(lambda: not victim_ready(), 5, "killed replica out of the data plane")
        left = time.monotonic() - t_kill
        d.wait(lambda: d.status(app_name)["ready"] == 3, 60, "replacement ready")
        d.ok("scale", f"{app_name}=4", timeout=60)  # engine calls and syncs, under the flood
    finally:
        out, _ = proc.communicate(timeout=60)
    stats = json.loads(out)
    settings = {"control": 32, "metrics": 128}  # ApiSettings' per-uid and metrics caps
    print(f"\n[{mode}] member flood of {FLOOD} connections for 14 s: {stats}; daemon open "
          f"files {before} before, {max(during)} at most during; killed replica out of the "
          f"data plane after {left:.3f}s")
    for name, st in stats.items():
        assert st["refused"] > 100, (name, st)  # over the cap: answered 503 and closed
        assert st["cut"] > 0, (name, st)  # idle and slowloris connections cut
    # What the daemon holds: its own files, the caps' worth of connections, root's requests.
    assert max(during) <= before + sum(settings.values()) + 30, (before, during)
    assert left < 1.0, f"the killed replica stayed in the data plane for {left:.3f}s"
    assert set(spread(port, 40)) == {f"{app_name}-{i}" for i in range(1, 5)}
    events = {e: metric(d.metrics_port, "lbctl_listener_events_total", event=e)
              for e in ("refused_cap", "refused_uid_cap", "cut_idle", "cut_header")}
    print(f"[{mode}] listener events: {events}")
    assert events["refused_uid_cap"] > 0 and events["refused_cap"] > 0, events
    assert events["cut_idle"] > 0 and events["cut_header"] > 0, events
    d.ok("rm", app_name)


def test_the_fd_reserve_keeps_syncs_going_at_a_lowered_limit(
    daemon: Daemon, app_name: str
) -> None:
    """Root's connections are not capped; only the reserve stands between them and the
    fds a sync needs. With the daemon's limit lowered to what it has open plus the reserve
    plus 100, a flood of 2000 connections from root leaves syncs working: a killed replica's
    DNAT rule goes within a second and its replacement's comes (engine calls, a probe, a
    restore). The old daemon ran out of files here: no iptables-restore, no engine call."""
    d = daemon
    assert d.proc is not None
    port = free_port()
    d.ok("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080", "--replicas", "3",
         "--mode", "iptables", timeout=90)
    pid = d.proc.pid
    reserve = 256  # ApiSettings.fd_reserve
    limit = open_files(pid) + reserve + 100
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)
    victim = replica_id(app_name, 2)
    victim_ip = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", victim).strip()
    assert f"{victim_ip}:8080" in iptables_save()

    proc = flood(targets(d), 12, None)
    try:
        time.sleep(3)
        held = open_files(pid)
        t_kill = time.monotonic()
        docker("kill", victim)
        while f"{victim_ip}:8080" in iptables_save():
            assert time.monotonic() - t_kill < 10, "the killed replica's rule stayed"
            time.sleep(0.01)
        left = time.monotonic() - t_kill
        deadline = time.monotonic() + 45
        while True:
            ip = replacement_ip(app_name, victim)
            if ip and f"{ip}:8080" in iptables_save():
                break
            assert time.monotonic() < deadline, "no replacement in the rules"
            time.sleep(0.1)
        replaced_after = time.monotonic() - t_kill
        still = proc.poll() is None
    finally:
        out, _ = proc.communicate(timeout=60)
    stats = json.loads(out)
    print(f"\nroot flood of {FLOOD} connections, daemon limit {limit} (reserve {reserve}): "
          f"{stats}; daemon open files {held} under the flood; killed replica's rule gone "
          f"after {left:.3f}s, its replacement's in after {replaced_after:.1f}s")
    assert still, "the flood ended before the replacement came: the test proves nothing"
    assert held <= limit - reserve + 5, (held, limit)
    assert left < 1.0, f"the killed replica's rule stayed {left:.3f}s"
    log = d.log.read_text()
    assert "Too many open files" not in log, log[-3000:]
    assert "not accepting connections for now" in log
    # The flood is gone: the listeners take connections again, and everything is in step.
    d.wait(lambda: d.status(app_name)["ready"] == 3, 30, "status again")
    assert metric(d.metrics_port, "lbctl_listener_events_total", event="paused_fd_reserve") > 0
    assert set(spread(port, 30)) == {f"{app_name}-{i}" for i in (1, 2, 3)}
