"""The hand-over of socket activation (lbctl.dataplane.activation) with real sockets and the
real shim, no engine: a process that connects to a replica's socket gets that replica's
listeners, bound to exactly the published addresses, and is their only owner; the shim puts
them on fd 3 on with systemd's variables and execs the app; a refusal reaches the shim as one
line; directories follow the replicas."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.activation import build_shim
from harness.host import free_port
from lbctl.dataplane import sockets
from lbctl.dataplane.activation import ActivationServer, make_listeners
from lbctl.model import Publish
from lbctl.model.dataplane import Member
from lbctl.settings import ActivationSettings

# What the shim's app sees: its variables and its inherited sockets' addresses.
APP = r"""
import json, os, socket
n = int(os.environ["LISTEN_FDS"])
socks = []
for fd in range(3, 3 + n):
    s = socket.socket(fileno=fd)
    host, port = s.getsockname()[:2]
    socks.append([s.type == socket.SOCK_STREAM, host, port,
                  s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)])
    s.detach()
print(json.dumps({"pid_ok": os.environ["LISTEN_PID"] == str(os.getpid()),
                  "names": os.environ.get("LISTEN_FDNAMES"), "socks": socks,
                  "left": [k for k in os.environ if k.startswith("LBCTL_ACTIVATION")]}))
"""


class Inserted:
    """Stands in for EbpfDataplane.insert: what was put in the map, while the daemon held it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Member, list[sockets.Listener]]] = []

    async def __call__(self, app: str, port: int, member: Member,
                       made: Sequence[tuple[int, sockets.Listener]]) -> int:
        for fd, listener in made:
            assert os.fstat(fd).st_ino == listener.inode  # still open while inserted
        self.calls.append((app, port, member, [lst for _, lst in made]))
        return len(made)


