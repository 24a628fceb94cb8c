"""The daemon's listeners (the control socket, the metrics port), guarded so that no client
can take the file descriptors every sync needs.

Every connection is a file descriptor of the daemon's, and so is every `iptables-restore`
pipe, eBPF map and program, engine connection and replica listener borrowed with
pidfd_getfd. Unguarded, the metrics port (no authentication: any local user) and the control
socket accepted without limit and kept a half-sent request open for good; with the limit
scaled down, idle connections left the daemon unable to spawn iptables-restore or open a
socket, and every app's sync stopped. So each listener here:

  * caps its connections: `max_connections` in all, and on the control socket
    `max_per_uid` per caller (SO_PEERCRED, read at accept). Root's connections are not
    counted: a member filling the socket never locks root out. One over a cap is answered
    with a 503 and one line, and closed at once;
  * cuts a connection that is slow to ask: `idle_timeout` from its accept (or its last
    response) to the first byte of a request, `header_timeout` from that byte to the whole
    head, and as long again for the body (slowloris: a client sending a byte a second is cut
    after `header_timeout`). A request being handled has no limit of its own here (`rm`
    waits for its drains);
  * stops accepting while the process's open files are within `fd_reserve` of its soft
    RLIMIT_NOFILE (the daemon raises the limit at start), and accepts again as connections
    close: the reserve is what syncs run on.

The kernel's queue of connections not yet accepted is as deep as the host allows (BACKLOG),
so that a client reconnecting as fast as it is refused does not fill it for everyone else.
Connections are accepted by this module's own loop (not asyncio's server) so that the fd
budget and the caller are known before a connection is taken on, and handed to aiohttp's
request handler through a protocol that watches the phases above. aiohttp marks where a
request starts and ends through `middleware`, which the application lists first.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger("lbctl.api")

_UCRED = struct.Struct("3i")
_ACCEPTS_PER_WAKEUP = 128  # then the loop runs other work before taking more
# The kernel's queue of connections not accepted yet (capped by net.core.somaxconn, 4096 by
# default): deep, so that a client reconnecting as fast as it is refused cannot fill it for
# everyone else, root included, whose connects would fail at once (EAGAIN on a Unix socket).
BACKLOG = socket.SOMAXCONN
_RESUME_POLL = 0.25  # seconds between two looks at the fd budget while paused


def open_files() -> int:
    """File descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd")) - 1  # the listing's own


@dataclass(frozen=True)
class FdBudget:
    """Whether a client may take one more file descriptor: only while the process keeps
    `reserve` below its soft RLIMIT_NOFILE (read each time: prlimit may change it)."""

    reserve: int

    def room(self) -> int:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 1 << 30
        return soft - self.reserve - open_files()


# What a listener reports (lbctl_listener_events_total's `event` label).
EVENTS = ("refused_cap", "refused_uid_cap", "cut_idle", "cut_header", "cut_body",
          "paused_fd_reserve")


@dataclass(frozen=True)
class ListenerLimits:
    label: str  # "control", "metrics": the metrics' label
    name: str  # "control socket", "metrics port": what the logs and the 503 say
    max_connections: int  # 0: no cap
    idle_timeout: float
    header_timeout: float
    max_per_uid: int = 0  # 0: not counted per caller (a TCP listener knows no caller)


def peer_uid(sock: socket.socket) -> int | None:
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return int(_UCRED.unpack(raw)[1])


Report = Callable[[str, str], None]  # (listener label, one of EVENTS)


