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


def time_wait_port() -> int:
    """A port a server just served short connections on, closing each first (as an HTTP/1.0
    server does), then stopped: its TIME_WAIT sockets stay for about a minute."""
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        server.bind(("127.0.0.1", port))
        server.listen()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as client:
                conn, _ = server.accept()
                conn.close()  # the server closes first: the TIME_WAIT is on its port
                assert client.recv(1) == b""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    waiting = [r for r in rows
               if int(r.split()[1].rsplit(":", 1)[1], 16) == port and r.split()[3] == "06"]
    assert waiting, "no TIME_WAIT socket on the port: the test would prove nothing"
    # What refused a redeploy before: a plain bind (no SO_REUSEADDR) fails there.
    assert not can_bind(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
    return port


def test_time_wait_sockets_do_not_make_a_port_look_taken() -> None:
    """A redeploy on the port a moment after the old app served on it (TIME_WAIT) is free to
    check and to hold; once held, nobody else binds it, whatever options they set."""
    port = time_wait_port()
    where = Publish("127.0.0.1", port, 80)
    ports = HostPorts()
    ports.check(where)
    ports.hold("web", [where], ports.reserve([where]))
    try:
        v4, tcp = socket.AF_INET, socket.SOCK_STREAM
        attempts = {
            "plain": can_bind(v4, tcp, ("127.0.0.1", port)),
            "every address": can_bind(v4, tcp, ("0.0.0.0", port)),
            "SO_REUSEADDR": can_bind(v4, tcp, ("127.0.0.1", port), socket.SO_REUSEADDR),
            "SO_REUSEPORT": can_bind(v4, tcp, ("127.0.0.1", port), socket.SO_REUSEPORT),
        }
        assert not any(attempts.values()), attempts
    finally:
        ports.release("web")


@pytest.mark.parametrize("opt", [None, socket.SO_REUSEADDR, socket.SO_REUSEPORT])
def test_a_real_listener_is_still_found_whatever_its_options(opt: int | None) -> None:
    # A listener with SO_REUSEADDR may start beside TIME_WAIT sockets (the others may not:
    # the kernel refuses them there, as it did lbctl's check).
    port = time_wait_port() if opt == socket.SO_REUSEADDR else free_port()
    with socket.socket() as server:
        if opt is not None:
            server.setsockopt(socket.SOL_SOCKET, opt, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        for where in ("127.0.0.1", "0.0.0.0"):
            with pytest.raises(InvalidInput, match="already in use"):
                HostPorts().check(Publish(where, port, 80))
