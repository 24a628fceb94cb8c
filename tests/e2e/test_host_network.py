"""`--network host` end to end: replicas in the host's own namespace, the real program
steering the host's reuseport group, clients from this host and from a remote host."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from harness.daemon import Daemon, scale_cycles_and_a_kill_under_load
from harness.engine import app_containers
from harness.host import free_port, iptables_save
from harness.traffic import spread
from tests.clients import ns_requests, remote_host

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"
TAG = 20 + (os.getpid() + 101) % 200  # a remote-host subnet apart from test_clients' own


def run_host_app(d: Daemon, name: str, port: int, replicas: int) -> None:
    d.ok("run", name, "--image", IMAGE, "-p", f"0.0.0.0:{port}:{port}", "-e", f"PORT={port}",
         "--network", "host", "--replicas", str(replicas), "--mode", "ebpf", timeout=90)


def _names(name: str, n: int) -> set[str]:
    return {f"{name}-{i}" for i in range(1, n + 1)}


def test_host_network_spreads_local_and_remote_clients(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    before = iptables_save()
    run_host_app(daemon, app_name, port, 3)
    st = daemon.status(app_name)
    assert st["ready"] == 3 and st["network"] == "host", st
    cs = app_containers(app_name)
    # No sandbox and no rule: the replicas' own listeners are the port.
    assert len(cs) == 3 and all(c["HostConfig"]["NetworkMode"] == "host" for c in cs)
    assert iptables_save() == before

    seen = spread(port, 150)
    print(f"host network, 3 replicas, 150 local requests: {dict(seen)}")
    assert set(seen) == _names(app_name, 3) and min(seen.values()) >= 30, seen
    with remote_host(TAG) as r:
        remote: Counter[str] = ns_requests(r, "tcp", r.host_ip, port, 90)
    print(f"host network, 90 requests from a remote host: {dict(remote)}")
    assert set(remote) == _names(app_name, 3) and min(remote.values()) >= 25, remote
    counted = {x["name"]: x["connections_total"] for x in daemon.status(app_name)["replicas"]}
    assert counted == dict(seen + remote), counted  # every connection went through the program

    daemon.ok("rm", app_name)
    assert app_containers(app_name) == []
    assert iptables_save() == before


def test_host_network_scales_under_load_and_survives_a_daemon_kill(
    daemon: Daemon, app_name: str
) -> None:
    port = free_port()
    run_host_app(daemon, app_name, port, 3)
    res, output = scale_cycles_and_a_kill_under_load(daemon, app_name, port)
    print(f"host network, scale 3->1->3 x3 + daemon SIGKILL under load: {res}")
    assert res["requests"] > 2000
    assert res["failed"] == 0, output
    assert set(spread(port, 30)) == _names(app_name, 3)
    st = daemon.status(app_name)
    assert st["ready"] == 3 and len(app_containers(app_name)) == 3, json.dumps(st)


@pytest.mark.parametrize(("args", "says"), [
    (["--mode", "iptables", "-p", "{p}:{p}"], "needs mode ebpf"),
    (["--mode", "ebpf", "-p", "{p}:8080"], "same host and container port"),
    (["--mode", "ebpf", "-p", "{p}:{p}", "--network", "bridge"], "combined"),
])
def test_host_network_refusals_change_nothing(daemon: Daemon, app_name: str,
                                              args: list[str], says: str) -> None:
    port = free_port()
    before = iptables_save()
    r = daemon.cli("run", app_name, "--image", IMAGE, "--network", "host",
                   *[a.format(p=port) for a in args])
    assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert app_containers(app_name) == [] and iptables_save() == before
