"""Prototype of issue 22's socket-activation path: replicas in network namespaces of their own,
serving listeners that were made for them in the host's namespace.

The pieces, as the daemon would have them (here the bench process plays the daemon):

- Creator: one Unix socket per replica, each in a directory of its own that the replica gets
  bind-mounted (read-only) at /run/lbctl. When the replica's shim connects, the creator
  makes that replica's listeners at that moment, in this process's network namespace (the
  host's): SO_REUSEPORT, bound to the published address and port, listening. It sends them
  over SCM_RIGHTS and closes its own copies, so the replica is each listener's only owner
  (its exit closes the socket, which leaves the reuseport group and the socket map at once,
  as a host-network replica's does).
- The shim (images/activate/activate.c, static, bind-mounted and set as the entrypoint in
  front of the image's own): receives them, puts them on fds 3.., sets LISTEN_FDS,
  LISTEN_PID and LISTEN_FDNAMES, and execs the image's entrypoint.
- HostListenerDataplane: lbctl's EbpfDataplane (the same SK_REUSEPORT program, pins, slots,
  counters and drains) for replicas whose listeners live in the host's namespace while the
  replica lives in its own: only the lookup of a replica's listeners differs (sock_diag in
  the listeners' namespace, matched by inode against the replica's own fds).

The throughput path `activation` (bench.throughput) runs lbctl/bench-nginx this way: its
entry script turns LISTEN_FDS into nginx's own NGINX="3;" (nginx takes inherited sockets
only through that variable).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import LABEL, Env, container_pid
from bench.image import IMAGE
from harness import ROOT
from harness.engine import docker
from lbctl.dataplane import sockets
from lbctl.dataplane.ebpf import EbpfDataplane
from lbctl.dataplane.netlink import DiagSocket
from lbctl.model.dataplane import Member

SHIM_SRC = ROOT / "images" / "activate" / "activate.c"
SHIM_IN = "/.lbctl/activate"  # where a replica sees the shim
SOCKET_DIR_IN = "/run/lbctl"  # where a replica sees its activation socket's directory
SOCKET_NAME = "activation.sock"
PIN_ROOT = Path("/sys/fs/bpf/lbctl-bench-act")
BACKLOG = 4096  # as the bench's nginx asks for its own listeners


def build_shim(out_dir: Path) -> Path:
    """The shim compiled from this checkout (static, as scripts/build-images.sh builds it),
    cached in `out_dir` by the source's hash."""
    digest = hashlib.sha256(SHIM_SRC.read_bytes()).hexdigest()[:12]
    out = out_dir / f"activate-{digest}"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(out), str(SHIM_SRC)],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"compiling {SHIM_SRC} failed: {r.stderr.strip()[-400:]}")
    return out


@dataclass(frozen=True)
class ListenSpec:
    """What listeners a replica gets: TCP on addr:port ("::" makes one dual-stack socket),
    and a UDP socket on the same address and port when `udp`."""

    port: int
    addr: str = "0.0.0.0"
    udp: bool = False

    def make(self) -> list[tuple[str, socket.socket]]:
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        kinds = [("http", socket.SOCK_STREAM)] + ([("udp", socket.SOCK_DGRAM)] if self.udp
                                                  else [])
        made: list[tuple[str, socket.socket]] = []
        try:
            for name, kind in kinds:
                s = socket.socket(family, kind)
                made.append((name, s))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((self.addr, self.port))
                if kind == socket.SOCK_STREAM:
                    s.listen(BACKLOG)
        except OSError:
            for _, s in made:
                s.close()
            raise
        return made


