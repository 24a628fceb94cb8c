"""A real `lbctl daemon` process on a private API socket, state dir, metrics port and bpf pin
root, talking to the real engine: what the end-to-end tests and the benchmarks both run
lbctl as, so they exercise it the way users do (CLI and HTTP API over the Unix socket).

The caller holds harness.host.host_lock() while the daemon runs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import PREFIX
from harness.activation import build_shim
from harness.host import free_port
from harness.wrk import Wrk

LBCTL = [sys.executable, "-m", "lbctl"]


class ApiFailure(Exception):
    """The daemon's API answered with an HTTP error (status and decoded JSON body)."""

    def __init__(self, status: int, data: Any) -> None:
        super().__init__(f"{status}: {data}")
        self.status = status
        self.data = data


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the daemon's Unix socket (the API's only listener)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=180)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(180)
        self.sock.connect(self.path)


class Daemon:
    """One `lbctl daemon` under `tmp` (socket, state dir, log); `start()` returns once it has
    synced, `cli()`/`ok()` run `lbctl` against it, `api()` calls its HTTP API."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.socket = tmp / "lbctl.sock"
        self.state_dir = tmp / "state"
        self.metrics_port = free_port()
        self.pin_root = Path(f"/sys/fs/bpf/lbctl-{PREFIX}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"
        self.extra_env: dict[str, str] = {}
        self.docker_host: str | None = None  # --docker-host (None: Docker's default socket)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LBCTL_SOCKET": str(self.socket), "PYTHONUNBUFFERED": "1",
                **self.extra_env}

    def start(self, *extra: str) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*LBCTL, "daemon", "--state-dir", str(self.state_dir),
                 "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                 "--bpf-pin-root", str(self.pin_root), "--drain-timeout", "5",
                 "--stop-grace", "5", "--activation-shim", str(build_shim()),
                 *(["--docker-host", self.docker_host] if self.docker_host else []), *extra],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            try:
                if self.api("GET", "/healthz").get("synced"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not sync in 30 s: {self.log.read_text()[-2000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        conn = UnixHTTPConnection(str(self.socket))
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
            if resp.status >= 400:
                raise ApiFailure(resp.status, data)
            return data
        finally:
            conn.close()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*LBCTL, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def ok(self, *args: str, timeout: float = 120) -> str:
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, f"lbctl {' '.join(args)} -> {r.returncode}: {r.stderr}"
        return r.stdout

    def status(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api("GET", f"/apps/{name}")
        return data

    def wait(self, pred: Callable[[], Any], timeout: float = 30,
             what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ApiFailure):
                if pred():
                    return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


def scale_cycles_and_a_kill_under_load(d: Daemon, app: str, port: int) -> tuple[dict[str, Any],
                                                                                 str]:
    """wrk (new connection per request) on 127.0.0.1:`port` while `app` is scaled 3 -> 1 -> 3
    three times, the daemon is SIGKILLed, started again, and the app scaled 3 -> 1 -> 3 once
    more: wrk's counts and its output."""
    wrk = Wrk(f"http://127.0.0.1:{port}/", seconds=30)
    try:
        time.sleep(1.0)
        for _ in range(3):
            d.ok("scale", f"{app}=1")
            d.ok("scale", f"{app}=3")
        d.kill()
        time.sleep(1.0)  # serving on without the daemon: the program and maps are pinned
        d.start()
        d.ok("scale", f"{app}=1")
        d.ok("scale", f"{app}=3")
    finally:
        res = wrk.result()
    return res, wrk.output
