"""Conntrack entries read and deleted in bulk over ctnetlink, with messages built here.

Why: a drained iptables-mode replica of a busy app leaves tens of thousands of TIME_WAIT
entries that lbctl deletes one by one, by reply tuple (lbctl.dataplane.conntrack says why).
pyroute2's NFCTSocket sends each delete and waits for its answer through its asyncio core:
about 0.5 ms an entry here, so 30,000 entries held a replica's removal (and `lbctl rm`, and a
rollout's last step) for 15 s and more. Here the deletes go 128 to a sendmsg, which the kernel
works through in one call, and a dump is parsed only as far as the entry's tuples, TCP state
and id: a few microseconds an entry. The encoding is small and fixed (nfnetlink's header and
nested attributes); the link dump in lbctl.dataplane.netlink is made the same way.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # acks carry the request's header only, not its attributes
_SUBSYS_CTNETLINK = 1
MSG_CT_NEW, MSG_CT_GET, MSG_CT_DELETE = 0, 1, 2
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_F_REQUEST, _F_ACK, _F_EXCL, _F_CREATE, _F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF

# enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_protoinfo(_tcp), ctattr_filter
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT, CTA_ID = 1, 2, 3, 4, 7, 12
CTA_FILTER = 25
_TUPLE_IP, _TUPLE_PROTO = 1, 2
_IP_V4_SRC, _IP_V4_DST, _IP_V6_SRC, _IP_V6_DST = 1, 2, 3, 4
_PROTO_NUM, _PROTO_SRC_PORT, _PROTO_DST_PORT = 1, 2, 3
_PROTOINFO_TCP, _PROTOINFO_TCP_STATE = 1, 1
_IPS_CONFIRMED = 1 << 3
_FILTER_ORIG_FLAGS, _FILTER_REPLY_FLAGS = 1, 2
_FILTER_IP_SRC, _FILTER_IP_DST, _FILTER_PROTO_NUM = 1 << 0, 1 << 1, 1 << 3
_FILTER_SRC_PORT, _FILTER_DST_PORT = 1 << 4, 1 << 5

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian, 0 here)
_NLA = struct.Struct("=HH")
_BATCH = 128  # deletes per sendmsg; their acks wait in the receive buffer (_RCVBUF)
# Each ack is 36 bytes but counts as its skb's truesize: 832 bytes here (6.18), more where
# skb heads are bigger (MAX_HEADER depends on the kernel's config). 256 of them exactly
# fill the default 208 KiB buffer (256 x 832); past it the kernel drops acks and recv fails
# with ENOBUFS. 128 leave half of even that buffer free; asked for 1 MiB, the kernel gives
# min(1 MiB, rmem_max) x 2: 416 KiB or more. Batches past 100 gain nothing measurable.
_RCVBUF = 1 << 20
_BUF = 1 << 17  # a dump's datagrams are at most 32 KB; acks of a batch 9 KB


class CtnetlinkError(OSError):
    """The kernel refused a request for another reason than "no such entry"."""


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a connection, as conntrack keeps it."""

    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class Match:
    """The fields a dump filters a tuple on; None matches anything."""

    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    orig: Tuple
    reply: Tuple
    proto: int
    tcp_state: int | None  # enum tcp_conntrack (3 is ESTABLISHED); None for UDP
    id: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _nla(kind: int, payload: bytes) -> bytes:
    head = _NLA.pack(_NLA.size + len(payload), kind)
    return head + payload + b"\0" * (_align(len(payload)) - len(payload))


def _nest(kind: int, *parts: bytes) -> bytes:
    return _nla(kind | _NLA_F_NESTED, b"".join(parts))


def _encode_tuple(kind: int, family: int, proto: int, t: Tuple | Match) -> tuple[bytes, int]:
    """CTA_TUPLE_ORIG or CTA_TUPLE_REPLY with the given fields, and the CTA_FILTER flags that
    name them (a dump filtered on this tuple matches those fields only)."""
    v6 = family == socket.AF_INET6
    src, dst, sport, dport = t.src, t.dst, t.sport, t.dport
    ip, flags = b"", _FILTER_PROTO_NUM
    if src is not None:
        ip += _nla(_IP_V6_SRC if v6 else _IP_V4_SRC, socket.inet_pton(family, src))
        flags |= _FILTER_IP_SRC
    if dst is not None:
        ip += _nla(_IP_V6_DST if v6 else _IP_V4_DST, socket.inet_pton(family, dst))
        flags |= _FILTER_IP_DST
    l4 = _nla(_PROTO_NUM, bytes([proto]))
    if sport is not None:
        l4 += _nla(_PROTO_SRC_PORT, struct.pack("!H", sport))
        flags |= _FILTER_SRC_PORT
    if dport is not None:
        l4 += _nla(_PROTO_DST_PORT, struct.pack("!H", dport))
        flags |= _FILTER_DST_PORT
    return _nest(kind, *([_nest(_TUPLE_IP, ip)] if ip else []), _nest(_TUPLE_PROTO, l4)), flags


