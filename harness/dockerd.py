"""The host's Docker engine as a process the tests stop, start and reconfigure: what an engine
upgrade (the package's postinst restarts dockerd) does to lbctl's apps.

dockerd runs here the way scripts/setup.sh starts it (no systemd: a `dockerd` in the
background, logging to DOCKERD_LOG, with its own containerd). Callers hold
harness.host.host_lock(): every other test's containers stop with the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DOCKERD_LOG = "/var/log/lbctl-dockerd.log"
DAEMON_JSON = Path("/etc/docker/daemon.json")


def wait_until(pred: Callable[[], object], timeout: float, what: str,
               interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def engine_up() -> bool:
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                       capture_output=True, text=True, timeout=20, check=False)
    return r.returncode == 0 and bool(r.stdout.strip())


def live_restore_enabled() -> bool:
    """What the engine's info API says (what `lbctl doctor` reads)."""
    out = subprocess.run(["docker", "info", "--format", "{{json .LiveRestoreEnabled}}"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    return bool(json.loads(out))


def pids(name: str) -> list[int]:
    r = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in r.stdout.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(timeout: float = 60) -> None:
    """SIGTERM dockerd and wait until it and its containerd are gone. Without live-restore
    it stops every container first; with it, the containers (their shims) keep running."""
    targets = pids("dockerd") + pids("containerd")
    assert pids("dockerd"), "no dockerd runs: make setup starts one"
    for pid in pids("dockerd"):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(alive(p) for p in targets), timeout, "dockerd to exit", 0.1)


def start(timeout: float = 60) -> None:
    """Start the engine the way scripts/setup.sh does, and wait until it answers."""
    if not any(alive(p) for p in pids("dockerd")):
        subprocess.run(
            ["bash", "-c", f"setsid nohup dockerd >>{DOCKERD_LOG} 2>&1 </dev/null &"], check=True
        )
    wait_until(engine_up, timeout, "the Docker engine to answer", 0.2)


@contextlib.contextmanager
def always_running() -> Iterator[None]:
    """Whatever the body does to the engine, it runs again afterwards."""
    try:
        yield
    finally:
        if not engine_up():
            start()


def reload() -> None:
    """SIGHUP: dockerd reads daemon.json again (live-restore is one of the options it
    applies without a restart)."""
    for pid in pids("dockerd"):
        os.kill(pid, signal.SIGHUP)


@contextlib.contextmanager
def live_restore() -> Iterator[None]:
    """live-restore on, as `lbctl doctor` says to turn it on: {"live-restore": true} in
    /etc/docker/daemon.json and a reload, no restart (so nothing stops). Afterwards the file
    is as it was (or absent again) and the engine reloaded with it."""
    before = DAEMON_JSON.read_bytes() if DAEMON_JSON.exists() else None
    config = json.loads(before) if before else {}
    was = live_restore_enabled()
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps({**config, "live-restore": True}, indent=2) + "\n")
    try:
        reload()
        wait_until(live_restore_enabled, 20, "dockerd to reload with live-restore")
        yield
    finally:
        with always_running():
            pass
        # A reload without the file keeps the running setting: reload the old value said
        # explicitly, then put the file back as it was.
        DAEMON_JSON.write_text(json.dumps({**config, "live-restore": was}, indent=2) + "\n")
        reload()
        wait_until(lambda: live_restore_enabled() == was, 20,
                   "dockerd to reload with its own live-restore setting")
        if before is None:
            DAEMON_JSON.unlink(missing_ok=True)
        else:
            DAEMON_JSON.write_bytes(before)
