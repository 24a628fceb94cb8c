"""The per-replica Unix sockets through which the daemon hands each replica of an activated app
its listeners (see the package's doc for the why).

Each replica gets a directory of its own, <state_dir>/activation/<app>/<replica>/, which the
engine bind-mounts read-only at model.activation.SOCKET_DIR_IN; the socket in it is the only
thing the replica can ask, and it can only ask for its own listeners. A connection is answered
with a fresh set:

  1. who asks: the peer's PID (SO_PEERCRED, translated into the daemon's PID namespace), and
     the first process of its PID namespace, the PID the engine reports for the replica;
  2. a replica that still holds listeners of an earlier hand-over gets none (one set at a
     time: a process cannot pile sockets up in the host's reuseport group);
  3. the listeners are made (listeners.make_listeners) and put in the app's socket map
     (`insert`, EbpfDataplane.insert), then sent in one message, their names as its payload
     (LISTEN_FDNAMES), and closed here: the replica is their only owner;
  4. a refusal is one line of text with no descriptor, which the shim prints and exits 111
     with, so the engine's log (and `lbctl status`' crash line) says why.

The directory outlives the daemon: a replica's bind mount names it, so a restarted daemon
binds a new socket in the same directory, and a shim that started meanwhile retries until it
answers (bounded by its LBCTL_ACTIVATION_TIMEOUT). Directories go with their replica's last
container (`keep`) and with the app (`remove`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from lbctl.dataplane import sockets
from lbctl.dataplane.activation.listeners import make_listeners
from lbctl.dataplane.activation.shim import shim_path, shim_unavailable
from lbctl.model import Publish
from lbctl.model.activation import FIRST_FD, SOCKET_NAME
from lbctl.model.dataplane import Member
from lbctl.settings import ActivationSettings

log = logging.getLogger("lbctl.dataplane.activation")

# EbpfDataplane.insert: (app, port, member, [(daemon's fd, the socket as the member holds
# it)]) -> how many went into the map.
Insert = Callable[[str, int, Member, Sequence[tuple[int, sockets.Listener]]], Awaitable[int]]


@dataclass
class _Served:
    app: str
    replica: str
    publishes: tuple[Publish, ...]
    sock: socket.socket
    handed: int = 0  # sets handed over (the log says how often a replica restarted)


class ActivationServer:
    """Every activated replica's socket on this host (one event-loop reader each)."""

    def __init__(self, state_dir: Path, settings: ActivationSettings = ActivationSettings(),  # noqa: B008
                 insert: Insert | None = None) -> None:
        self.root = Path(state_dir) / "activation"
        self.settings = settings
        self.shim = (settings.shim or shim_path()).absolute()  # the engine bind-mounts it
        self.insert = insert
        self._served: dict[tuple[str, str], _Served] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def unavailable(self) -> str | None:
        """Why this host cannot activate replicas now (None: it can)."""
        return shim_unavailable(self.shim)

    def socket_dir(self, app: str, replica: str) -> Path:
        return self.root / app / replica

    # ---- which replicas are served ----------------------------------------------------------

    def serve(self, app: str, replica: str, publishes: Sequence[Publish]) -> Path:
        """Serve `replica` (before its container is created, and again after a daemon
        restart); returns the directory to bind-mount at model.activation.SOCKET_DIR_IN."""
        d = self.socket_dir(app, replica)
        key = (app, replica)
        pubs = tuple(publishes)
        cur = self._served.get(key)
        if cur is not None and cur.publishes == pubs:
            return d
        if cur is not None:
            self._stop(key)
        d.mkdir(parents=True, exist_ok=True)
        # The replica sees this directory (and only it), whatever its user:
        # a daemon's umask (0077 under systemd) must not lock a non-root replica out.
        os.chmod(d, 0o755)
        srv = _bind_unix(d, SOCKET_NAME)
        loop = asyncio.get_running_loop()
        loop.add_reader(srv.fileno(), self._accept, key)
        self._served[key] = _Served(app, replica, pubs, srv)
        return d

    def keep(self, app: str, replicas: Collection[str]) -> None:
        """Serve no replica of `app` but these, and remove the others' directories (a
        replica's goes once its last container is gone; an earlier daemon's leftovers too)."""
        for key in [k for k in self._served if k[0] == app and k[1] not in replicas]:
            self._stop(key)
        base = self.root / app
        with contextlib.suppress(FileNotFoundError):
            for d in base.iterdir():
                if d.name not in replicas:
                    shutil.rmtree(d, ignore_errors=True)

    def remove(self, app: str) -> None:
        """The app is gone: nothing of it is served, its directory goes."""
        self.keep(app, ())
        shutil.rmtree(self.root / app, ignore_errors=True)

    def served(self, app: str) -> list[str]:
        return sorted(r for a, r in self._served if a == app)

    def close(self) -> None:
        """The daemon stops: the sockets close, their files and directories stay (a replica
        that starts meanwhile waits in its shim for the next daemon)."""
        for key in list(self._served):
            self._stop(key)
        for t in list(self._tasks):
            t.cancel()

    def _stop(self, key: tuple[str, str]) -> None:
        s = self._served.pop(key)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(s.sock.fileno())
        s.sock.close()

    # ---- what a replica's processes hold ------------------------------------------------------

    async def own_listener(self, pid: int, port: int, proto: str) -> bool:
        """Does the replica listen on `port` in its own namespace? One that was handed its
        listeners and binds the container port itself did not take them (its image ignores
        LISTEN_FDS)."""
        return bool(await asyncio.to_thread(sockets.find_listeners, pid, port, proto))

    async def accepts(self, sock: socket.socket, address: tuple[str, int], pid: int,
                      timeout: float) -> str | None:
        """Does the replica accept connections from the listeners lbctl handed it? `sock` (a
        probe socket through the replica's slot, closed here) is connected to `address`, and
        the replica's listeners' accept queue must then empty within `timeout`: a connection
        the kernel completed sits there until the replica accept()s it. An image that ignores
        LISTEN_FDS (and binds its own port only later: a JVM after seconds) or one that takes
        the socket but does not accept yet would otherwise be called ready on holding it, and
        be sent clients nobody accepts. None when it accepted; else why not, in one line."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, address)
                # The handshake's last ACK reaches the listener a moment after connect()
                # returns here: until then an unaccepting listener's queue still reads empty.
                await asyncio.sleep(_ACK_SETTLE)
                # Polled: the kernel tells no one when a connection leaves an accept queue.
                while True:
                    if not await asyncio.to_thread(_queued, pid, address[1]):
                        return None
                    await asyncio.sleep(_QUEUE_POLL)
        except TimeoutError:
            return (f"a connection to the listener lbctl handed it was not accepted within "
                    f"{timeout:g}s")
        except OSError as e:
            return f"connecting to the listener lbctl handed it: {e.strerror or e}"
        finally:
            sock.close()

    async def shut_down(self, pid: int, port: int, proto: str) -> int:
        """Stop the host's listeners on `port` that the replica holds and does not serve (it
        did not take them): shutdown() takes a TCP listener out of its reuseport group at
        once, so not even the kernel's own choice (while no replica is ready) queues a client
        there, where nobody would ever accept it. Returns how many were stopped. (A UDP
        socket has no such state: the program never picks one in no table.)"""
        return await asyncio.to_thread(_shut_down, pid, port, proto)

    # ---- hand-over ------------------------------------------------------------------------------

    def _accept(self, key: tuple[str, str]) -> None:
        served = self._served.get(key)
        if served is None:
            return
        while True:
            try:
                conn, _ = served.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("activation socket: %s", e, extra={"app": key[0],
                                                                "replica": key[1]})
                return
            task = asyncio.create_task(self._hand_over(served, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_over(self, served: _Served, conn: socket.socket) -> None:
        fields = {"app": served.app, "replica": served.replica}
        made: list[tuple[str, socket.socket]] = []
        try:
            conn.setblocking(False)
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer = struct.unpack("3i", raw)[0]
            why = await asyncio.to_thread(self._refusal, served, peer)
            if why is None:
                try:
                    made = make_listeners(served.publishes)
                except OSError as e:
                    why = f"cannot make its listeners: {e.strerror or e}"
            if why is not None:
                log.warning("activation refused: %s", why, extra=fields)
                with contextlib.suppress(OSError):
                    conn.send(f"lbctl: {served.replica}: {why}".encode()[:400])
                return
            member = Member(served.replica, await asyncio.to_thread(sockets.namespace_init, peer))
            held = [(s.fileno(), _as_held(s, served.publishes[i], peer, FIRST_FD + i))
                    for i, (_, s) in enumerate(made)]
            inserted = 0
            if self.insert is not None:
                try:
                    inserted = await self.insert(served.app, served.publishes[0].host_port,
                                                 member, held)
                except Exception as e:  # the next sync finds them among the replica's sockets
                    log.warning("activation: cannot put %s's listeners in the socket map now "
                                "(%s); the next sync does", served.replica, e, extra=fields)
            names = ":".join(n for n, _ in made).encode()
            socket.send_fds(conn, [names], [s.fileno() for _, s in made])
            served.handed += 1
            log.info("listeners handed over", extra={
                **fields, "listeners": names.decode(), "pid": peer, "in_map": inserted,
                "handovers": served.handed})
        except OSError as e:
            log.warning("activation hand-over failed: %s", e, extra=fields)
        finally:
            for _, s in made:
                s.close()  # the replica is their only owner from now on
            conn.close()

    @staticmethod
    def _refusal(served: _Served, peer: int) -> str | None:
        """Why `peer` gets nothing (None: it gets its listeners)."""
        init = sockets.namespace_init(peer)
        pub = served.publishes[0]
        if sockets.find_listeners(init, pub.host_port, pub.proto, os.getpid()):
            return ("it holds the listeners of an earlier hand-over: one set at a time (the "
                    "shim runs once per container start)")
        return None


_ACK_SETTLE = 0.02
_QUEUE_POLL = 0.02


def _queued(pid: int, port: int) -> int:
    """Connections waiting in the accept queues of the replica's host listeners on `port`."""
    return sum(lst.accept_queue for lst in sockets.find_listeners(pid, port, "tcp", os.getpid()))


