"""Real HTTP traffic to an app on 127.0.0.1, one new connection per request (so every request
goes through the kernel's balancing decision): one request, a spread over replicas, and a
bounded background load that keeps every outcome with its time.

The demo and bench images answer `GET /` with the replica's name.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter


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
    """`n` requests in a row: how many each replica answered."""
    return Counter(get(port) for _ in range(n))


class Load:
    """New connection per request from `clients` threads (or, `keepalive`, one connection per
    thread for as long as it lasts), bounded in count and time; every outcome is kept with its
    time so a test can say when failures happened, and answers other than a 200 are counted
    apart from refused or broken connections (`non2xx`). Unlike wrk, which gives up when its
    first connect is refused, it keeps trying: it can run before the app serves."""

    def __init__(self, port: int, clients: int = 4, seconds: float = 60,
                 max_requests: int = 200_000, keepalive: bool = False,
                 timeout: float = 3.0) -> None:
        """`timeout`: seconds one request (its connect included) may take before it counts
        as failed."""
        self.port = port
        self.keepalive = keepalive
        self.timeout = timeout
        self.non2xx = 0
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
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self._budget <= 0:
                    break
                self._budget -= 1
            start = time.monotonic()
            try:
                if not self.keepalive:
                    who = get(self.port, timeout=self.timeout)
                else:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                          timeout=self.timeout)
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    who = resp.read().decode().strip()
                    if resp.will_close:
                        conn.close()
                        conn = None
                    if resp.status != 200:
                        raise OSError(f"HTTP {resp.status}")
                with self._lock:
                    self.ok_at.append(time.monotonic())
                    self.latency.append((start, self.ok_at[-1] - start))
                    self.seen[who] += 1
            except (OSError, http.client.HTTPException) as e:
                if conn is not None and not str(e).startswith("HTTP "):
                    conn.close()
                    conn = None
                with self._lock:
                    self.failed.append((time.monotonic(), repr(e)))
                    self.failed_started.append(start)
                    self.non2xx += str(e).startswith("HTTP ")
                time.sleep(0.02)  # a client retries a refused connection after a pause
            time.sleep(0.001)
        if conn is not None:
            conn.close()

    def slowest(self) -> float:
        """Seconds the slowest answered request took, its connect included (what a client
        held by a traffic hold waits; wrk's latency starts after the connect)."""
        with self._lock:
            return max((s for _, s in self.latency), default=0.0)

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
