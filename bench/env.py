"""What the benchmarks run against: containers, a private lbctl daemon, host proxies.

Everything made here carries the label `lbctl.app=bench-*` (containers) or lives in one temp
dir (proxy configs, the daemon's socket and state), and `Env.close()` removes all of it.
The daemon is harness.daemon.Daemon (private socket, state dir, metrics port) with its own
bpf pin root; the caller holds the host lock (harness.host.host_lock) the whole time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.image import IMAGE, PORT
from harness.daemon import Daemon
from harness.engine import docker
from harness.host import free_port

LABEL = "lbctl.app"
PREFIX = "bench-"
PIN_ROOT = Path("/sys/fs/bpf/lbctl-bench")
PAUSE_IMAGE = "lbctl/pause:latest"


def inspect(ref: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker("inspect", ref))
    return data[0]


def container_ip(ref: str) -> str:
    info = inspect(ref)
    ip = str(info["NetworkSettings"].get("IPAddress") or "")
    if not ip:  # a user network
        nets = info["NetworkSettings"].get("Networks") or {}
        ip = next((str(n["IPAddress"]) for n in nets.values() if n.get("IPAddress")), "")
    if not ip:
        raise RuntimeError(f"container {ref} has no IP address")
    return ip


def container_pid(ref: str) -> int:
    """Host PID of the container's init process; 0 when it is not running."""
    try:
        return int(inspect(ref)["State"]["Pid"] or 0)
    except RuntimeError:  # gone
        return 0


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds() -> dict[str, float]:
    """Busy seconds of each CPU since boot, from /proc/stat: user, nice, system, irq and
    softirq (the kernel's network receive path is softirq), not idle, iowait or steal (time
    the hypervisor gave another guest). Per-core load tells a run bound by its client (wrk's
    core full, the rest idle) from one bound by the server side."""
    tick = os.sysconf("SC_CLK_TCK")
    busy: dict[str, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in vals[:7])
                busy[name[3:]] = (user + nice + system + irq + softirq) / tick
    return busy


# The container engine's own processes (they serve the bench's containers and docker-proxy
# is the dockerproxy path itself); in the host's PID namespace only: an engine that another
# user's test runs inside a container is theirs.
ENGINE_COMMS = frozenset({"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2",
                          "docker-proxy", "runc"})
_PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class Proc:
    ppid: int
    cpu: float  # seconds: utime + stime + cutime + cstime (children it reaped included)
    foreign: bool  # not the run's own (see cpu_snapshot)
    start: int = 0  # start time (clock ticks after boot): a reused pid is another process


