"""The host ports of lbctl's apps, held by the daemon for as long as each app exists.

lbctl's DNAT takes an app's traffic before it could reach any local socket, so without a
hold, any process could bind the app's port later and never see a packet: a server that
starts and silently serves nothing, or a port an unprivileged user takes to confuse others.
A placeholder socket, bound to the app's host IP, port and protocol, makes the kernel refuse
every later bind there (EADDRINUSE), including a wildcard or dual-stack one.

The placeholder is bound and never listens (TCP) or reads (UDP): the DNAT rewrites packets
in nat PREROUTING/OUTPUT, before the local socket lookup, so it never gets a packet while the
rules are in place; if they are not (a host whose rules were flushed), a TCP client gets a
reset rather than a connection that hangs in an accept queue nobody serves.

SO_REUSEADDR, for TCP, is set for the bind and cleared right after it. Set, the bind succeeds
beside the TIME_WAIT sockets a server leaves on its port for a minute after serving short
connections (servers set SO_REUSEADDR, and their TIME_WAIT sockets inherit it): without it,
an app redeployed at once (`rm`, then `run` on the same port; `--network host` above all,
whose replicas served on the host's own sockets) was refused "already in use" for about 60 s.
A listener still conflicts (Linux never shares a port in LISTEN through SO_REUSEADDR), and so
does any socket bound without the option. Cleared, it makes the hold whole again: the kernel
reads the option of the sockets already on a port at each new bind, so a later bind is
refused whatever it sets (tests/dataplane/test_hostports.py checks both on the real kernel).
SO_REUSEPORT is never set: it would let a process of the same user join the port. UDP gets
neither: it has no TIME_WAIT, and SO_REUSEADDR on two UDP sockets lets them share the port.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lbctl.model import AppSpec, InvalidInput, Publish

log = logging.getLogger("lbctl.dataplane")


class Placeholder(Protocol):
    def close(self) -> None: ...


def bind_placeholder(publish: Publish) -> socket.socket:
    """A socket bound to `publish`'s host address; OSError when the kernel refuses."""
    kind = socket.SOCK_STREAM if publish.proto == "tcp" else socket.SOCK_DGRAM
    host = publish.host_ip.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # An IPv6 publish ("[::]") is IPv6 only, as lbctl's rule for it: an app that
            # wants IPv4 too publishes 0.0.0.0, which holds the IPv4 side.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            # Nothing reads it: if a datagram ever reaches it (no DNAT in place), it is
            # dropped at once instead of queuing up to the default buffer.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT (doc)
        s.bind((host, publish.host_port))
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)  # and no one else now
    except OSError:
        s.close()
        raise
    return s


def describe(publish: Publish, e: OSError) -> str:
    where = f"{publish.host_addr}/{publish.proto}"
    if e.errno == errno.EACCES:  # a port below 1024 without CAP_NET_BIND_SERVICE
        return (f"port {where} cannot be bound by the daemon ({e.strerror}): it needs "
                "CAP_NET_BIND_SERVICE for ports below 1024")
    holder = who_holds(publish)
    return (f"port {where} is already in use on this host "
            f"({f'held by {holder}' if holder else e.strerror})")


def conflict_line(publish: Publish, e: OSError) -> str:
    """What `status` says of an app's port that another process bound while the daemon did
    not hold it (it was down): that process gets none of the traffic."""
    if e.errno == errno.EACCES:
        return describe(publish, e)
    where = f"{publish.host_addr}/{publish.proto}"
    holder = who_holds(publish) or "another socket"
    return (f"port {where} is also bound by {holder}, which gets none of its traffic "
            "(lbctl's rule sends it to this app)")


@dataclass
class _Held:
    publishes: tuple[Publish, ...]
    socks: dict[Publish, Placeholder] = field(default_factory=dict)
    conflict: str | None = None  # the first port someone else has, while they have it

    def whole(self) -> bool:
        return all(p in self.socks for p in self.publishes)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