def _message(kind: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    body = _NFGEN.pack(family, 0, 0) + attrs
    return _HDR.pack(_HDR.size + len(body), (_SUBSYS_CTNETLINK << 8) | kind, flags, seq,
                     0) + body


def _attrs(data: bytes | memoryview, start: int, end: int) -> dict[int, tuple[int, int]]:
    """The (start, end) of each attribute's payload between start and end, by type."""
    out: dict[int, tuple[int, int]] = {}
    pos = start
    while pos + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, pos)
        if length < _NLA.size:
            break
        out[kind & _NLA_TYPE_MASK] = (pos + _NLA.size, pos + length)
        pos += _align(length)
    return out


def _tuple(data: bytes, span: tuple[int, int], family: int) -> tuple[Tuple, int]:
    parts = _attrs(data, *span)
    ip = _attrs(data, *parts[_TUPLE_IP])
    l4 = _attrs(data, *parts[_TUPLE_PROTO])
    src_key, dst_key = (_IP_V6_SRC, _IP_V6_DST) if family == socket.AF_INET6 else (
        _IP_V4_SRC, _IP_V4_DST)

    def addr(key: int) -> str:
        a, b = ip[key]
        return socket.inet_ntop(family, data[a:b])

    def port(key: int) -> int:
        span = l4.get(key)
        return struct.unpack_from("!H", data, span[0])[0] if span else 0

    return (Tuple(addr(src_key), addr(dst_key), port(_PROTO_SRC_PORT), port(_PROTO_DST_PORT)),
            data[l4[_PROTO_NUM][0]])


def _entry(data: bytes, start: int, end: int, family: int) -> Entry | None:
    top = _attrs(data, start, end)
    if CTA_TUPLE_ORIG not in top or CTA_TUPLE_REPLY not in top or CTA_ID not in top:
        return None
    orig, proto = _tuple(data, top[CTA_TUPLE_ORIG], family)
    reply, _ = _tuple(data, top[CTA_TUPLE_REPLY], family)
    state = None
    if CTA_PROTOINFO in top:
        tcp = _attrs(data, *top[CTA_PROTOINFO]).get(_PROTOINFO_TCP)
        st = _attrs(data, *tcp).get(_PROTOINFO_TCP_STATE) if tcp else None
        state = data[st[0]] if st else None
    (ct_id,) = struct.unpack_from("!I", data, top[CTA_ID][0])
    return Entry(orig, reply, proto, state, ct_id)