def cpu_snapshot(containers: Iterable[str]) -> dict[int, Proc]:
    """Every process alive now, its CPU so far and whether it is foreign: not the run's own.
    The run's are kernel threads (softirq work of the network stack runs in ksoftirqd too),
    this process and its descendants (wrk, the lbctl daemon, the proxies), the processes of
    `containers` (ids, short or full) and the engine's (in the host's PID namespace: an
    engine that another user's test runs inside a container is theirs)."""
    ids = [c[:12] for c in containers if c]
    me = os.getpid()
    my_pidns = os.stat("/proc/self/ns/pid").st_ino
    raw: dict[int, tuple[int, str, int, float, int]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        raw[int(d)] = (int(fields[1]), comm, int(fields[6]), cpu, int(fields[19]))
    ours = {me}
    frontier = {me}
    while frontier:
        frontier = {p for p, (pp, *_) in raw.items() if pp in frontier and p not in ours}
        ours |= frontier
    out: dict[int, Proc] = {}
    for pid, (ppid, comm, flags, cpu, start) in raw.items():
        mine = pid in ours or bool(flags & _PF_KTHREAD) or pid == 2
        try:
            if not mine and comm in ENGINE_COMMS:
                mine = os.stat(f"/proc/{pid}/ns/pid").st_ino == my_pidns
            if not mine and ids:
                with open(f"/proc/{pid}/cgroup") as f:
                    cgroups = f.read()
                mine = any(f"/docker/{i}" in cgroups for i in ids)
        except OSError:
            continue  # gone meanwhile
        out[pid] = Proc(ppid, cpu, not mine, start)
    return out


def foreign_cpu_seconds(before: dict[int, Proc], after: dict[int, Proc]) -> float:
    """CPU seconds that foreign processes used between two cpu_snapshot()s. The host is
    shared: other people's builds and tests take CPU during a run, and /proc/stat counts it
    with the run's.

    The growth of every foreign process alive at the end (all of its time if it is new),
    less the time from before the run of every process that ended meanwhile: a parent's
    reaped children's time grows by a child's whole life when it reaps it, and the reaper is
    not always the parent the child had at the start (an orphan is reaped by init), so that
    share is taken off the total rather than off one parent. Processes that ended with a
    parent of the run's (which counts their time as the run's) are left out of it. A child of
    the run's that a foreign process reaped counts its time within the run as foreign: rare,
    and it can only make the run look cheaper by that much."""
    def same(pid: int) -> bool:
        return pid in before and pid in after and before[pid].start == after[pid].start

    grown = sum(p.cpu - (before[pid].cpu if same(pid) else 0.0)
                for pid, p in after.items() if p.foreign)
    ended = sum(p.cpu for pid, p in before.items() if not same(pid)
                and not (same(p.ppid) and not after[p.ppid].foreign))
    return max(0.0, grown - ended)


def bench_containers() -> list[str]:
    """Ids of the containers of the bench's apps (label lbctl.app=bench-*: its own and those
    its lbctl daemon made)."""
    out = docker("ps", "-a", "--filter", f"label={LABEL}",
                 "--format", "{{.ID}} {{.Label \"lbctl.app\"}}", check=False)
    return [cid for cid, _, app in (ln.partition(" ") for ln in out.splitlines())
            if app.startswith(PREFIX)]


def remove_bench_containers() -> None:
    ids = bench_containers()
    if ids:
        docker("rm", "-f", *ids, check=False)


def wait_http(host: str, port: int, timeout: float = 20.0) -> None:
    """Until host:port answers an HTTP request (nginx takes a moment to start)."""
    from harness.traffic import get

    deadline = time.monotonic() + timeout
    while True:
        try:
            get(port, host=host, timeout=1.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers on {host}:{port}") from None
            time.sleep(0.05)


def run_backend(name: str, app: str, network: str | None = None,
                publish: str | None = None, image: str = IMAGE,
                environ: dict[str, str] | None = None) -> str:
    """One replica not managed by lbctl (nginx unless `image` says otherwise); returns its
    container id."""
    args = ["run", "-d", "--name", name, "--label", f"{LABEL}={app}",
            "-e", f"LBCTL_REPLICA={name}"]
    for k, v in (environ or {}).items():
        args += ["-e", f"{k}={v}"]
    if network:
        args += ["--network", network]
    if publish:
        args += ["-p", publish]
    return docker(*args, image).strip()


def run_sandbox(name: str, app: str, migrate: bool = True) -> str:
    """A pause container whose network namespace replicas join (`--network container:NAME`),
    as lbctl's ebpf mode does. `migrate`: tcp_migrate_req=1 there, as lbctl sets it, so a
    closing listener's queue moves to another listener; without it (the kernel's default)
    the queue is reset."""
    return docker("run", "-d", "--name", name, "--label", f"{LABEL}={app}",
                  "--sysctl", f"net.ipv4.tcp_migrate_req={int(migrate)}", PAUSE_IMAGE).strip()


class HostProxy:
    """Debian's nginx or HAProxy on the host, in front of `upstreams` (ip:port). It listens on
    every address, as a proxy serving other hosts does: local clients use 127.0.0.1, a remote
    client (harness.remote) the host's address on its link."""

    def __init__(self, kind: str, upstreams: list[str], tmp: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = tmp / f"{kind}-{self.port}"
        self.dir.mkdir(parents=True)
        if kind == "nginx":
            conf = self.dir / "nginx.conf"
            conf.write_text(nginx_proxy_conf(upstreams, self.port, self.dir))
            cmd = ["nginx", "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"]
        elif kind == "haproxy":
            conf = self.dir / "haproxy.cfg"
            conf.write_text(haproxy_conf(upstreams, self.port))
            cmd = ["haproxy", "-db", "-f", str(conf)]
        else:
            raise ValueError(kind)
        self.log = open(self.dir / "out.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_http("127.0.0.1", self.port, timeout=10)
        except RuntimeError as e:
            self.stop()
            out = (self.dir / "out.log").read_text()
            raise RuntimeError(f"{kind} did not start: {out}") from e

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def nginx_proxy_conf(upstreams: list[str], port: int, prefix: Path) -> str:
    servers = "".join(f"        server {u};\n" for u in upstreams)
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    keepalive_requests 100000;
    upstream backends {{
{servers}        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen {port} backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_conf(upstreams: list[str], port: int) -> str:
    servers = "".join(f"    server s{i} {u}\n" for i, u in enumerate(upstreams))
    return f"""\
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind :{port}
    default_backend be
backend be
    balance roundrobin
{servers}"""


class Env:
    """The shared pieces of one benchmark run; close() undoes everything."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.daemon: Daemon | None = None
        self.proxies: list[HostProxy] = []

    # ---- lbctl daemon ----------------------------------------------------------------
    def lbctl(self) -> Daemon:
        if self.daemon is None or self.daemon.proc is None or self.daemon.proc.poll() is not None:
            d = Daemon(self.tmp / "daemon")
            d.tmp.mkdir(parents=True, exist_ok=True)
            d.pin_root = PIN_ROOT
            d.start()
            self.daemon = d
        return self.daemon

    def daemon_pid(self) -> int | None:
        d = self.daemon
        return d.proc.pid if d and d.proc and d.proc.poll() is None else None

    def run_app(self, app: str, replicas: int, mode: str, image: str = IMAGE,
                address: str = "127.0.0.1", extra: tuple[str, ...] = ()) -> int:
        """`lbctl run` (+ `extra` options); returns the host port it answers on (on `address`,
        and on 127.0.0.1: "0.0.0.0" publishes on every address of the host, for remote
        clients too)."""
        port = free_port()
        # --network host: the replicas listen on the host port itself (BENCH_PORT);
        # --activation: nginx keeps an inherited listener whose port its `listen` names.
        host = "host" in extra
        cport = port if host else PORT
        env = ("-e", f"BENCH_PORT={port}") if host or "--activation" in extra else ()
        self.lbctl().ok("run", app, "--image", image, "-p", f"{address}:{port}:{cport}",
                        "--replicas", str(replicas), "--mode", mode, *env, *extra, timeout=180)
        wait_http("127.0.0.1", port)
        return port

    def scale(self, app: str, replicas: int) -> None:
        self.lbctl().ok("scale", f"{app}={replicas}", timeout=180)

    def rm_app(self, app: str) -> None:
        if self.daemon is not None:
            self.daemon.cli("rm", app, timeout=180)

    def stop_daemon(self) -> None:
        d, self.daemon = self.daemon, None
        if d is None or d.proc is None or d.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            for a in d.api("GET", "/apps")["apps"]:
                d.cli("rm", a["name"], timeout=120)
        d.kill(signal.SIGTERM)

    # ---- host proxies ----------------------------------------------------------------
    def proxy(self, kind: str, upstreams: list[str]) -> HostProxy:
        p = HostProxy(kind, upstreams, self.tmp)
        self.proxies.append(p)
        return p

    def close(self) -> None:
        for p in self.proxies:
            with contextlib.suppress(Exception):
                p.stop()
        self.proxies = []
        try:
            self.stop_daemon()
        finally:
            remove_bench_containers()
            shutil.rmtree(PIN_ROOT, ignore_errors=True)
