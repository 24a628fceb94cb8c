"""Netlink's framing, for the requests lbctl builds by hand (the link dump in
lbctl.dataplane.netlink, conntrack in lbctl.dataplane.ctnetlink): the message header,
attributes, and reading what the kernel answers.

Why by hand: the two requests are small and fixed, and pyroute2's sockets (which lbctl uses
for sock_diag) cost a parse of every attribute of every message, and for ctnetlink a round
trip per request through its asyncio core.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

ERROR, DONE = 2, 3  # NLMSG_ERROR, NLMSG_DONE
F_REQUEST, F_ACK, F_EXCL, F_CREATE, F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
NLA = struct.Struct("=HH")  # nlattr (rtattr has the same layout): length, type
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF


def align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    head = NLA.pack(NLA.size + len(payload), kind)
    return head + payload + b"\0" * (align(len(payload)) - len(payload))


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | _NLA_F_NESTED, b"".join(parts))


def attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """The (start, end) of each attribute's payload between start and end, by type."""
    out: dict[int, tuple[int, int]] = {}
    pos = start
    while pos + NLA.size <= end:
        length, kind = NLA.unpack_from(data, pos)
        if length < NLA.size:
            break
        out[kind & _NLA_TYPE_MASK] = (pos + NLA.size, pos + length)
        pos += align(length)
    return out


def error(data: bytes, at: int) -> int:
    """The errno of an NLMSG_ERROR message whose payload starts at `at` (0: an ack)."""
    return -int(struct.unpack_from("=i", data, at)[0])


def error_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def received(sock: socket.socket, bufsize: int, what: str
             ) -> Iterator[tuple[int, int, bytes, int, int]]:
    """Every message the kernel sends `sock`, for as long as the caller reads: (type,
    sequence number, the datagram, where the message's payload starts in it, where the
    message ends). `what` names the request in errors."""
    while True:
        data, _, flags, _ = sock.recvmsg(bufsize)
        if flags & socket.MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, f"netlink {what}: a message larger than {bufsize} B")
        off = 0
        while off + HDR.size <= len(data):
            length, kind, _, seq, _ = HDR.unpack_from(data, off)
            if length < HDR.size:
                raise OSError(errno.EPROTO, f"netlink {what}: malformed message")
            yield kind, seq, data, off + HDR.size, off + length
            off += align(length)