class Creator:
    """Serves each replica its listeners on a Unix socket of its own (see the module doc).
    A thread answers every connection with a fresh set: a replica that restarts (its shim
    runs again) gets new listeners, its old ones died with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handed: Counter[str] = Counter()  # replica -> sets handed over
        self.errors: list[str] = []
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._servers: dict[str, socket.socket] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="activation", daemon=True)
        self._thread.start()

    def serve(self, replica: str, spec: ListenSpec) -> Path:
        """Start serving `replica`; returns the directory to bind-mount at SOCKET_DIR_IN."""
        d = self.root / replica
        d.mkdir(parents=True, exist_ok=True)
        path = d / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(8)
        srv.setblocking(False)
        with self._lock:
            self._servers[replica] = srv
            self._sel.register(srv, selectors.EVENT_READ, (replica, spec))
        self._wake_w.send(b"x")
        return d

    def forget(self, replica: str) -> None:
        with self._lock:
            srv = self._servers.pop(replica, None)
            if srv is not None:
                self._sel.unregister(srv)
                srv.close()
        shutil.rmtree(self.root / replica, ignore_errors=True)

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for replica in list(self._servers):
            self.forget(replica)
        self._wake_r.close()
        self._wake_w.close()

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    self._wake_r.recv(64)
                    continue
                replica, spec = key.data
                try:
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                with conn:
                    self._hand_over(conn, replica, spec)

    def _hand_over(self, conn: socket.socket, replica: str, spec: ListenSpec) -> None:
        try:
            made = spec.make()
        except OSError as e:
            self.errors.append(f"{replica}: cannot make listeners on {spec}: {e}")
            return  # the shim sees the connection close without fds and exits 111
        try:
            names = ":".join(n for n, _ in made).encode()
            socket.send_fds(conn, [names], [s.fileno() for _, s in made])
            self.handed[replica] += 1
        except OSError as e:
            self.errors.append(f"{replica}: handing over failed: {e}")
        finally:
            for _, s in made:
                s.close()  # the replica is the only owner from now on


def host_listeners(pid: int, port: int, proto: str = "tcp") -> list[sockets.Listener]:
    """The listeners of `proto` on `port` in THIS process's network namespace (the host's)
    that the replica whose init is `pid` holds, IPv4 first (sockets.find_listeners' order)."""
    pids = sockets.replica_pids(pid)
    if not pids:
        return []
    state = sockets.TCP_LISTEN if proto == "tcp" else sockets.UDP_UNCONNECTED
    rows: dict[int, tuple[int, int, str]] = {}
    families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
    with DiagSocket() as ds:
        ds.bind()
        for family in families:
            for m in ds.get_sock_stats(family=family, states=1 << state,
                                       protocol=sockets.PROTOCOLS[proto]):
                if int(m["idiag_sport"]) == port and int(m["idiag_state"]) == state:
                    rows[int(m["idiag_inode"])] = (
                        family, int(m["idiag_rqueue"]),
                        ipaddress.ip_address(m["idiag_src"]).compressed)
    found: dict[int, sockets.Listener] = {}
    for p in pids:
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for name in names:
            try:
                link = os.readlink(f"/proc/{p}/fd/{name}")
            except OSError:
                continue
            if not link.startswith("socket:["):
                continue
            inode = int(link[8:-1])
            if inode in rows and inode not in found:
                family, rq, addr = rows[inode]
                found[inode] = sockets.Listener(p, int(name), inode, family, rq, proto, addr)
    return sorted(found.values(), key=lambda lst: (lst.family != socket.AF_INET, lst.inode))


def host_namespace_listeners(m: Member, port: int, proto: str,
                             netns_pid: int) -> list[sockets.Listener] | str:
    """EbpfDataplane's listener finder for this path (see the module doc): a replica's
    listeners are of the host's namespace (this process's), though the replica lives in a
    namespace of its own; the program, maps, slots, tables, counters and drains are lbctl's
    own."""
    return host_listeners(m.pid, port, proto)


class Activation:
    """The creator, the data plane and the shim of one bench run (for_env keeps one per Env;
    Env.close() closes it)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.shim = build_shim(tmp / "shim")
        self.creator = Creator(tmp / "sockets")
        self.dp = EbpfDataplane(tmp / "state", PIN_ROOT, find_listeners=host_namespace_listeners)
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def start(self, app: str, port: int, names: Sequence[str], image: str = IMAGE,
              spec: ListenSpec | None = None, environ: dict[str, str] | None = None,
              cmd: Sequence[str] = ("/entry.sh",)) -> ActivatedApp:
        """N replicas of `image`, each on the default bridge in a namespace of its own, with
        listeners on the host's `port` handed over by the shim in front of `cmd`; steered by
        lbctl's program once each holds its listener."""
        group = ActivatedApp(self, app, spec or ListenSpec(port), list(names))
        try:
            for name in names:
                d = self.creator.serve(name, group.spec)
                env = {"LBCTL_REPLICA": name, "BENCH_PORT": str(port), **(environ or {})}
                args = ["run", "-d", "--name", name, "--label", f"{LABEL}={app}",
                        "-v", f"{d}:{SOCKET_DIR_IN}:ro", "-v", f"{self.shim}:{SHIM_IN}:ro",
                        "--entrypoint", SHIM_IN]
                for k, v in env.items():
                    args += ["-e", f"{k}={v}"]
                docker(*args, image, *cmd)
                group.started.append(name)
            group.sync()
        except BaseException:
            group.close(containers=True)
            raise
        return group

    def close(self) -> None:
        self.creator.close()
        self.dp.close()
        self.loop.close()
        shutil.rmtree(PIN_ROOT, ignore_errors=True)


@dataclass
class ActivatedApp:
    """One activated app: its replicas (containers named as given) and its eBPF objects."""

    act: Activation
    app: str
    spec: ListenSpec
    names: list[str]

    def __post_init__(self) -> None:
        self.started: list[str] = []

    def members(self, timeout: float = 30.0) -> list[Member]:
        """Every replica, once it runs and holds its host listener(s)."""
        deadline = time.monotonic() + timeout
        out = []
        for name in self.names:
            while True:
                pid = container_pid(name)
                if pid and host_listeners(pid, self.spec.port):
                    out.append(Member(name, pid))
                    break
                if time.monotonic() > deadline:
                    errors = "; ".join(self.act.creator.errors) or "the creator saw no error"
                    raise RuntimeError(f"{name} holds no listener on host port "
                                       f"{self.spec.port} ({errors}); docker logs: "
                                       + _logs(name)[-300:])
                time.sleep(0.05)
        return out

    def sync(self, ready: Sequence[str] | None = None, draining: Sequence[str] = ()) -> None:
        """Steer to `ready` (default: every replica), keep `draining` in the map but out of
        the table: EbpfDataplane.sync, as the daemon calls it."""
        members = {m.name: m for m in self.members()}
        want = [members[n] for n in (self.names if ready is None else ready)]
        drain = [members[n] for n in draining]
        protos = ("tcp", "udp") if self.spec.udp else ("tcp",)
        for proto in protos:
            self.act.run(self.act.dp.sync(self.app if proto == "tcp" else f"{self.app}-udp",
                                          self.spec.port, os.getpid(), want, drain,
                                          proto=proto))

    def counters(self, proto: str = "tcp") -> dict[str, int]:
        """Replica -> new connections (UDP: new flows) the program sent it."""
        app = self.app if proto == "tcp" else f"{self.app}-udp"
        out: dict[str, int] = self.act.run(self.act.dp.counters(app))
        return out

    def close(self, containers: bool = False) -> None:
        if containers and self.started:
            docker("rm", "-f", *self.started, check=False)
        for app in (self.app, f"{self.app}-udp"):
            with contextlib.suppress(Exception):
                self.act.run(self.act.dp.remove(app))
        for name in self.names:
            self.act.creator.forget(name)


def _logs(name: str) -> str:
    r = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30,
                       check=False)
    return r.stdout + r.stderr


def for_env(env: Env) -> Activation:
    """The run's Activation, made on first use and closed with the Env."""
    act = env.parts.get("activation")
    if act is None:
        act = Activation(env.tmp / "activation")
        env.parts["activation"] = act
    assert isinstance(act, Activation)
    return act