class CtSocket:
    """A ctnetlink socket of the calling thread's network namespace (blocking: the async
    callers run it in a thread)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_NETFILTER)
        self._sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> CtSocket:
        return self

    def __exit__(self, *_: object) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def dump(self, family: int, proto: int, *, orig: Match | None = None,
             reply: Match | None = None) -> Iterator[Entry]:
        """Every entry of `family` and `proto` whose orig (or reply) tuple has the given
        fields (src, dst, sport, dport), filtered by the kernel (5.8 and newer: older ones
        send everything, callers check each entry anyway)."""
        attrs = b""
        for kind, flag_kind, want in ((CTA_TUPLE_ORIG, _FILTER_ORIG_FLAGS, orig),
                                      (CTA_TUPLE_REPLY, _FILTER_REPLY_FLAGS, reply)):
            if want is not None:
                tup, flags = _encode_tuple(kind, family, proto, want)
                attrs += tup + _nest(CTA_FILTER, _nla(flag_kind, struct.pack("=I", flags)))
        seq = self._next_seq()
        self._sock.send(_message(MSG_CT_GET, _F_REQUEST | _F_DUMP, seq, family, attrs))
        for kind, mseq, data, body, end in self._received("dump"):
            if mseq != seq:
                continue
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR:
                err = _error(data, body)
                if err:
                    raise CtnetlinkError(err, f"ctnetlink dump: {_name(err)}")
                continue
            entry = _entry(data, body + _NFGEN.size, end, family)
            if entry is not None and entry.proto == proto:
                yield entry

    def delete_by_reply(self, family: int, proto: int,
                        replies: Iterable[tuple[Tuple, int | None]]) -> int:
        """Delete each entry by its reply tuple (and id, where given); return how many went.
        An entry gone already (ENOENT: timed out, deleted by someone else, or its id changed)
        is not an error."""
        def messages() -> Iterator[tuple[int, bytes]]:
            for tup, ct_id in replies:
                attrs, _ = _encode_tuple(CTA_TUPLE_REPLY, family, proto, tup)
                if ct_id is not None:
                    attrs += _nla(CTA_ID, struct.pack("!I", ct_id))
                seq = self._next_seq()
                yield seq, _message(MSG_CT_DELETE, _F_REQUEST | _F_ACK, seq, family, attrs)

        return self._send_all(messages(), "delete")

    def create(self, family: int, proto: int, entries: Iterable[tuple[Tuple, Tuple]], *,
               tcp_state: int | None, timeout: int, status: int) -> int:
        """Insert entries (what `conntrack -I` does, in bulk): for tests and benchmarks that
        need a table of known entries on addresses nobody uses. Returns how many went in."""
        def messages() -> Iterator[tuple[int, bytes]]:
            # The kernel marks an entry it creates confirmed before applying the status it
            # was given, and refuses (EBUSY) a status that would take that back.
            extra = _nla(CTA_STATUS, struct.pack("!I", status | _IPS_CONFIRMED)) + _nla(
                CTA_TIMEOUT, struct.pack("!I", timeout))
            if tcp_state is not None:
                extra += _nest(CTA_PROTOINFO, _nest(
                    _PROTOINFO_TCP, _nla(_PROTOINFO_TCP_STATE, bytes([tcp_state]))))
            for orig, reply in entries:
                attrs = (_encode_tuple(CTA_TUPLE_ORIG, family, proto, orig)[0]
                         + _encode_tuple(CTA_TUPLE_REPLY, family, proto, reply)[0] + extra)
                seq = self._next_seq()
                yield seq, _message(MSG_CT_NEW, _F_REQUEST | _F_ACK | _F_CREATE | _F_EXCL, seq,
                                    family, attrs)

        return self._send_all(messages(), "create")

    def _send_all(self, messages: Iterable[tuple[int, bytes]], what: str) -> int:
        done = 0
        pending: dict[int, None] = {}
        out = bytearray()
        for seq, msg in messages:
            out += msg
            pending[seq] = None
            if len(pending) == _BATCH:
                done += self._send_batch(bytes(out), pending, what)
                out = bytearray()
        if pending:
            done += self._send_batch(bytes(out), pending, what)
        return done

    def _send_batch(self, out: bytes, pending: dict[int, None], what: str) -> int:
        # The kernel handles every message of one send before it returns, and answers each
        # (NLM_F_ACK) in order: the answers are read until every sequence number has one.
        self._sock.send(out)
        done = 0
        for kind, mseq, data, body, _ in self._received(what):
            if kind == _NLMSG_ERROR and mseq in pending:
                del pending[mseq]
                err = _error(data, body)
                if err == 0:
                    done += 1
                elif err != errno.ENOENT:
                    raise CtnetlinkError(err, f"ctnetlink {what}: {_name(err)}")
                if not pending:
                    return done
        return done  # not reached: _received() never ends

    def _received(self, what: str) -> Iterator[tuple[int, int, bytes, int, int]]:
        """Every message the kernel sends this socket: (type, sequence number, the datagram,
        where the message's payload starts in it, where the message ends)."""
        while True:
            data = self._sock.recv(_BUF)
            off = 0
            while off + _HDR.size <= len(data):
                length, kind, _, seq, _ = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise CtnetlinkError(errno.EPROTO, f"ctnetlink {what}: malformed message")
                yield kind, seq, data, off + _HDR.size, off + length
                off += _align(length)


def _error(data: bytes, at: int) -> int:
    """The errno of an NLMSG_ERROR message (0: an ack)."""
    return -int(struct.unpack_from("=i", data, at)[0])


def _name(code: int) -> str:
    return errno.errorcode.get(code, str(code))
