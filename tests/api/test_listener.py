"""The guarded listener with real sockets and a small aiohttp app: caps (in all, per caller,
root not counted), idle/slowloris/slow-body cuts, and the fd reserve, against the process's
real RLIMIT_NOFILE. (tests/e2e/test_listener_limits.py floods a real daemon's listeners.)"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from lbctl.api.listener import FdBudget, GuardedListener, ListenerLimits, open_files

NOBODY = 65534


class Served:
    """A GuardedListener serving `GET /` and `POST /echo` on a Unix socket, and what it
    reported."""

    def __init__(self, path: Path, limits: ListenerLimits, reserve: int = 0) -> None:
        self.path = path
        self.events: list[str] = []
        self.guard = GuardedListener(limits, FdBudget(reserve),
                                     lambda label, event: self.events.append(event))
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello")

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read())

        app = web.Application(middlewares=[self.guard.middleware])
        app.router.add_get("/", hello)
        app.router.add_post("/echo", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(self.path))
        sock.listen(128)
        os.chmod(self.path, 0o777)
        await self.guard.start(self.runner, [sock])

    async def stop(self) -> None:
        self.guard.close()
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory any uid may traverse (pytest's own are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="lbctl-listener-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def limits(**kw: float) -> ListenerLimits:
    base: dict[str, float] = {"max_connections": 0, "idle_timeout": 30.0,
                              "header_timeout": 10.0, "max_per_uid": 0}
    base.update(kw)
    return ListenerLimits("control", "control socket", int(base["max_connections"]),
                          base["idle_timeout"], base["header_timeout"],
                          int(base["max_per_uid"]))


@pytest.fixture
async def served(sock_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    s = Served(sock_dir / "api.sock", request.param)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def get(path: Path, writer_keep: list[asyncio.StreamWriter] | None = None) -> bytes:
    """One `GET /` on a new connection (kept open in `writer_keep` when given): the answer's
    status line."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    if writer_keep is not None:
        writer_keep.append(writer)
        await asyncio.wait_for(reader.readuntil(b"hello"), 5)
    else:
        writer.close()
    return line


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the other end closes the connection within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


# ---- caps ----------------------------------------------------------------------------------


# Idle connections are held by members (uid nobody), in a process of their own; root's
# connections are not counted (it is never locked out).
HOLD = r"""
import json, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, answers = [], []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(0.3)
    try:
        answers.append(s.recv(4096).decode().split("\r\n")[0] or "closed")
        s.close()
    except TimeoutError:
        answers.append("held")
        held.append(s)
print(json.dumps(answers), flush=True)
sys.stdin.readline()
"""


def release(proc: subprocess.Popen[str]) -> None:
    proc.communicate("\n", timeout=10)


def hold_as(uid: int, path: Path, n: int) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable,
         "-c", HOLD, str(path), str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


@pytest.mark.parametrize("served", [limits(max_connections=4, max_per_uid=3)], indirect=True)
async def test_caps_in_all_and_per_caller_and_root_is_not_counted(served: Served) -> None:
    loop = asyncio.get_running_loop()
    first, answers = await loop.run_in_executor(None, hold_as, NOBODY, served.path, 5)
    second: subprocess.Popen[str] | None = None
    try:
        assert answers[:3] == ["held"] * 3, answers
        assert answers[3:] == ["HTTP/1.1 503 Service Unavailable"] * 2, answers
        second, more = await loop.run_in_executor(None, hold_as, NOBODY - 1, served.path, 3)
        assert more == ["held", "HTTP/1.1 503 Service Unavailable",
                        "HTTP/1.1 503 Service Unavailable"], more  # 4 in all
        assert served.events.count("refused_uid_cap") == 2
        assert served.events.count("refused_cap") == 2
        # Root still gets in, past every cap.
        keep: list[asyncio.StreamWriter] = []
        for _ in range(6):
            assert await get(served.path, keep) == b"HTTP/1.1 200 OK\r\n"
        assert served.guard.count() == 4 + 6
        for w in keep:
            w.close()
    finally:
        for p in (first, second):
            if p is not None:
                await loop.run_in_executor(None, release, p)
    # Once they are gone, the member gets in again.
    await asyncio.sleep(0.2)
    again, answers = await loop.run_in_executor(None, hold_as, NOBODY, served.path, 1)
    await loop.run_in_executor(None, lambda: again.communicate("\n", timeout=10))
    assert answers == ["held"]


