"""The socket a readiness probe of one replica connects from, in ebpf mode.

Every replica of an app listens on the same address and port, so a plain connect is answered
by whichever replica the program picks.  A probe is therefore made from inside the app's
network namespace, to the namespace's own address (source == destination address), from
source port PROBE_PORT_BASE + the slot of the listener it asks about: the program
(bpf/lbctl_reuseport.c, probe_slot()) sends that SYN to that slot's socket, ready or not, and
refuses it when the slot holds none, so the answer is always the named replica's.

One probe per family the app publishes: a replica with an IPv4 and an IPv6 socket has a slot
for each, and a dual-stack `[::]` socket takes the IPv4 probe in its one slot.

The probe's 4-tuple is the same every time (the slot's port, the namespace's address, the app
port), so the caller closes it abortively (SO_LINGER 0, set here): a normal close would leave
the 4-tuple in TIME_WAIT on the prober's side, which blocks the next connect from it to a
non-loopback address (tcp_tw_reuse=2 reuses only loopback ones), e.g. a replica bound to its
own address or a `--network host` app on the host's.

Pure choice (target()) apart from the socket's creation (open_socket(): blocking, run it in a
thread; it enters the namespace on the calling thread only, lbctl.dataplane.netns).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from lbctl.dataplane import netns, sockets
from lbctl.dataplane.ebpf import layout

__all__ = ["PROBE_PORT_BASE", "Target", "open_socket", "target"]

PROBE_PORT_BASE = layout.DEFINES["PROBE_PORT_BASE"]


@dataclass(frozen=True)
class Target:
    """Where one probe goes: the socket family, the address both ends use, and the slot."""

    family: int  # socket.AF_INET or AF_INET6 (of the probe's socket, not of the listener)
    address: str  # the namespace's own: loopback for a wildcard listener, else its bound one
    slot: int

    @property
    def source_port(self) -> int:
        return PROBE_PORT_BASE + self.slot


def target(listeners: Sequence[tuple[int, str]], family: int) -> Target | None:
    """The probe of a replica's `family` (4 or 6) from its (slot, group) listeners on the app
    port, TCP ones only; None when it has none that takes that family.  IPv4 prefers an IPv4
    socket and falls back to a wildcard IPv6 one (dual-stack; a v6-only socket then refuses
    the probe, which is the right verdict: it serves no IPv4 client either)."""
    fallback: Target | None = None
    for slot, group in sorted(listeners):
        try:
            proto, fam, addr = sockets.parse_group_id(group)
        except ValueError:
            continue
        if proto != "tcp":
            continue
        wildcard = ipaddress.ip_address(addr).is_unspecified
        if family == 4 and fam == socket.AF_INET:
            return Target(socket.AF_INET, "127.0.0.1" if wildcard else addr, slot)
        if family == 6 and fam == socket.AF_INET6:
            return Target(socket.AF_INET6, "::1" if wildcard else addr, slot)
        if family == 4 and fam == socket.AF_INET6 and wildcard and fallback is None:
            fallback = Target(socket.AF_INET, "127.0.0.1", slot)
    return fallback


def open_socket(pid: int, t: Target) -> socket.socket:
    """A non-blocking TCP socket in `pid`'s network namespace, bound to (t.address, the slot's
    port) and set to close abortively; the caller connects it to (t.address, app port).
    Blocking: run in a thread."""
    with netns.inside(pid):
        s = socket.socket(t.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # A probe socket of this slot that is still closing must not fail the bind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((t.address, t.source_port))
    except BaseException:
        with contextlib.suppress(OSError):
            s.close()
        raise
    return s
