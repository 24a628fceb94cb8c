"""Delete conntrack entries with the `conntrack` tool (conntrack-tools), without blocking the loop.

Why: NAT decisions are made on a flow's first packet and then live in the conntrack entry.
UDP has no connection end, so a UDP "flow" to a replica that went away keeps being DNATed to
the dead address until its entry times out; and packets that arrived while a service had no
backends leave entries without NAT that keep bypassing the new DNAT rules. kube-proxy clears
both kinds; lbctl does the same. A removed (draining) replica's TCP entries are left alone
while it drains: it still finishes its established connections, which conntrack keeps NATed.

Once it is drained, just before it stops, they go too (forget_backend), for Docker's sake:
when a container leaves a bridge network, dockerd deletes the conntrack entries naming its
address by their tuple alone, from a dump it took a moment before. Those are mostly the
replica's TIME_WAIT entries, and under load a client port comes back within a second or two:
a new connection to another replica with the same tuple replaces one of them between the dump
and the delete, loses its entry to dockerd in mid-handshake, and its ACK is NATed afresh to a
random replica, which answers with a reset (seen as ~1 failed request in 100,000 during
rollouts at 13k connections/s: bench/RESULTS.md). lbctl deletes each entry by its reply tuple,
which names the replica, so a new connection to another replica is never hit, and dockerd then
finds nothing left to delete. `conntrack -D` is no help here: it deletes by the original tuple.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from typing import Any

from lbctl import malloc
from lbctl.dataplane.netlink import NetlinkError, NFCTAttrTuple, NFCTSocket

CONNTRACK = "conntrack"
_PROTO_NUMS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")


class ConntrackError(RuntimeError):
    """`conntrack -D` failed for another reason than "nothing matched"."""


async def delete_flows(
    proto: str,
    *,
    orig_dst: str | None = None,
    orig_port_dst: int | None = None,
    reply_src: str | None = None,
    reply_port_src: int | None = None,
    family: int = 4,
) -> int:
    """Delete the entries of `proto` matching every given filter; return how many went.

    `conntrack -D` exits 1 when no entry matched ("0 flow entries have been deleted"); that is
    success here, since the usual case is that there was nothing to clean up.
    """
    if proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol {proto!r}")
    # conntrack reads IPv4 entries unless told otherwise, even when only ports are given.
    args = [CONNTRACK, "-D", "-f", "ipv6" if family == 6 else "ipv4", "-p", proto]
    if orig_dst is not None:
        args += ["--orig-dst", orig_dst]
    if orig_port_dst is not None:
        args += ["--orig-port-dst", str(orig_port_dst)]
    if reply_src is not None:
        args += ["--reply-src", reply_src]
    if reply_port_src is not None:
        args += ["--reply-port-src", str(reply_port_src)]
    if len(args) == 6:
        raise ValueError("refusing to delete every conntrack entry of a protocol")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise ConntrackError(
            "conntrack not found: install conntrack-tools (`apt-get install conntrack`)"
        ) from None
    out, err = await proc.communicate()
    text = (out + err).decode(errors="replace")
    m = _DELETED_RE.search(text)
    if m is not None and (proc.returncode == 0 or m.group(1) == "0"):
        return int(m.group(1))
    one_line = " ".join(text.split()) or f"exit code {proc.returncode}"
    raise ConntrackError(f"{' '.join(args)} failed: {one_line}")


_ESTABLISHED = 3  # TCP_CONNTRACK_ESTABLISHED


def _tcp_state(msg: Any) -> int | None:
    info = msg.get_attr("CTA_PROTOINFO")
    tcp = info.get_attr("CTA_PROTOINFO_TCP") if info is not None else None
    return tcp.get_attr("CTA_PROTOINFO_TCP_STATE") if tcp is not None else None


def _forget_backend(ip: str, port: int, proto: str) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    key = "CTA_IP_V6" if family == socket.AF_INET6 else "CTA_IP_V4"
    num = _PROTO_NUMS[proto]
    # The kernel filters on the reply tuple; it finds no IPv6 address this way (kernel 6.18,
    # pyroute2 0.9), so for IPv6 it filters on the port alone and the check below does the rest.
    wanted = NFCTAttrTuple(family=family, saddr=None if family == socket.AF_INET6 else ip,
                           proto=num, sport=port)
    # Only what the deletes need is kept from the dump, one small tuple per entry: a drained
    # replica of a busy app leaves tens of thousands of TIME_WAIT entries, and holding them
    # as parsed messages (kilobytes of Python objects each) took the daemon from 50 MB to
    # 200 MB and more, which glibc then kept (bench/RESULTS.md, controller footprint).
    found: list[tuple[str, int, int]] = []
    gone = 0
    with NFCTSocket(nfgen_family=family) as ct:
        for msg in ct.dump(tuple_reply=wanted):
            reply = msg.get_attr("CTA_TUPLE_REPLY")
            if reply is None:
                continue
            r_ip, r_proto = reply.get_attr("CTA_TUPLE_IP"), reply.get_attr("CTA_TUPLE_PROTO")
            # Older kernels' reply-tuple filters had bugs too: every entry is checked here.
            if (r_ip.get_attr(f"{key}_SRC") != ip or r_proto.get_attr("CTA_PROTO_SRC_PORT") != port
                    or r_proto.get_attr("CTA_PROTO_NUM") != num):
                continue
            if _tcp_state(msg) == _ESTABLISHED:
                # Still open after the drain's timeout (a keep-alive client): the replica's
                # graceful stop closes it; deleting its entry now would send its next packet
                # through the DNAT afresh, to a replica that answers with a reset.
                continue
            found.append((r_ip.get_attr(f"{key}_DST"), r_proto.get_attr("CTA_PROTO_DST_PORT"),
                          msg.get_attr("CTA_ID")))
        for daddr, dport, ct_id in found:
            tuple_reply = NFCTAttrTuple(family=family, saddr=ip, daddr=daddr, proto=num,
                                        sport=port, dport=dport)
            try:
                # By the REPLY tuple, which names this replica: a new connection that took the
                # same original tuple since the dump (a client port reused) went to another
                # replica, has another reply tuple and is not found. Neither the original tuple
                # nor the id tells them apart (the id hashes the entry's address and original
                # tuple, and the new entry usually gets the old one's memory).
                ct.entry("del", tuple_reply=tuple_reply, id=ct_id)
                gone += 1
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise ConntrackError(f"deleting a conntrack entry of {ip}: {e}") from None
    del found
    malloc.trim()  # pyroute2 parsed the whole dump at once: give that back now
    return gone


def _forget_unnated(port: int, proto: str, family: int) -> int:
    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    key = "CTA_IP_V6" if fam == socket.AF_INET6 else "CTA_IP_V4"
    num = _PROTO_NUMS[proto]
    found: list[tuple[str, str, int]] = []  # (host address, client address, client port)
    gone = 0
    with NFCTSocket(nfgen_family=fam) as ct:
        for msg in ct.dump(tuple_orig=NFCTAttrTuple(family=fam, proto=num, dport=port)):
            orig, reply = msg.get_attr("CTA_TUPLE_ORIG"), msg.get_attr("CTA_TUPLE_REPLY")
            if orig is None or reply is None:
                continue
            o_ip, o_proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
            r_ip, r_proto = reply.get_attr("CTA_TUPLE_IP"), reply.get_attr("CTA_TUPLE_PROTO")
            if (o_proto.get_attr("CTA_PROTO_NUM") != num
                    or o_proto.get_attr("CTA_PROTO_DST_PORT") != port
                    or r_proto.get_attr("CTA_PROTO_SRC_PORT") != port
                    or r_ip.get_attr(f"{key}_SRC") != o_ip.get_attr(f"{key}_DST")):
                continue  # NATed (its reply comes from a backend), or not this port's
            found.append((r_ip.get_attr(f"{key}_SRC"), r_ip.get_attr(f"{key}_DST"),
                          r_proto.get_attr("CTA_PROTO_DST_PORT")))
        for host, client, cport in found:
            try:
                # By the reply tuple, which names the host itself: a NATed connection that
                # took the same client port since the dump has a backend's, and stays.
                ct.entry("del", tuple_reply=NFCTAttrTuple(family=fam, saddr=host, daddr=client,
                                                          proto=num, sport=port, dport=cport))
                gone += 1
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise ConntrackError(f"deleting a conntrack entry of port {port}: {e}"
                                         ) from None
    del found
    malloc.trim()
    return gone


async def forget_unnated(port: int, proto: str = "tcp", family: int = 4) -> int:
    """Delete the entries of connections to the host's `port` that were not NATed: made while
    the app had no backend (refused by lbctl's REJECT, or by nothing listening). Until they
    time out (a refused TCP connection's: 10 s) a new connection from a client port one of
    them used bypasses the DNAT and is refused again, though the app now serves: under a load
    of a few thousand new connections a second a client's ports come round that fast. NATed
    entries (established connections to a backend) are left alone. Returns how many went."""
    if proto not in _PROTO_NUMS:
        raise ValueError(f"unsupported protocol {proto!r}")
    try:
        return await asyncio.to_thread(_forget_unnated, port, proto, family)
    except (OSError, NetlinkError) as e:
        raise ConntrackError(f"conntrack entries of port {port}: {e}") from None


async def forget_backend(ip: str, port: int, proto: str = "tcp") -> int:
    """Delete the conntrack entries of connections NATed to `ip`:`port`, each checked by its
    id; return how many went.  Called for a drained iptables-mode replica just before it
    stops (see the module doc): what is left then is TIME_WAIT and closing entries, and the
    established connections of clients that kept theirs past the drain's timeout, which
    stay (the replica's graceful stop closes them, with `Connection: close` in HTTP)."""
    if proto not in _PROTO_NUMS:
        raise ValueError(f"unsupported protocol {proto!r}")
    try:
        return await asyncio.to_thread(_forget_backend, ip, port, proto)
    except (OSError, NetlinkError) as e:
        raise ConntrackError(f"conntrack entries of {ip}:{port}: {e}") from None