class GuardedListener:
    """One guarded listener (one or more listening sockets) feeding an aiohttp app."""

    def __init__(self, limits: ListenerLimits, budget: FdBudget,
                 report: Report = lambda label, event: None) -> None:
        self.limits = limits
        self.budget = budget
        self.report = report
        self._socks: list[socket.socket] = []
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[object, _Conn] = {}  # aiohttp's handler -> its connection
        self._counted = 0  # connections under `max_connections` (root's are not)
        self._per_uid: Counter[int] = Counter()
        self._paused = False
        self._resume_handle: asyncio.Handle | None = None
        self._warned = 0.0  # last time the fd reserve was logged (at most once a minute)

    # ---- the aiohttp side ----------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Marks a request of a guarded connection as being handled (no timeout of ours
        while it is) and back to waiting once answered; a body that does not arrive within
        `header_timeout` cuts the connection."""
        conn = self._conns.get(request.protocol)
        if conn is None:
            resp: web.StreamResponse = await handler(request)
            return resp
        conn.handling(request)
        try:
            resp = await handler(request)
            return resp
        except Exception:
            if conn.cut is not None:
                # The body read failed because we cut the connection: nobody to answer.
                raise web.HTTPRequestTimeout() from None
            raise
        finally:
            conn.answered()

    def count(self) -> int:
        """Connections open now (root's included)."""
        return len(self._conns)

    # ---- listening -----------------------------------------------------------------------

    async def start(self, runner: web.AppRunner, socks: list[socket.socket]) -> None:
        """Serve `runner`'s app on `socks` (bound and listening)."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        self._factory = server
        self._loop = asyncio.get_running_loop()
        for sock in socks:
            sock.setblocking(False)
            self._socks.append(sock)
        self._watch()

    def close(self) -> None:
        """Stop accepting; the open connections are aiohttp's to close (runner.cleanup)."""
        if self._resume_handle is not None:
            self._resume_handle.cancel()
        self._unwatch()
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    def _watch(self) -> None:
        assert self._loop is not None
        for sock in self._socks:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self) -> None:
        if self._loop is not None:
            for sock in self._socks:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())

    def _accept(self, listening: socket.socket) -> None:
        # The fd count is read once per batch (listing /proc/self/fd costs ~40 us, most of a
        # refusal's cost under a connect flood): only a connection taken on lowers it, one
        # refused is closed at once.
        room = self.budget.room()
        for _ in range(_ACCEPTS_PER_WAKEUP):
            if self._paused:
                return
            if room <= 0:
                self._pause("open files within the reserve of the limit")
                return
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.ECONNABORTED:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: as asyncio's own server does, stop for a
                # while rather than spin on a socket that stays readable.
                self._pause(f"accept failed: {e.strerror}")
                return
            if self._admit(sock):
                room -= 1

    def _pause(self, why: str) -> None:
        self._paused = True
        self._unwatch()
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning("%s: not accepting connections for now (%s; %d files open, limit "
                        "%d, %d kept for syncs)", self.limits.name, why, open_files(), soft,
                        self.budget.reserve)
        self.report(self.limits.label, "paused_fd_reserve")
        self._schedule_resume()

    def _schedule_resume(self) -> None:
        assert self._loop is not None
        if self._resume_handle is None:
            self._resume_handle = self._loop.call_later(_RESUME_POLL, self._try_resume)

    def _try_resume(self) -> None:
        self._resume_handle = None
        if not self._paused or not self._socks:
            return
        if self.budget.room() > 0:
            self._paused = False
            self._watch()
        else:
            self._schedule_resume()

    # ---- one connection ------------------------------------------------------------------

    def _admit(self, sock: socket.socket) -> bool:
        """Take the connection on, or refuse it (False: closed already)."""
        assert self._loop is not None and self._factory is not None
        sock.setblocking(False)
        uid = peer_uid(sock)
        counted = uid != 0
        limits = self.limits
        if counted and limits.max_connections and self._counted >= limits.max_connections:
            self._refuse(sock, "refused_cap", f"too many connections to the {limits.name} "
                         f"({self._counted} open, the most it takes): retry later")
            return False
        if (counted and uid is not None and limits.max_per_uid
                and self._per_uid[uid] >= limits.max_per_uid):
            self._refuse(sock, "refused_uid_cap", f"too many connections to the "
                         f"{limits.name} from uid {uid} ({self._per_uid[uid]} open, the most "
                         "one caller may have): close some")
            return False
        conn = _Conn(self, self._factory(), uid if counted else None, counted)
        if counted:
            self._counted += 1
            if uid is not None:
                self._per_uid[uid] += 1
        task = self._loop.create_task(self._loop.connect_accepted_socket(lambda: conn, sock))
        task.add_done_callback(lambda t: self._made(t, conn, sock))
        return True

    def _made(self, task: asyncio.Task[Any], conn: _Conn, sock: socket.socket) -> None:
        if (task.cancelled() or task.exception() is not None) and not conn.made:
            sock.close()
            self._release(conn)

    def _refuse(self, sock: socket.socket, event: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            sock.send(head + body)
        sock.close()
        self.report(self.limits.label, event)

    def _register(self, conn: _Conn) -> None:
        self._conns[conn.inner] = conn

    def _release(self, conn: _Conn) -> None:
        if conn.released:
            return
        conn.released = True
        self._conns.pop(conn.inner, None)
        if conn.counted:
            self._counted -= 1
            if conn.uid is not None:
                self._per_uid[conn.uid] -= 1
                if self._per_uid[conn.uid] <= 0:
                    del self._per_uid[conn.uid]
        if self._paused:
            self._try_resume_soon()

    def _try_resume_soon(self) -> None:
        assert self._loop is not None
        if self._resume_handle is not None:
            self._resume_handle.cancel()
        self._resume_handle = self._loop.call_soon(self._try_resume)


class _Conn(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the phases' deadlines around it:
    waiting (idle_timeout to a request's first byte), reading a head (header_timeout),
    handled (none), reading a body (header_timeout from the head)."""

    def __init__(self, listener: GuardedListener, inner: asyncio.Protocol, uid: int | None,
                 counted: bool) -> None:
        self.listener = listener
        self.inner = inner
        self.uid = uid
        self.counted = counted
        self.made = False
        self.released = False
        self.cut: str | None = None  # why we cut it, once we did
        self.transport: asyncio.Transport | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._reading = False  # a request's bytes arrived, its head is not parsed yet
        self._handling = 0  # requests being handled (aiohttp handles one at a time)

    # asyncio.Protocol, passed on to aiohttp's handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.transport = transport  # type: ignore[assignment]
        self.listener._register(self)
        self.inner.connection_made(transport)
        self._deadline(self.listener.limits.idle_timeout, "cut_idle")

    def data_received(self, data: bytes) -> None:
        if not self._handling and not self._reading:
            self._reading = True
            self._deadline(self.listener.limits.header_timeout, "cut_header")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.listener._release(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # the phases, from the middleware

    def handling(self, request: web.BaseRequest) -> None:
        self._handling += 1
        self._reading = False
        self._cancel()
        if not request.content.is_eof():
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self.listener.limits.header_timeout,
                                           self._body_due, request)

    def answered(self) -> None:
        self._handling -= 1
        if not self._handling and self.cut is None:
            self._deadline(self.listener.limits.idle_timeout, "cut_idle")

    def _body_due(self, request: web.BaseRequest) -> None:
        self._handle = None
        if not request.content.is_eof():
            self._cut("cut_body")

    def _deadline(self, seconds: float, reason: str) -> None:
        self._cancel()
        if seconds > 0:
            self._handle = asyncio.get_running_loop().call_later(seconds, self._cut, reason)

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _cut(self, event: str) -> None:
        self._handle = None
        if self.transport is None or self.cut is not None:
            return
        self.cut = event
        log.debug("%s: connection cut (%s)", self.listener.limits.name, event,
                  extra={"uid": self.uid})
        self.listener.report(self.listener.limits.label, event)
        self.transport.abort()