async def test_the_refusal_is_one_line_of_json(sock_dir: Path) -> None:
    s = Served(sock_dir / "api.sock", limits(max_connections=1))
    await s.start()
    try:
        loop = asyncio.get_running_loop()
        proc, _ = await loop.run_in_executor(None, hold_as, NOBODY, s.path, 1)
        try:
            out = await loop.run_in_executor(None, lambda: subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 sys.executable, "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); "
                 "s.connect(sys.argv[1]); print(s.recv(4096).decode())", str(s.path)],
                capture_output=True, text=True, timeout=10))
        finally:
            await loop.run_in_executor(None, lambda: proc.communicate("\n", timeout=10))
        head, _, body = out.stdout.partition("\n\n")  # text mode: \r\n read as \n
        assert head.startswith("HTTP/1.1 503")
        msg = json.loads(body)["error"]
        assert "\n" not in msg and "too many connections to the control socket (1 open" in msg, msg
    finally:
        await s.stop()


# ---- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("served", [limits(idle_timeout=0.5, header_timeout=1.0)],
                         indirect=True)
async def test_idle_and_slowloris_connections_are_cut(served: Served) -> None:
    # Idle from the start: cut after idle_timeout.
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    assert await closed_by_peer(reader, 5)
    writer.close()
    # A byte every 0.2 s of a head that would take 6 s: cut after header_timeout, long
    # before the head is whole.
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20 + b"\r\n\r\n"
    sent = 0
    with pytest.raises(ConnectionError):
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.2)
            if reader.at_eof():
                raise ConnectionResetError
    assert sent < len(head)
    writer.close()
    # A whole head and a body that stops half-way: cut too, and the handler's failed read
    # is no error of the daemon's.
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    assert await closed_by_peer(reader, 5)
    writer.close()
    assert served.events == ["cut_idle", "cut_header", "cut_body"], served.events
    assert served.guard.count() == 0


@pytest.mark.parametrize("served", [limits(idle_timeout=0.5, header_timeout=0.5)],
                         indirect=True)
async def test_a_busy_keep_alive_client_is_never_cut(served: Served) -> None:
    """Requests closer together than idle_timeout keep a connection for as long as they
    come, whatever their number; a handler's time is its own."""
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    for _ in range(8):  # 2 s in all, four idle timeouts
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"HTTP/1.1 200 OK\r\n"
        await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        await asyncio.sleep(0.25)
    body = b"x" * 5000
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body)
    assert await asyncio.wait_for(reader.readline(), 5) == b"HTTP/1.1 200 OK\r\n"
    writer.close()
    assert served.events == []


# ---- the fd reserve --------------------------------------------------------------------------


async def test_no_accept_within_the_fd_reserve(sock_dir: Path) -> None:
    """With the soft RLIMIT_NOFILE just above what is open plus the reserve, the listener
    takes connections until it reaches the reserve, then leaves the rest in the kernel's
    queue, and takes them as room comes back."""
    reserve = 16
    s = Served(sock_dir / "api.sock", limits(), reserve=reserve)
    await s.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        keep: list[asyncio.StreamWriter] = []
        await get(s.path, keep)  # the pools and buffers a connection brings, once
        room = 6
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files() + reserve + room, hard))
        waiting = []
        for _ in range(room + 6):
            r, w = await asyncio.open_unix_connection(str(s.path))  # queued by the kernel
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            waiting.append((r, w))
        answered = 0
        for r, _ in waiting:
            try:
                await asyncio.wait_for(r.readline(), 0.5)
                answered += 1
            except TimeoutError:
                pass
        # Each answered connection is one fd of the listener's, and the clients' own ends
        # (this process) take one each too.
        assert 0 < answered < len(waiting), answered
        assert "paused_fd_reserve" in s.events
        assert s.guard.budget.room() <= 0
        # Room again (the limit back): every queued client is answered.
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for r, _ in waiting:
            line = await asyncio.wait_for(r.readline(), 5) if not r.at_eof() else b""
            assert line in (b"HTTP/1.1 200 OK\r\n", b"hello") or line.startswith(b"Content"), line
        for _, w in waiting:
            w.close()
        for w in keep:
            w.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await s.stop()


async def test_the_cli_over_its_cap_fails_in_one_line(sock_dir: Path) -> None:
    """The 503 is sent at once and the connection closed, usually before the CLI wrote its
    request (a broken pipe): either way, one line and exit code 1, no traceback."""
    s = Served(sock_dir / "api.sock", limits(max_per_uid=1))
    await s.start()
    loop = asyncio.get_running_loop()
    try:
        proc, held = await loop.run_in_executor(None, hold_as, NOBODY, s.path, 1)
        try:
            assert held == ["held"]
            r = await loop.run_in_executor(None, lambda: subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 sys.executable, "-m", "lbctl", "--socket", str(s.path), "status"],
                capture_output=True, text=True, timeout=30, cwd="/",
                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parents[2])}))
        finally:
            await loop.run_in_executor(None, lambda: proc.communicate("\n", timeout=10))
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("lbctl: "), r.stderr
        assert "connection" in r.stderr
    finally:
        await s.stop()