class HostPorts:
    """app -> its placeholders (one per published address). `bind` is injectable so that
    logic tests hold nothing real (unit tests share the host's ports with every other run)."""

    def __init__(self, bind: Callable[[Publish], Placeholder] = bind_placeholder) -> None:
        self._bind = bind
        self._apps: dict[str, _Held] = {}

    def check(self, publish: Publish) -> None:
        """Refuse a port something on the host serves or holds (InvalidInput); holds nothing."""
        for sock in self.reserve([publish]):
            sock.close()

    def check_spec(self, spec: AppSpec) -> None:
        """check() for every address `spec` publishes."""
        for sock in self.reserve(spec.publishes):
            sock.close()

    def reserve(self, publishes: Sequence[Publish]) -> list[Placeholder]:
        """Placeholders for a new app, all or none; InvalidInput says who has a port. Kept
        with `hold` once the app is committed, else closed by the caller."""
        socks: list[Placeholder] = []
        try:
            for publish in publishes:
                try:
                    socks.append(self._bind(publish))
                except OSError as e:
                    raise InvalidInput(describe(publish, e)) from None
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks

    def hold(self, app: str, publishes: Sequence[Publish], socks: Sequence[Placeholder]) -> None:
        old = self._apps.pop(app, None)
        if old is not None:
            old.close()
        self._apps[app] = _Held(tuple(publishes), dict(zip(publishes, socks, strict=True)))

    def ensure(self, app: str, publishes: Sequence[Publish]) -> str | None:
        """Hold every port of `app` not held yet (a daemon start, a retry after a conflict);
        returns the conflict when something else has one of them."""
        held = self._apps.get(app)
        if held is None or held.publishes != tuple(publishes):
            if held is not None:
                held.close()
            held = self._apps[app] = _Held(tuple(publishes))
        before = held.conflict
        held.conflict = None
        for publish in held.publishes:
            if publish in held.socks:
                continue
            try:
                held.socks[publish] = self._bind(publish)
            except OSError as e:
                held.conflict = held.conflict or conflict_line(publish, e)
        if held.conflict is not None and before is None:
            log.warning("%s; lbctl takes the port back once it is free", held.conflict,
                        extra={"app": app})
        elif held.conflict is None and before is not None:
            log.info("host port taken back", extra={"app": app})
        return held.conflict

    def ensure_all(self, apps: Mapping[str, Sequence[Publish]]) -> None:
        for app, publishes in sorted(apps.items()):
            self.ensure(app, publishes)

    def retry(self) -> None:
        """Take back every port that was in use at the last try."""
        for app, held in list(self._apps.items()):
            if not held.whole():
                self.ensure(app, held.publishes)

    def release(self, app: str) -> None:
        held = self._apps.pop(app, None)
        if held is not None:
            held.close()

    def conflict(self, app: str) -> str | None:
        held = self._apps.get(app)
        return held.conflict if held is not None else None

    def held(self, app: str) -> bool:
        held = self._apps.get(app)
        return held is not None and held.whole()

    def close(self) -> None:
        """The daemon stops: the ports are free until it starts again (the rules stay)."""
        for app in list(self._apps):
            self.release(app)


# ---- who has a port (for the message only) ----------------------------------------------------


def who_holds(publish: Publish) -> str | None:
    """'pid 1234 (nginx)' for the process that has a socket on the port, best effort:
    /proc/net lists listeners, UDP sockets and connections, but not a TCP socket that is only
    bound (like our own placeholder), and a socket in TIME_WAIT has no process."""
    inodes = _socket_inodes(publish.proto, publish.host_port)
    if not inodes:
        return None
    for pid in _pids():
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        comm = Path(f"/proc/{pid}/comm").read_text().strip()
                        return f"pid {pid} ({comm})"
    return None


def _socket_inodes(proto: str, port: int) -> set[str]:
    out: set[str] = set()
    for table in (proto, proto + "6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] != "0":
                    out.add(f[9])
    return out


def _pids() -> list[int]:
    return sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
