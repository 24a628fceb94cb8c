"""Find a replica's sockets on the app port from the host and borrow them (pidfd_getfd).

A replica is a container whose init process has host PID `pid`.  Its processes are those in
the same PID namespace as `pid`; when `pid` shares the *daemon's* PID namespace (a bare
process, as in the tests, or a container run with --pid=host) that would be every process on
the host, so then the replica is `pid` and its descendants instead.

"Listener" here means a socket that takes new traffic on the port: a TCP socket in LISTEN, or
an unconnected UDP socket bound to the port (a connected UDP socket only gets its own peer's
datagrams, and the kernel never runs reuseport selection for it).  A replica may have several:
TCP and/or UDP, IPv4 and/or IPv6, or one dual-stack [::] socket.  Each belongs to the reuseport
group of its (protocol, family, bound address, port), named by Listener.group.

Everything here but established_connections() is blocking (/proc reads, syscalls): callers
run it in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from lbctl.dataplane import bpfsys
from lbctl.model.dataplane import Bound

TCP_LISTEN = 0x0A
# An unconnected UDP socket is in TCP_CLOSE as far as the kernel's state field goes.
UDP_UNCONNECTED = 0x07
# States that still hold an accepted connection the replica must finish. Not TIME_WAIT (6):
# such sockets have no owner and no inode, so they never counted, and asking the kernel for
# them made every drain poll dump and parse tens of thousands of them after a burst of short
# connections (the daemon's RSS grew by >100 MB in an `rm` after new-connection load).
_OPEN_STATES = {0x01, 0x04, 0x05, 0x08, 0x09, 0x0B}  # ESTABLISHED FIN_WAIT1/2 CLOSE_WAIT ...
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass(frozen=True)
class Listener:
    """A socket taking new traffic on the port, as seen from the host."""

    pid: int  # a process holding it (fd numbers are per process)
    fd: int  # its fd number in that process
    inode: int
    family: int  # socket.AF_INET or AF_INET6 (AF_INET6 for a dual-stack socket)
    accept_queue: int  # TCP: connections waiting for accept() right now
    proto: str = "tcp"
    addr: str = ""  # bound address, compressed ("0.0.0.0", "::", "127.0.0.1")

    @property
    def group(self) -> str:
        """Its reuseport group within the app's namespace and port, e.g. "udp6 ::"."""
        return group_id(self.proto, self.family, self.addr)


def group_id(proto: str, family: int, addr: str) -> str:
    return f"{proto}{6 if family == socket.AF_INET6 else 4} {addr}"


def parse_group_id(gid: str) -> tuple[str, int, str]:
    """(protocol, family, bound address) of a group_id(); ValueError when it is not one."""
    kind, sep, addr = gid.partition(" ")
    if not sep or kind not in ("tcp4", "tcp6", "udp4", "udp6"):
        raise ValueError(f"not a listener group: {gid!r}")
    family = socket.AF_INET6 if kind[3] == "6" else socket.AF_INET
    if ipaddress.ip_address(addr).version != (6 if family == socket.AF_INET6 else 4):
        raise ValueError(f"not a listener group: {gid!r}")
    return kind[:3], family, addr


@dataclass(frozen=True)
class _Row:
    inode: int
    state: int
    port: int
    rx_queue: int
    family: int
    addr: str = ""


