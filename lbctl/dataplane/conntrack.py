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
import re
import socket

from lbctl import malloc
from lbctl.dataplane.ctnetlink import CtSocket, Match

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


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _forget_backend(ip: str, port: int, proto: str) -> int:
    family, num = _family(ip), _PROTO_NUMS[proto]
    # The kernel's filter on a reply tuple's IPv6 address compares the wrong way round (kernel
    # 6.18: it returned the other backends' entries): for IPv6 it filters on the port alone
    # and the check below does the rest.
    wanted = Match(src=ip if family == socket.AF_INET else None, sport=port)
    with CtSocket() as ct:
        # Only the tuple each delete needs is kept from the dump: a drained replica of a busy
        # app leaves tens of thousands of TIME_WAIT entries (bench/RESULTS.md, controller
        # footprint, for what holding whole parsed messages cost).
        found = [
            (e.reply, e.id) for e in ct.dump(family, num, reply=wanted)
            # Older kernels' reply-tuple filters had bugs too: every entry is checked here.
            if e.reply.src == ip and e.reply.sport == port
            # Still open after the drain's timeout (a keep-alive client): the replica's
            # graceful stop closes it; deleting its entry now would send its next packet
            # through the DNAT afresh, to a replica that answers with a reset.
            and e.tcp_state != _ESTABLISHED
        ]
        # By the REPLY tuple, which names this replica: a new connection that took the same
        # original tuple since the dump (a client port reused) went to another replica, has
        # another reply tuple and is not found. Neither the original tuple nor the id tells
        # them apart (the id hashes the entry's address and original tuple, and the new entry
        # usually gets the old one's memory); the id still spares an entry that replaced the
        # dumped one with the same reply tuple (the same client back to this replica).
        gone = ct.delete_by_reply(family, num, found)
    del found
    malloc.trim()
    return gone


def _forget_unnated(port: int, proto: str, family: int) -> int:
    fam, num = (socket.AF_INET6 if family == 6 else socket.AF_INET), _PROTO_NUMS[proto]
    with CtSocket() as ct:
        found = [
            # By the reply tuple, which names the host itself: a NATed connection that took
            # the same client port since the dump has a backend's, and stays.
            (e.reply, None) for e in ct.dump(fam, num, orig=Match(dport=port))
            # NATed entries (the reply comes from a backend) and other ports' stay.
            if e.orig.dport == port and e.reply.sport == port and e.reply.src == e.orig.dst
        ]
        gone = ct.delete_by_reply(fam, num, found)
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
    except OSError as e:
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
    except OSError as e:
        raise ConntrackError(f"conntrack entries of {ip}:{port}: {e}") from None
