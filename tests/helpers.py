"""Shared test helpers: a real `lbctl daemon` process on a private socket, state dir and pin root,
talking to the real engine, and helpers to send real HTTP traffic to 127.0.0.1.

Test apps are named `t<pid>-...` so cleanup can find exactly what the tests made.
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
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LBCTL = [sys.executable, "-m", "lbctl"]
PREFIX = f"t{os.getpid() % 10000}"


E2E_LOCK = "/run/lock/lbctl-e2e.lock"
PODMAN_HOST = "unix:///run/podman/podman.sock"  # what `make setup ENGINE=podman` serves
# engine -> (CLI on this host, --docker-host for the daemon; None: the default, Docker)
ENGINES: dict[str, tuple[str, str | None]] = {
    "docker": ("docker", None),
    "podman": ("podman", PODMAN_HOST),
}


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """One lbctl daemon owns the host's LBCTL- chains: every test (and benchmark) that starts
    a daemon or syncs rules holds this lock, so two runs on one machine wait for each other
    instead of wiping each other's rules."""
    import fcntl

    os.makedirs(os.path.dirname(E2E_LOCK), exist_ok=True)
    with open(E2E_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> str:
    """One request on a new connection; returns the replica name that answered."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode().strip()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}")
        return body
    finally:
        conn.close()


def spread(port: int, n: int) -> Counter[str]:
    return Counter(get(port) for _ in range(n))


class Daemon:
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
                 "--stop-grace", "5",
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
        conn = _UnixHTTPConnection(str(self.socket))
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

    def wait(self, pred: Any, timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ApiFailure):
                if pred():
                    return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


class ApiFailure(Exception):
    def __init__(self, status: int, data: Any) -> None:
        super().__init__(f"{status}: {data}")
        self.status = status
        self.data = data


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=180)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(180)
        self.sock.connect(self.path)


def docker(*args: str, check: bool = True, cli: str = "docker") -> str:
    """The engine's CLI (`cli="podman"` for Podman's): stdout, or RuntimeError."""
    r = subprocess.run([cli, *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cli} {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def app_containers(app: str, cli: str = "docker") -> list[dict[str, Any]]:
    ids = docker("ps", "-aq", "--filter", f"label=lbctl.app={app}", cli=cli).split()
    if not ids:
        return []
    data: list[dict[str, Any]] = json.loads(docker("inspect", *ids, cli=cli))
    return data


def iptables_save() -> str:
    """Every table, without counters and comment lines (timestamps)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#")) + "\n"


def cleanup_leftovers(cli: str = "docker") -> None:
    label = "{{index .Labels %s}}" if cli == "podman" else "{{.Label %s}}"
    fmt = " ".join(["{{.ID}}", label % '"lbctl.app"', label % '"lbctl.role"'])
    out = docker("ps", "-a", "--format", fmt, check=False, cli=cli)
    rows = [[*ln.split(), "", ""][:3] for ln in out.splitlines()]
    ours = [(i, role) for i, app, role in rows if app.startswith(PREFIX)]
    # Podman refuses to remove a sandbox while replicas that joined it exist: those first.
    for batch in ([i for i, r in ours if r != "sandbox"], [i for i, r in ours if r == "sandbox"]):
        if batch:
            docker("rm", "-f", *batch, check=False, cli=cli)


class Wrk:
    """A bounded wrk run in the background (new connection per request by default)."""

    def __init__(self, url: str, seconds: int, connections: int = 16, close: bool = True) -> None:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "3s"]
        if close:
            cmd += ["-H", "Connection: close"]
        self.proc = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, text=True)
        self.output = ""

    def result(self) -> dict[str, Any]:
        self.output, _ = self.proc.communicate(timeout=120)
        return parse_wrk(self.output)


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's counts as a dict (requests, connect/read/write/timeout, non2xx, failed): the
    benchmark's parser, so tests and bench read wrk the same way."""
    from bench.wrk import parse

    return parse(out).to_json()


class Load:
    """New connection per request from `clients` threads, bounded in count and time; every
    outcome is kept with its time so a test can say when failures happened."""

    def __init__(self, port: int, clients: int = 4, seconds: float = 60,
                 max_requests: int = 200_000) -> None:
        self.port = port
        self.seen: Counter[str] = Counter()
        self.ok_at: list[float] = []
        self.latency: list[tuple[float, float]] = []  # (start, seconds) of each answered one
        self.failed: list[tuple[float, str]] = []
        self.failed_started: list[float] = []  # when each failed request was sent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._budget = max_requests
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    @property
    def ok(self) -> int:
        return len(self.ok_at)

    @property
    def sent(self) -> int:
        return self.ok + len(self.failed)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self._budget <= 0:
                    return
                self._budget -= 1
            start = time.monotonic()
            try:
                who = get(self.port, timeout=3)
                with self._lock:
                    self.ok_at.append(time.monotonic())
                    self.latency.append((start, self.ok_at[-1] - start))
                    self.seen[who] += 1
            except OSError as e:
                with self._lock:
                    self.failed.append((time.monotonic(), repr(e)))
                    self.failed_started.append(start)
            time.sleep(0.001)

    def between(self, t0: float, t1: float) -> tuple[int, int]:
        """(ok, failed) whose outcome was known in [t0, t1)."""
        with self._lock:
            ok = sum(1 for t in self.ok_at if t0 <= t < t1)
            bad = sum(1 for t, _ in self.failed if t0 <= t < t1)
        return ok, bad

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