def _fds_of(inode: int) -> list[str]:
    """This process's fds on socket `inode`."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"socket:[{inode}]":
                out.append(fd)
        except OSError:
            pass
    return out


def _shim(sock: Path, *, timeout: int = 5) -> subprocess.Popen[str]:
    return subprocess.Popen([str(build_shim()), sys.executable, "-c", APP],
                            env={**os.environ, "LBCTL_ACTIVATION_SOCKET": str(sock),
                                 "LBCTL_ACTIVATION_TIMEOUT": str(timeout)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = await asyncio.to_thread(p.communicate, timeout=30)
    return p.returncode, out, err


async def test_the_shim_gets_the_replicas_listeners_and_is_their_only_owner(
        tmp_path: Path) -> None:
    # A state dir deeper than sun_path's 108 bytes: the socket is bound through its dir fd.
    state = tmp_path / ("d" * 60) / ("e" * 60)
    port = free_port()
    pubs = [Publish("127.0.0.1", port, 8080), Publish("::1", port, 8080)]
    inserted = Inserted()
    srv = ActivationServer(state, ActivationSettings(), insert=inserted)
    try:
        d = srv.serve("web", "web-1", pubs)
        assert d == state / "activation" / "web" / "web-1"
        assert oct(d.stat().st_mode & 0o777) == "0o755"
        assert oct((d / "activation.sock").stat().st_mode & 0o777) == "0o666"
        # A replica sees it at /run/lbctl/activation.sock; here, through a short link.
        (tmp_path / "s").symlink_to(d / "activation.sock")
        code, out, err = await _finish(_shim(tmp_path / "s"))
        assert code == 0, err
        got = json.loads(out)
        # Both families, bound to exactly the published addresses, listening already.
        assert got == {"pid_ok": True, "names": "tcp4:tcp6", "left": [],
                       "socks": [[True, "127.0.0.1", port, 1], [True, "::1", port, 1]]}
        [(app, at, member, held)] = inserted.calls
        assert (app, at, member.name) == ("web", port, "web-1")
        assert [(lst.fd, lst.addr, lst.group) for lst in held] == [
            (3, "127.0.0.1", "tcp4 127.0.0.1"), (4, "::1", "tcp6 ::1")]
        # The daemon kept no copy, and the app is gone: so are the listeners.
        assert all(_fds_of(lst.inode) == [] for lst in held)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        srv.close()


async def test_a_replica_that_holds_its_listeners_gets_no_second_set(tmp_path: Path) -> None:
    port = free_port()
    srv = ActivationServer(tmp_path, ActivationSettings(), insert=Inserted())
    try:
        d = srv.serve("web", "web-1", [Publish("127.0.0.1", port, 8080)])
        first = await asyncio.to_thread(_ask, d / "activation.sock")
        assert isinstance(first, list) and len(first) == 1
        try:
            # This process holds them now: another ask is refused, in one line, no fd.
            again = await asyncio.to_thread(_ask, d / "activation.sock")
            assert again == ("lbctl: web-1: it holds the listeners of an earlier hand-over: "
                             "one set at a time (the shim runs once per container start)")
        finally:
            for s in first:
                s.close()
        again = await asyncio.to_thread(_ask, d / "activation.sock")  # free again
        assert isinstance(again, list)
        for s in again:
            s.close()
    finally:
        srv.close()


def _ask(path: Path) -> list[socket.socket] | str:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))
        msg, fds, _, _ = socket.recv_fds(c, 512, 8)
    if not fds:
        return msg.decode()
    return [socket.socket(fileno=fd) for fd in fds]


async def test_a_port_taken_without_reuseport_is_a_refusal_not_a_hang(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        srv = ActivationServer(tmp_path, ActivationSettings(), insert=Inserted())
        try:
            d = srv.serve("web", "web-1", [Publish("127.0.0.1", port, 8080)])
            code, _, err = await _finish(_shim(d / "activation.sock"))
            assert code == 111 and "cannot make its listeners" in err, err
        finally:
            srv.close()


async def test_a_shim_started_before_the_daemon_waits_for_it(tmp_path: Path) -> None:
    port = free_port()
    srv = ActivationServer(tmp_path, ActivationSettings(), insert=Inserted())
    d = srv.serve("web", "web-1", [Publish("127.0.0.1", port, 8080)])
    srv.close()  # the daemon stops: the socket's file stays, nobody answers it
    assert (d / "activation.sock").is_socket()
    p = _shim(d / "activation.sock", timeout=20)
    await asyncio.sleep(0.5)
    assert p.poll() is None  # waiting
    again = ActivationServer(tmp_path, ActivationSettings(), insert=Inserted())
    try:
        assert again.serve("web", "web-1", [Publish("127.0.0.1", port, 8080)]) == d
        code, out, err = await _finish(p)
        assert code == 0 and json.loads(out)["socks"] == [[True, "127.0.0.1", port, 1]], err
    finally:
        again.close()
    code, _, err = await _finish(_shim(d / "activation.sock", timeout=1))  # no daemon at all
    assert code == 111 and "nothing serves listeners" in err, err


async def test_directories_follow_the_replicas(tmp_path: Path) -> None:
    srv = ActivationServer(tmp_path, ActivationSettings(), insert=Inserted())
    try:
        pub = [Publish("127.0.0.1", free_port(), 8080)]
        for r in ("web-1", "web-2", "web-3"):
            srv.serve("web", r, pub)
        (tmp_path / "activation" / "web" / "web-9").mkdir()  # an earlier daemon's leftover
        srv.keep("web", {"web-1", "web-3"})
        assert sorted(p.name for p in (tmp_path / "activation" / "web").iterdir()) == [
            "web-1", "web-3"]
        assert srv.served("web") == ["web-1", "web-3"]
        srv.remove("web")
        assert not (tmp_path / "activation" / "web").exists() and srv.served("web") == []
    finally:
        srv.close()


def test_listeners_are_one_per_publish_v6_only_and_all_or_none() -> None:
    port = free_port()
    made = make_listeners([Publish("0.0.0.0", port, 1), Publish("::", port, 1),
                           Publish("127.0.0.1", port, 1, "udp")])
    try:
        assert [n for n, _ in made] == ["tcp4", "tcp6", "udp4"]
        v6 = made[1][1]
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for _, s in made)
    finally:
        for _, s in made:
            s.close()
    with socket.socket() as other:  # bound without SO_REUSEPORT: nothing may join it
        other.bind(("127.0.0.1", 0))
        taken = other.getsockname()[1]
        with pytest.raises(OSError):
            make_listeners([Publish("::1", taken, 1), Publish("127.0.0.1", taken, 1)])