def _shut_down(pid: int, port: int, proto: str) -> int:
    if proto != "tcp":
        return 0
    n = 0
    for listener in sockets.find_listeners(pid, port, proto, os.getpid()):
        try:
            fd = sockets.take(listener)
        except OSError:
            continue  # gone meanwhile
        with socket.socket(fileno=fd) as s, contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
            n += 1
    return n


def _as_held(s: socket.socket, publish: Publish, pid: int, fd: int) -> sockets.Listener:
    """The socket as the replica will hold it: its pid, the fd number the shim gives it."""
    return sockets.Listener(pid, fd, os.fstat(s.fileno()).st_ino, s.family, 0, publish.proto,
                            publish.host_ip)


def _bind_unix(d: Path, name: str) -> socket.socket:
    """A listening Unix socket `d/name`, replacing a stale one (a dead daemon's). Bound
    through /proc/self/fd: a state dir's path can be longer than sun_path's 108 bytes."""
    dfd = os.open(d, os.O_PATH | os.O_DIRECTORY)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
        srv.bind(f"/proc/self/fd/{dfd}/{name}")
        # Whatever user the replica runs as connects (the state dir keeps the host's users
        # out: it is root's alone).
        os.chmod(f"/proc/self/fd/{dfd}/{name}", 0o666)
        srv.listen(16)
        srv.setblocking(False)
    except BaseException:
        srv.close()
        raise
    finally:
        os.close(dfd)
    return srv
