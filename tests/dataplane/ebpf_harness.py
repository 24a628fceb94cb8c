"""The kernel harness of the ebpf data-plane tests: a network namespace per test, a pin root
per test, an EbpfDataplane on both, and the TCP replica farm and clients.

Each test gets its own network namespace `lbt-ebpf-<rand>` (lo up, tcp_migrate_req=1) and
its own pin root /sys/fs/bpf/lbctl-test-<rand>, so a real daemon's pins are never touched.
"Replicas" are processes forked by one small Python farm started in the namespace; each
listens with SO_REUSEPORT on 127.0.0.1:PORT and answers every connection with its name, so
the client's tally is what the replicas really served.  Clients run in the namespace too.
Everything is removed in fixture finalizers, even when a test fails.

Test modules import the fixtures from here (`netns`, `pin_root`, `dp`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from lbctl.dataplane.ebpf import EbpfDataplane
from lbctl.model.dataplane import Member

KERNEL = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        os.geteuid() != 0
        or not shutil.which("ip")
        or EbpfDataplane.unavailable_reason() is not None,
        reason=f"needs root, iproute2 and ebpf ({EbpfDataplane.unavailable_reason()})",
    ),
]

PORT = 8080
APP = "web.t"  # a dot on purpose: bpffs refuses dots in names

# The farm: forks one replica per name.  mode: serve (answer name, close), hold (accept and
# keep the connection open), noaccept (listen, never accept), noreuse (serve without
# SO_REUSEPORT).  Prints "name pid" per replica once it listens.
FARM = r"""
import os, signal, socket, sys, time
port, mode, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
for name in names:
    s = socket.socket()
    if mode != "noreuse":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)
    pid = os.fork()
    if pid == 0:
        held = []
        if mode == "noaccept":
            while True:
                time.sleep(60)
        while True:
            c, _ = s.accept()
            c.sendall(name.encode())
            if mode == "hold":
                held.append(c)
            else:
                c.close()
    s.close()
    print(name, pid, flush=True)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(3600)
"""

# The client: n new connections, one after the other, each answered by a name; prints the
# tally as JSON.  With "queue", it opens all n first, says "connected", then reads them all.
CLIENT = r"""
import collections, json, socket, sys
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tally = collections.Counter()
def read(c):
    try:
        data = c.recv(64)
        tally[data.decode() or "eof"] += 1
    except OSError as e:
        tally["error:" + type(e).__name__] += 1
    finally:
        c.close()
if mode == "queue":
    conns = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(n)]
    print("connected", flush=True)
    sys.stdin.readline()
    for c in conns:
        read(c)
else:
    for _ in range(n):
        read(socket.create_connection(("127.0.0.1", port), timeout=5))
print(json.dumps(tally), flush=True)
"""


@dataclass
class Netns:
    name: str
    sleeper: subprocess.Popen[bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.sleeper.pid

    def exec(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def farm(self, names: list[str], mode: str = "serve") -> dict[str, int]:
        """Start replicas; returns name -> pid."""
        p = subprocess.Popen(
            self.exec(sys.executable, "-c", FARM, str(PORT), mode, *names),
            stdout=subprocess.PIPE, start_new_session=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        pids = {}
        for _ in names:
            name, pid = p.stdout.readline().decode().split()
            pids[name] = int(pid)
        return pids

    def queue_client(self, n: int) -> subprocess.Popen[bytes]:
        """A client that opens n connections, prints "connected", and reads them all once a
        line arrives on its stdin."""
        return subprocess.Popen(
            self.exec(sys.executable, "-c", CLIENT, str(PORT), str(n), "queue"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def run(self, script: str, *args: str, stdin: bool = False) -> subprocess.Popen[bytes]:
        """Start a Python script in the namespace in a session of its own (killed with the
        namespace); stdout is a pipe, stdin too when asked."""
        p = subprocess.Popen(
            self.exec(sys.executable, "-c", script, *args), stdout=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else None, start_new_session=True,
        )
        self.procs.append(p)
        return p

    def connect(self, n: int) -> collections.Counter[str]:
        out = subprocess.run(
            self.exec(sys.executable, "-c", CLIENT, str(PORT), str(n), "seq"),
            capture_output=True, check=True, timeout=60,
        )
        return collections.Counter(json.loads(out.stdout))


@pytest.fixture
def netns() -> Iterator[Netns]:
    name = f"lbt-ebpf-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns: Netns | None = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv4.tcp_migrate_req=1"], check=True)  # fmt: skip
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"],
                                   start_new_session=True)  # fmt: skip
        ns = Netns(name, sleeper)
        yield ns
    finally:
        if ns is not None:
            for p in [*ns.procs, ns.sleeper]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)  # our own session: farm + its replicas
                p.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def pin_root() -> Iterator[pathlib.Path]:
    root = pathlib.Path(f"/sys/fs/bpf/lbctl-test-{secrets.token_hex(4)}")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def dp(tmp_path: pathlib.Path, pin_root: pathlib.Path) -> AsyncIterator[EbpfDataplane]:
    d = EbpfDataplane(tmp_path / "state", pin_root)
    yield d
    for app in d.pinned_apps():
        await d.remove(app)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll check() until it holds or timeout passes; its last answer."""
    for _ in range(int(timeout / 0.05)):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


def members(pids: dict[str, int], weight: int = 1) -> list[Member]:
    return [Member(n, p, weight) for n, p in pids.items()]


async def connect(ns: Netns, n: int) -> collections.Counter[str]:
    return await asyncio.to_thread(ns.connect, n)


def assert_even(tally: collections.Counter[str], names: list[str], n: int, tol: float) -> None:
    even = n / len(names)
    worst = max(abs(tally[name] - even) / even for name in names)
    print(f"{len(names)} replicas, {n} connections: min {min(tally[x] for x in names)} "
          f"max {max(tally[x] for x in names)} (even {even:.1f}, worst {worst:.1%})")
    assert sum(tally.values()) == n, tally
    for name in names:
        assert abs(tally[name] - even) <= tol * even, (name, tally[name], even, tally)
