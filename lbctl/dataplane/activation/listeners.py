"""The listeners of one replica of an activated app: what the daemon makes in the host's
network namespace each time that replica's shim asks.

One socket per publish, bound to exactly its HOST_IP:HOST_PORT (an IPv6 one v6-only, so that
`0.0.0.0` and `[::]` publishes are two groups as they are two publishes), with SO_REUSEPORT:
every replica's socket of one publish joins the same reuseport group of the host, which
lbctl's program steers. A TCP one is listening already when it is handed over, so
connections that arrive before the app's first accept() wait in its queue rather than being
refused (and a program's table never names it before the replica is ready).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from lbctl.model import Publish

# As large as the kernel allows (net.core.somaxconn caps it): the app's own listen() on an
# inherited socket (the demo's, nginx's) may set it again.
BACKLOG = 4096


def fd_name(publish: Publish, taken: set[str]) -> str:
    """The socket's name in LISTEN_FDNAMES: its protocol and family ("tcp4", "udp6"), and a
    number for a second address of one family ("tcp4-2"). sd_listen_fds_with_names() takes
    names without ':', which rules out addresses."""
    base = f"{publish.proto}{publish.family}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def make_listeners(publishes: Sequence[Publish]) -> list[tuple[str, socket.socket]]:
    """(name, socket) per publish, in the publishes' order; all or none (OSError: the
    kernel refused one, e.g. the port is bound by something else without SO_REUSEPORT)."""
    made: list[tuple[str, socket.socket]] = []
    names: set[str] = set()
    try:
        for p in publishes:
            family = socket.AF_INET6 if p.family == 6 else socket.AF_INET
            kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(family, kind)
            made.append((fd_name(p, names), s))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_STREAM:
                # A restarted replica binds while its predecessor's connections sit in
                # TIME_WAIT on the same port.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((p.host_ip, p.host_port))
            if kind == socket.SOCK_STREAM:
                s.listen(BACKLOG)
    except OSError:
        for _, s in made:
            s.close()
        raise
    return made
