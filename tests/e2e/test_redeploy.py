"""A redeploy on the same port at once: `rm`, then `run` again, right after the old app served
short connections. The port keeps TIME_WAIT sockets for about a minute; lbctl's free-port
check must not take them for a server (it did: "port ... is already in use" for ~60 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.host import free_port
from harness.traffic import spread

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"


def time_waits(port: int) -> int:
    """TIME_WAIT sockets whose local port is `port`, in the host's namespace."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "06":
                n += 1
    return n


def test_host_network_app_redeployed_at_once_on_its_port(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    run = ["run", app_name, "--image", IMAGE, "-p", f"0.0.0.0:{port}:{port}", "-e",
           f"PORT={port}", "--network", "host", "--replicas", "2", "--mode", "ebpf"]
    daemon.ok(*run, timeout=90)
    assert sum(spread(port, 50).values()) == 50
    daemon.ok("rm", app_name)
    waiting = time_waits(port)
    print(f"\nredeploy: {waiting} TIME_WAIT sockets on port {port} after rm")
    assert waiting > 0, "no TIME_WAIT left on the port: the test would prove nothing"
    r = daemon.cli(*run, timeout=90)  # at once, well within the minute of TIME_WAIT
    assert r.returncode == 0, r.stderr
    assert time_waits(port) > 0  # it was still there when the run went through
    seen = spread(port, 40)
    assert set(seen) == {f"{app_name}-1", f"{app_name}-2"}, seen
    daemon.ok("rm", app_name)


def test_a_real_listener_still_refuses_the_run(daemon: Daemon, app_name: str) -> None:
    """The check binds with SO_REUSEADDR now; a server listening on the port (with that option,
    as servers set it) is still found, for a host-network app and for a published one."""
    import socket

    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen()
        for extra in (["-p", f"0.0.0.0:{port}:{port}", "--network", "host", "--mode", "ebpf"],
                      ["-p", f"127.0.0.1:{port}:8080"]):
            r = daemon.cli("run", app_name, "--image", IMAGE, *extra)
            assert r.returncode == 2, r.stderr
            assert f":{port}/tcp is already in use" in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1, r.stderr
    assert daemon.api("GET", "/apps")["apps"] == []