def _ns_id(pid: int, kind: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{kind}")
    return st.st_dev, st.st_ino


def same_netns(pid_a: int, pid_b: int) -> bool:
    return _ns_id(pid_a, "net") == _ns_id(pid_b, "net")


def namespace_init(pid: int) -> int:
    """The first process of `pid`'s PID namespace, as the host sees it: a container's init,
    the PID its engine reports (an `--init` container's is that init, not its command). A
    process of the daemon's own PID namespace is its own answer: walking up would reach the
    host's init."""
    try:
        ns = _ns_id(pid, "pid")
    except OSError:
        return pid
    if ns == _ns_id(os.getpid(), "pid"):
        return pid
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            if parent <= 1 or _ns_id(parent, "pid") != ns:
                return pid
        except (OSError, ValueError):
            return pid
        pid = parent


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def replica_pids(pid: int) -> list[int]:
    """Processes of the replica whose init is `pid` (see the module doc)."""
    try:
        target = _ns_id(pid, "pid")
    except FileNotFoundError:
        return []
    if target != _ns_id(os.getpid(), "pid"):
        out = []
        for p in _all_pids():
            with contextlib.suppress(OSError):
                if _ns_id(p, "pid") == target:
                    out.append(p)
        return out
    # Same PID namespace as ours: walk the process tree below pid (no /proc/*/children here).
    parent: dict[int, int] = {}
    for p in _all_pids():
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
        parent[p] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        nxt = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(nxt)
        frontier = nxt
    return sorted(tree)


def _socket_fds(pid: int) -> dict[int, int]:
    """inode -> fd number for the sockets `pid` holds (first fd wins)."""
    out: dict[int, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.setdefault(int(link[8:-1]), int(name))
    return out


_LISTEN_MASK = 1 << TCP_LISTEN
_OPEN_MASK = sum(1 << st for st in _OPEN_STATES)
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _rows(pid: int, states: int, proto: str = "tcp") -> list[_Row]:
    """Sockets of `proto` in pid's network namespace in `states` (a bitmask of 1 << state).

    Asked through sock_diag inside that namespace, so the kernel filters by state: a busy
    replica's namespace holds tens of thousands of TIME_WAIT sockets, which the text of
    /proc/PID/net/tcp lists one by one (the first version read it and cost the daemon a core
    under a new-connection load). Falls back to /proc where sock_diag is not available.
    """
    try:
        return _diag_rows(pid, states, proto)
    except OSError:
        return [r for r in _proc_rows(pid, proto) if states >> r.state & 1]


def _diag_rows(pid: int, states: int, proto: str) -> list[_Row]:
    from lbctl.dataplane.netlink import DiagSocket

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except OSError:
        os.close(own)
        return []
    rows: list[_Row] = []
    try:
        # setns switches only this thread (callers run us in a worker thread), and a netlink
        # socket belongs to the namespace it was created in: enter, create, ask, leave.
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            with DiagSocket() as ds:
                ds.bind()
                for family in (socket.AF_INET, socket.AF_INET6):
                    for m in ds.get_sock_stats(family=family, states=states,
                                               protocol=PROTOCOLS[proto]):
                        rows.append(_Row(
                            inode=int(m["idiag_inode"]),
                            state=int(m["idiag_state"]),
                            port=int(m["idiag_sport"]),
                            # for a listener, rqueue is the accept queue length
                            rx_queue=int(m["idiag_rqueue"]),
                            family=family,
                            addr=ipaddress.ip_address(m["idiag_src"]).compressed,
                        ))  # fmt: skip
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:  # never leave a worker thread inside
                raise SystemExit(f"cannot return to the daemon's network namespace: "
                                 f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(own)
    return rows


def _proc_rows(pid: int, proto: str = "tcp") -> Iterable[_Row]:
    """Sockets of pid's network namespace (/proc/PID/net/{tcp,udp}{,6} show that netns)."""
    for fname, family in ((proto, socket.AF_INET), (f"{proto}6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{fname}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            addr_hex, port_hex = parts[1].rsplit(":", 1)
            # For a listener, rx_queue is the accept queue length (sk_ack_backlog).
            rx = int(parts[4].split(":")[1], 16)
            yield _Row(
                inode=int(parts[9]),
                state=int(parts[3], 16),
                port=int(port_hex, 16),
                rx_queue=rx,
                family=family,
                addr=_proc_addr(addr_hex),
            )


def _proc_addr(text: str) -> str:
    """/proc/net's hex address (32-bit words in host byte order) as a compressed address."""
    raw = b"".join(struct.pack("=I", int(text[i:i + 8], 16)) for i in range(0, len(text), 8))
    return ipaddress.ip_address(raw).compressed


def find_listeners(pid: int, port: int, proto: str = "tcp",
                   netns_pid: int | None = None) -> list[Listener]:
    """The replica's listeners of `proto` on `port` (see the module doc), IPv4 first (clients
    of a published IPv4 address reach the IPv4 reuseport group), then by inode for a stable
    choice. They are looked for in the network namespace of `netns_pid` (default: the
    replica's own); socket activation hands a replica listeners of the host's namespace,
    which it holds while it lives in a namespace of its own."""
    pids = replica_pids(pid)
    if not pids:
        return []
    state = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
    rows = {
        r.inode: r
        for r in _rows(pid if netns_pid is None else netns_pid, 1 << state, proto)
        if r.state == state and r.port == port and r.inode
    }
    if not rows:
        return []
    found: dict[int, Listener] = {}
    for p in pids:
        for inode, fd in _socket_fds(p).items():
            row = rows.get(inode)
            if row and inode not in found:
                found[inode] = Listener(p, fd, inode, row.family, row.rx_queue, proto, row.addr)
    return sorted(found.values(), key=lambda lst: (lst.family != socket.AF_INET, lst.inode))


def count_open(pid: int, port: int, netns_pid: int | None = None) -> int:
    """Connections the replica accepted on `port` and has not finished, plus those waiting in
    its accept queue: 0 means stopping it now loses nobody. `netns_pid`: the namespace its
    listeners (and so the connections they accepted) live in, as for find_listeners."""
    pids = replica_pids(pid)
    owned: set[int] = set()
    for p in pids:
        owned.update(_socket_fds(p))
    n = 0
    for r in _rows(pid if netns_pid is None else netns_pid, _LISTEN_MASK | _OPEN_MASK):
        if r.port != port or r.inode not in owned:
            continue
        if r.state == TCP_LISTEN:
            n += r.rx_queue
        elif r.state in _OPEN_STATES:
            n += 1
    return n


async def established_connections(pid: int, port: int, host: bool = False) -> int:
    """count_open() off the event loop: what a drain waits to reach 0, in either mode.
    `host`: the replica's listeners are the host's (socket activation), so are the
    connections they accepted."""
    return await asyncio.to_thread(count_open, pid, port, os.getpid() if host else None)


def take(listener: Listener) -> int:
    """Duplicate the listener into this process; the caller closes the returned fd.  Checks
    that the fd still is that socket (the owner may have closed and reused the number)."""
    pidfd = bpfsys.pidfd_open(listener.pid)
    try:
        fd = bpfsys.pidfd_getfd(pidfd, listener.fd)
    finally:
        os.close(pidfd)
    if os.fstat(fd).st_ino != listener.inode:
        os.close(fd)
        raise OSError(f"fd {listener.fd} of pid {listener.pid} changed while being taken")
    return fd


def describe(listener: Listener, port: int) -> Bound:
    """Where and as whom the listener is bound: its family, address, IPV6_V6ONLY and owner
    (the socket inode's uid, which is the kernel's sk_uid, what reuseport groups match on);
    read from a borrowed copy, closed again."""
    fd = take(listener)
    try:
        uid = os.fstat(fd).st_uid
        v6only = False
        if listener.family == socket.AF_INET6:
            with socket.socket(fileno=os.dup(fd)) as s:
                v6only = bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    finally:
        os.close(fd)
    family = 6 if listener.family == socket.AF_INET6 else 4
    return Bound(family, listener.addr, port, v6only, uid)


def has_reuseport(fd: int) -> bool:
    with socket.socket(fileno=os.dup(fd)) as s:
        return bool(s.getsockopt(socket.SOL_SOCKET, bpfsys.SO_REUSEPORT))


def cookie(fd: int) -> int:
    """The socket's cookie: what a SOCKMAP lookup from user space returns for its entry."""
    with socket.socket(fileno=os.dup(fd)) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, bpfsys.SO_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def attach_program(fd: int, prog_fd: int) -> None:
    """Attach (or atomically replace) the reuseport program of fd's whole group."""
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(socket.SOL_SOCKET, bpfsys.SO_ATTACH_REUSEPORT_EBPF, prog_fd)


def detach_program(fd: int) -> None:
    with socket.socket(fileno=os.dup(fd)) as s:
        s.setsockopt(socket.SOL_SOCKET, bpfsys.SO_DETACH_REUSEPORT_BPF, 0)


def no_reuseport_message(name: str, port: int, proto: str = "tcp") -> str:
    where = str(port) if proto == "tcp" else f"{port}/{proto}"
    return (
        f"{name} listens on {where} without SO_REUSEPORT: ebpf mode needs an app that sets "
        "SO_REUSEPORT; run it with --mode iptables"
    )
