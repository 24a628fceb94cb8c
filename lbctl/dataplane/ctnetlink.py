"""Conntrack entries read and deleted in bulk over ctnetlink, with messages built here.

Why: a drained iptables-mode replica of a busy app leaves tens of thousands of TIME_WAIT
entries that lbctl deletes one by one, by reply tuple (lbctl.dataplane.conntrack says why).
pyroute2's NFCTSocket sends each delete and waits for its answer through its asyncio core:
about 0.5 ms an entry here, so 30,000 entries held a replica's removal (and `lbctl rm`, and a
rollout's last step) for 15 s and more. Here the deletes go 128 to a sendmsg, which the kernel
works through in one call, and a dump is parsed only as far as the entry's tuples, TCP state
and id: a few microseconds an entry. The encoding is small and fixed (nfnetlink's header and
nested attributes: lbctl.dataplane.nlmsg, as the link dump in lbctl.dataplane.netlink).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lbctl.dataplane import nlmsg

NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # acks carry the request's header only, not its attributes
_SUBSYS_CTNETLINK = 1
MSG_CT_NEW, MSG_CT_GET, MSG_CT_DELETE = 0, 1, 2

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

_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian, 0 here)
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


def _encode_tuple(kind: int, family: int, proto: int, t: Tuple | Match) -> tuple[bytes, int]:
    """CTA_TUPLE_ORIG or CTA_TUPLE_REPLY with the given fields, and the CTA_FILTER flags that
    name them (a dump filtered on this tuple matches those fields only)."""
    v6 = family == socket.AF_INET6
    src, dst, sport, dport = t.src, t.dst, t.sport, t.dport
    ip, flags = b"", _FILTER_PROTO_NUM
    if src is not None:
        ip += nlmsg.attr(_IP_V6_SRC if v6 else _IP_V4_SRC, socket.inet_pton(family, src))
        flags |= _FILTER_IP_SRC
    if dst is not None:
        ip += nlmsg.attr(_IP_V6_DST if v6 else _IP_V4_DST, socket.inet_pton(family, dst))
        flags |= _FILTER_IP_DST
    l4 = nlmsg.attr(_PROTO_NUM, bytes([proto]))
    if sport is not None:
        l4 += nlmsg.attr(_PROTO_SRC_PORT, struct.pack("!H", sport))
        flags |= _FILTER_SRC_PORT
    if dport is not None:
        l4 += nlmsg.attr(_PROTO_DST_PORT, struct.pack("!H", dport))
        flags |= _FILTER_DST_PORT
    parts = ([nlmsg.nest(_TUPLE_IP, ip)] if ip else []) + [nlmsg.nest(_TUPLE_PROTO, l4)]
    return nlmsg.nest(kind, *parts), flags


def _message(kind: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    body = _NFGEN.pack(family, 0, 0) + attrs
    return nlmsg.HDR.pack(nlmsg.HDR.size + len(body), (_SUBSYS_CTNETLINK << 8) | kind, flags, seq,
                     0) + body


def _tuple(data: bytes, span: tuple[int, int], family: int) -> tuple[Tuple, int]:
    parts = nlmsg.attrs(data, *span)
    ip = nlmsg.attrs(data, *parts[_TUPLE_IP])
    l4 = nlmsg.attrs(data, *parts[_TUPLE_PROTO])
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
    top = nlmsg.attrs(data, start, end)
    if CTA_TUPLE_ORIG not in top or CTA_TUPLE_REPLY not in top or CTA_ID not in top:
        return None
    orig, proto = _tuple(data, top[CTA_TUPLE_ORIG], family)
    reply, _ = _tuple(data, top[CTA_TUPLE_REPLY], family)
    state = None
    if CTA_PROTOINFO in top:
        tcp = nlmsg.attrs(data, *top[CTA_PROTOINFO]).get(_PROTOINFO_TCP)
        st = nlmsg.attrs(data, *tcp).get(_PROTOINFO_TCP_STATE) if tcp else None
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
                attrs += tup + nlmsg.nest(CTA_FILTER,
                                          nlmsg.attr(flag_kind, struct.pack("=I", flags)))
        seq = self._next_seq()
        self._sock.send(_message(MSG_CT_GET, nlmsg.F_REQUEST | nlmsg.F_DUMP, seq, family, attrs))
        for kind, mseq, data, body, end in nlmsg.received(self._sock, _BUF, "conntrack dump"):
            if mseq != seq:
                continue
            if kind == nlmsg.DONE:
                return
            if kind == nlmsg.ERROR:
                err = nlmsg.error(data, body)
                if err:
                    raise CtnetlinkError(err, f"ctnetlink dump: {nlmsg.error_name(err)}")
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
                    attrs += nlmsg.attr(CTA_ID, struct.pack("!I", ct_id))
                seq = self._next_seq()
                yield seq, _message(MSG_CT_DELETE, nlmsg.F_REQUEST | nlmsg.F_ACK, seq, family,
                                    attrs)

        return self._send_all(messages(), "delete")

    def create(self, family: int, proto: int, entries: Iterable[tuple[Tuple, Tuple]], *,
               tcp_state: int | None, timeout: int, status: int) -> int:
        """Insert entries (what `conntrack -I` does, in bulk): for tests and benchmarks that
        need a table of known entries on addresses nobody uses. Returns how many went in."""
        def messages() -> Iterator[tuple[int, bytes]]:
            # The kernel marks an entry it creates confirmed before applying the status it
            # was given, and refuses (EBUSY) a status that would take that back.
            extra = nlmsg.attr(CTA_STATUS, struct.pack("!I", status | _IPS_CONFIRMED)) + nlmsg.attr(
                CTA_TIMEOUT, struct.pack("!I", timeout))
            if tcp_state is not None:
                extra += nlmsg.nest(CTA_PROTOINFO, nlmsg.nest(
                    _PROTOINFO_TCP, nlmsg.attr(_PROTOINFO_TCP_STATE, bytes([tcp_state]))))
            for orig, reply in entries:
                attrs = (_encode_tuple(CTA_TUPLE_ORIG, family, proto, orig)[0]
                         + _encode_tuple(CTA_TUPLE_REPLY, family, proto, reply)[0] + extra)
                seq = self._next_seq()
                flags = nlmsg.F_REQUEST | nlmsg.F_ACK | nlmsg.F_CREATE | nlmsg.F_EXCL
                yield seq, _message(MSG_CT_NEW, flags, seq, family, attrs)

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
        for kind, mseq, data, body, _ in nlmsg.received(self._sock, _BUF, f"conntrack {what}"):
            if kind == nlmsg.ERROR and mseq in pending:
                del pending[mseq]
                err = nlmsg.error(data, body)
                if err == 0:
                    done += 1
                elif err != errno.ENOENT:
                    raise CtnetlinkError(err, f"ctnetlink {what}: {nlmsg.error_name(err)}")
                if not pending:
                    return done
        return done  # not reached: received() never ends
