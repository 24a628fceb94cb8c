"""Who sent an API request: the kernel's word for the process at the other end of the Unix
socket (SO_PEERCRED), recorded when it connected, so no header or body can claim to be root.

aiohttp gives a handler its connection's transport; with a UnixSite, its `socket` extra is
the accepted AF_UNIX socket (an asyncio TransportSocket, which passes getsockopt through).
Anything else (a TCP test server) has no peer credentials and is treated as an unknown,
unprivileged caller: the policy applies, never root's rights.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from aiohttp import web

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Caller:
    uid: int | None  # None: no credentials (not a Unix socket)
    gid: int | None = None
    pid: int | None = None

    @property
    def root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return "unknown" if self.uid is None else f"uid {self.uid} (pid {self.pid})"


UNKNOWN = Caller(None)


def peer(request: web.Request) -> Caller:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return UNKNOWN
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return UNKNOWN
    pid, uid, gid = _UCRED.unpack(raw)
    return Caller(uid, gid, pid)
