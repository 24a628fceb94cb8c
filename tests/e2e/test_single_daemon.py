"""One daemon per state dir and per bpf pin root, against the real one: a second `lbctl
daemon` on either exits 1 with one line naming the first (its pid), and the first keeps its
socket and serves on (it used to lose its socket to the second, silently)."""

from __future__ import annotations

import subprocess

import pytest

from harness.daemon import LBCTL, Daemon
from harness.host import free_port

pytestmark = pytest.mark.engine


def second(d: Daemon, *paths: str) -> subprocess.CompletedProcess[str]:
    sock = d.tmp / "second.sock"
    return subprocess.run(
        [*LBCTL, "daemon", "--socket", str(sock), "--metrics-addr",
         f"127.0.0.1:{free_port()}", *paths],
        env=d.env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("shared", ["state-dir", "pin-root"])
def test_a_second_daemon_on_the_same_paths_exits_naming_the_first(
    daemon: Daemon, shared: str
) -> None:
    assert daemon.proc is not None
    inode = daemon.socket.stat().st_ino
    if shared == "state-dir":
        paths = ("--state-dir", str(daemon.state_dir),
                 "--bpf-pin-root", str(daemon.pin_root) + "-second")
        what = f"state dir {daemon.state_dir}"
    else:
        paths = ("--state-dir", str(daemon.tmp / "second-state"),
                 "--bpf-pin-root", str(daemon.pin_root))
        what = f"bpf pin root {daemon.pin_root}"
    r = second(daemon, *paths)
    print(f"\nsecond daemon ({shared} shared): exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"lbctl: another lbctl daemon (pid {daemon.proc.pid}) runs on {what}: stop it first, "
        f"or give this one its own --{shared.replace('pin-root', 'bpf-pin-root')}"]
    assert not (daemon.tmp / "second.sock").exists()
    # The first one still has its socket and answers on it.
    assert daemon.socket.stat().st_ino == inode
    assert daemon.api("GET", "/healthz")["ok"] is True
    assert daemon.proc.poll() is None
