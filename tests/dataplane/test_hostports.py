"""The placeholder that holds an app's host port, with real sockets on 127.0.0.1: whatever
another process tries (a plain bind, a wildcard or dual-stack one, SO_REUSEADDR,
SO_REUSEPORT), the port stays lbctl's until released. (tests/e2e/test_policy.py shows that
clients are served through the DNAT while it is held.)"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from harness.host import free_port
from lbctl.dataplane.hostports import HostPorts, bind_placeholder, who_holds
from lbctl.model import InvalidInput, Publish


def can_bind(family: int, kind: int, addr: tuple[str, int], opt: int | None = None,
             v6only: bool = False) -> bool:
    with socket.socket(family, kind) as s:
        if opt is not None:
            s.setsockopt(socket.SOL_SOCKET, opt, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        try:
            s.bind(addr)
        except OSError:
            return False
        if kind == socket.SOCK_STREAM:
            s.listen()
        return True


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_held_port_cannot_be_bound_by_anyone_else(proto: str) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    port = free_port()
    ports = HostPorts()
    where = [Publish("127.0.0.1", port, 80, proto)]
    ports.hold("web", where, ports.reserve(where))
    v4 = socket.AF_INET
    attempts = {
        "same address": can_bind(v4, kind, ("127.0.0.1", port)),
        "every address": can_bind(v4, kind, ("0.0.0.0", port)),
        "SO_REUSEADDR": can_bind(v4, kind, ("127.0.0.1", port), socket.SO_REUSEADDR),
        "SO_REUSEPORT": can_bind(v4, kind, ("127.0.0.1", port), socket.SO_REUSEPORT),
        "dual-stack [::]": can_bind(socket.AF_INET6, kind, ("::", port)),
    }
    assert not any(attempts.values()), attempts
    # Only that address is ours: another loopback address and IPv6 stay free.
    assert can_bind(v4, kind, ("127.0.0.2", port))
    assert can_bind(socket.AF_INET6, kind, ("::1", port), v6only=True)
    with pytest.raises(InvalidInput, match=rf"127.0.0.1:{port}/{proto} is already in use"):
        ports.check(Publish("127.0.0.1", port, 80, proto))
    ports.release("web")
    assert can_bind(v4, kind, ("127.0.0.1", port)) and can_bind(v4, kind, ("0.0.0.0", port))


def test_a_wildcard_hold_covers_every_address() -> None:
    port = free_port()
    sock = bind_placeholder(Publish("0.0.0.0", port, 80))
    try:
        assert not can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.5", port))
    finally:
        sock.close()


def test_the_placeholder_neither_listens_nor_reads() -> None:
    """A TCP client that reaches the host socket itself (no DNAT) is reset, not queued."""
    port = free_port()
    sock = bind_placeholder(Publish("127.0.0.1", port, 80))
    try:
        # A bound-only socket is in no table /proc shows; in particular, not a listener (0A).
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        assert not [r for r in rows if int(r.split()[1].rsplit(":", 1)[1], 16) == port]
        with socket.socket() as c, pytest.raises(ConnectionRefusedError):
            c.connect(("127.0.0.1", port))
    finally:
        sock.close()


def test_a_port_taken_meanwhile_is_a_conflict_until_it_is_free() -> None:
    """What a restarted daemon does: it wants the port back; someone has it; it says who,
    and takes it once it is free."""
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    ports = HostPorts()
    try:
        msg = ports.ensure("web", [Publish("127.0.0.1", port, 80)])
        assert msg is not None and ports.conflict("web") == msg and not ports.held("web")
        assert f"port 127.0.0.1:{port}/tcp is also bound by pid {os.getpid()} (" in msg, msg
        assert "gets none of its traffic" in msg
        with pytest.raises(InvalidInput, match=r"already in use on this host .held by pid"):
            ports.check(Publish("127.0.0.1", port, 80))
        ports.retry()
        assert ports.conflict("web") == msg
    finally:
        squatter.close()
    ports.retry()
    assert ports.conflict("web") is None and ports.held("web")
    assert not can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
    ports.close()
    assert can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))


def test_who_holds_names_the_process() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        assert who_holds(Publish("127.0.0.1", port, 80, "udp")) == (
            f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})")
    assert who_holds(Publish("127.0.0.1", port, 80, "udp")) is None


def test_an_app_with_two_addresses_holds_both_or_reports_the_one_taken() -> None:
    """All or none for a new app; after a restart, every port that is free is held at once
    and the taken one is reported until it is free."""
    a, b = free_port(), free_port()
    both = [Publish("127.0.0.1", a, 80), Publish("127.0.0.1", b, 80, "udp")]
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", b))
    ports = HostPorts()
    try:
        with pytest.raises(InvalidInput, match=rf"{b}/udp is already in use"):
            ports.reserve(both)
        assert can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", a)), "a kept"
        msg = ports.ensure("web", both)
        assert msg is not None and f"{b}/udp" in msg and not ports.held("web")
        assert not can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", a))
    finally:
        squatter.close()
    ports.retry()
    assert ports.held("web") and ports.conflict("web") is None
    assert not can_bind(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", b))
    ports.release("web")
    assert can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", a))
    assert can_bind(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", b))


def test_an_ipv6_hold_is_ipv6_only() -> None:
    """[::] takes the port for IPv6 and leaves IPv4 to its own publish (lbctl's IPv6 rule
    covers IPv6 only)."""
    port = free_port()
    sock = bind_placeholder(Publish("::", port, 80))
    try:
        assert not can_bind(socket.AF_INET6, socket.SOCK_STREAM, ("::1", port), v6only=True)
        assert can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
    finally:
        sock.close()
