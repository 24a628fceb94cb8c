"""Throughput and latency of every path, side by side, against the same nginx replicas, from
two kinds of client.

Paths (ids are what `--only` takes; PATH_DEFS below is the one list to extend):
  direct         one replica reached on its container IP (no balancing at all)
  reuseport      a pause sandbox + N replicas joined to it, plain kernel SO_REUSEPORT, no
                 program; wrk hits the sandbox IP
  reuseport-host N replicas in the host's own network namespace (`docker run --network host`)
                 on one free port with SO_REUSEPORT, no program: the baseline of an lbctl
                 ebpf app run with `--network host`
  ebpf           lbctl ebpf mode on PORT published on 0.0.0.0 (lbctl's DNAT to the sandbox
                 + the program)
  ebpf-host      an lbctl ebpf app run with `--network host`: its replicas listen on the host
                 port in the host's namespace, the program steers that group (no veth, no NAT)
  ebpf-sandbox   an lbctl ebpf app hit on its sandbox IP (the program without the DNAT); an
                 app of its own, never reached through the DNAT (see the notes: why)
  iptables       lbctl iptables mode on PORT published on 0.0.0.0 (statistic DNAT to each
                 replica)
  nginx          Debian's nginx on the host as reverse proxy in front of N replicas
  haproxy        HAProxy on the host in front of the same N replicas
  dockerproxy    one replica published with Docker's own -p 127.0.0.1:PORT (docker-proxy)
  ebpf-activation  an lbctl ebpf app run with `--activation` (issue 22): N replicas in
                 network namespaces of their own (the default bridge), each serving
                 listeners the daemon made for it in the host's namespace (SO_REUSEPORT on
                 the host port) and handed over by socket activation (LISTEN_FDS, through the
                 static shim images/activate); the program steers that host group

Clients (CLIENTS): `local` is wrk on this host, on 127.0.0.1 for host ports; `remote` is wrk
in a network namespace of the bench's own behind a veth pair (harness.remote), reaching host
ports at the host's address on that link and container/sandbox IPs routed through the host,
as a client on another machine would. dockerproxy has no remote form (Docker publishes
127.0.0.1 ports to local clients only).

Every (path, N, connection mode, client) is run `rounds` times, rounds interleaved and in
alternating order so drift of the machine hits every path alike; the median round is reported.

CPU per request is the whole machine's: every core's busy time (/proc/stat) over the run
divided by the requests answered in it. On loopback and veth the kernel runs the receive
path of what wrk sends (conntrack, NAT, the veth crossing) in softirq on wrk's own core, so
one core's share would bill part of the server side's work to the client and flatter the
kernel paths; the sum over all cores compares paths fairly (the client's own work is the
same for every path). The host is shared, so what other people's processes used during the
run (env.cpu_snapshot, env.foreign_cpu_seconds) is taken out of it and reported beside it.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.env import (
    Env,
    bench_containers,
    container_ip,
    cpu_busy_seconds,
    cpu_snapshot,
    foreign_cpu_seconds,
    proc_cpu_seconds,
    run_backend,
    run_sandbox,
    wait_http,
)
from bench.image import PORT
from harness import wrk
from harness.engine import docker
from harness.host import free_port
from harness.remote import RemoteHost
from harness.traffic import get

MODES = ("keepalive", "close")
CLIENTS = ("local", "remote")


@dataclass(frozen=True)
class Urls:
    """Where a path is reached: from this host, and from the remote host (None: no remote
    form)."""

    local: str
    remote: str | None


@dataclass
class Setup:
    """One N's worth of targets being started: what they share and what to tear down."""

    env: Env
    n: int
    host_ip: str  # the host's address as the remote client reaches it
    made: list[str] = field(default_factory=list)  # containers
    apps: list[str] = field(default_factory=list)  # lbctl apps
    # anything else a path made (run after the containers are gone, last made first)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    _raw: list[str] | None = None

    def raw_replicas(self) -> list[str]:
        """IPs of N plain replicas on docker0, shared by direct, nginx and haproxy."""
        if self._raw is None:
            names = [f"bench-raw{self.n}-{i}" for i in range(1, self.n + 1)]
            for name in names:
                run_backend(name, "bench-raw")
                self.made.append(name)
            self._raw = [container_ip(name) for name in names]
            for ip in self._raw:
                wait_http(ip, PORT)
        return self._raw

    def host_port(self, port: int) -> Urls:
        return Urls(f"http://127.0.0.1:{port}/", f"http://{self.host_ip}:{port}/")


def wait_replicas(host: str, port: int, names: set[str], timeout: float = 20.0) -> None:
    """Until every replica in `names` has answered on host:port: all of them in the group
    before a path is measured, not just the first one up."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not names <= seen:
        try:
            seen.add(get(port, host=host, timeout=1.0))
        except OSError:
            time.sleep(0.05)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host}:{port}: only {sorted(seen)} of {sorted(names)} answer")


def _direct(s: Setup) -> Urls:
    url = f"http://{s.raw_replicas()[0]}:{PORT}/"
    return Urls(url, url)


def _proxy(kind: str) -> Callable[[Setup], Urls]:
    def start(s: Setup) -> Urls:
        p = s.env.proxy(kind, [f"{ip}:{PORT}" for ip in s.raw_replicas()])
        return s.host_port(p.port)
    return start


def _reuseport(s: Setup) -> Urls:
    sb = f"bench-rp{s.n}-sandbox"
    run_sandbox(sb, "bench-rp")
    s.made.append(sb)
    names = {f"bench-rp{s.n}-{i}" for i in range(1, s.n + 1)}
    for name in sorted(names):
        s.made.append(name)
        run_backend(name, "bench-rp", network=f"container:{sb}")
    ip = container_ip(sb)
    wait_replicas(ip, PORT, names)
    url = f"http://{ip}:{PORT}/"
    return Urls(url, url)


def _reuseport_host(s: Setup) -> Urls:
    port = free_port()
    names = {f"bench-rph{s.n}-{i}" for i in range(1, s.n + 1)}
    for name in sorted(names):
        s.made.append(name)
        run_backend(name, "bench-rph", network="host", environ={"BENCH_PORT": str(port)})
    wait_replicas("127.0.0.1", port, names)
    return s.host_port(port)


def _dockerproxy(s: Setup) -> Urls:
    port = free_port()
    name = f"bench-dp{s.n}"
    run_backend(name, "bench-dp", publish=f"127.0.0.1:{port}:{PORT}")
    s.made.append(name)
    wait_http("127.0.0.1", port)
    return Urls(f"http://127.0.0.1:{port}/", None)


def _lbctl(mode: str, app: str, *extra: str) -> Callable[[Setup], Urls]:
    """An lbctl app published on 0.0.0.0 (`extra`: more `lbctl run` options)."""
    def start(s: Setup) -> Urls:
        port = s.env.run_app(app, s.n, mode, address="0.0.0.0", extra=extra)
        s.apps.append(app)
        return s.host_port(port)
    return start


def _ebpf_sandbox(s: Setup) -> Urls:
    app = "bench-ebpfsb"
    s.env.run_app(app, s.n, "ebpf")
    s.apps.append(app)
    url = f"http://{container_ip(f'{app}-sandbox')}:{PORT}/"
    return Urls(url, url)


@dataclass(frozen=True)
class PathDef:
    label: str
    start: Callable[[Setup], Urls]
    kind: str  # "lbctl": a way lbctl serves an app; "proxy": what lbctl competes with;
    #            "reference": the kernel without lbctl, to see lbctl's own cost;
    #            "prototype": a candidate lbctl path, measured before the daemon has it
    replicas: bool = True  # False: one replica whatever N is
    # the plain SO_REUSEPORT path on the same network path, which an lbctl ebpf path must
    # match (its program is the only difference)
    baseline: str | None = None
    # the replicas keep a network namespace of their own (their other ports private, the
    # host's loopback out of reach): what issue 22 wants at the host namespace's cost
    isolated: bool = True


# To add a path: a start function (returning its URLs) and one entry here; the report, the
# targets and --only pick it up. "lbctl" paths compete for "lbctl's fastest path".
PATH_DEFS: dict[str, PathDef] = {
    "direct": PathDef("one backend, direct (container IP)", _direct, "reference",
                      replicas=False),
    "reuseport": PathDef("kernel SO_REUSEPORT, no program (sandbox IP)", _reuseport,
                         "reference"),
    "reuseport-host": PathDef("kernel SO_REUSEPORT, no program (--network host)",
                              _reuseport_host, "reference", isolated=False),
    "ebpf": PathDef("lbctl ebpf mode (DNAT + program)", _lbctl("ebpf", "bench-ebpf"), "lbctl"),
    # An app of its own, like ebpf-sandbox (see the notes on TIME_WAIT and PAWS).
    "ebpf-host": PathDef("lbctl ebpf mode, --network host (program, no DNAT)",
                         _lbctl("ebpf", "bench-ebpfh", "--network", "host"), "lbctl",
                         baseline="reuseport-host", isolated=False),
    "ebpf-sandbox": PathDef("lbctl ebpf program, sandbox IP (no DNAT)", _ebpf_sandbox,
                            "reference", baseline="reuseport"),
    "iptables": PathDef("lbctl iptables mode (statistic DNAT)",
                        _lbctl("iptables", "bench-ipt"), "lbctl"),
    "nginx": PathDef("nginx reverse proxy (1 worker, upstream keepalive 64)", _proxy("nginx"),
                     "proxy"),
    "haproxy": PathDef("HAProxy (nbthread 1, http-reuse always)", _proxy("haproxy"), "proxy"),
    "dockerproxy": PathDef("docker-proxy (-p 127.0.0.1:PORT), 1 replica", _dockerproxy,
                           "reference", replicas=False),
    # An app of its own, like ebpf-host.
    "ebpf-activation": PathDef("lbctl ebpf mode, --activation (host listeners, replicas in "
                               "their own netns)",
                               _lbctl("ebpf", "bench-ebpfa", "--activation"), "lbctl"),
}
PATHS = tuple(PATH_DEFS)
LABELS = {p: d.label for p, d in PATH_DEFS.items()}
LBCTL_PATHS = tuple(p for p, d in PATH_DEFS.items() if d.kind == "lbctl")
PROXY_PATHS = tuple(p for p, d in PATH_DEFS.items() if d.kind == "proxy")
# (lbctl ebpf path, plain SO_REUSEPORT on the same network path)
SAME_PATH = tuple((p, d.baseline) for p, d in PATH_DEFS.items() if d.baseline)
# Issue 22: the isolated ways lbctl serves (or could serve) an app, against the host
# namespace's plain SO_REUSEPORT; keep-alive against today's default path.
HOST_BASELINE = "reuseport-host"
DEFAULT_PATH = "ebpf"
ISOLATED_CANDIDATES = tuple(p for p, d in PATH_DEFS.items()
                            if d.isolated and d.kind in ("lbctl", "prototype"))
# What `--only isolation` measures side by side: the candidates, the host paths, and
# `reuseport` (the sandbox IP without DNAT or program: the floor of any way that still
# delivers into the replicas' namespace, such as a cgroup connect4 rewrite).
ISOLATION_PATHS = ("reuseport-host", "ebpf-host", *ISOLATED_CANDIDATES, "reuseport")


@dataclass
class Sample:
    path: str
    replicas: int
    mode: str
    client: str = "local"
    rounds: list[wrk.WrkResult] = field(default_factory=list)
    # CPU of the lbctl daemon during each round, % of one core (None: no daemon running)
    daemon_cpu: list[float] = field(default_factory=list)
    # busy % of wrk's own core, and of all the other cores (% of one core), per round
    wrk_core: list[float] = field(default_factory=list)
    other_cores: list[float] = field(default_factory=list)
    # busy seconds of every core together over each round (the whole machine), and the part
    # of it that other users' processes took (the host is shared)
    busy_s: list[float] = field(default_factory=list)
    foreign_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> wrk.WrkResult:
        ordered = sorted(self.rounds, key=lambda r: r.rps)
        return ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else _mean(ordered)

    def to_json(self) -> dict[str, Any]:
        m = self.median
        return {"path": self.path, "replicas": self.replicas, "mode": self.mode,
                "client": self.client,
                "rps": round(m.rps, 1), "p50_ms": round(m.p50_ms, 3),
                "p99_ms": round(m.p99_ms, 3), "failed": m.failed,
                "daemon_cpu_pct": round(statistics.median(self.daemon_cpu), 1)
                if self.daemon_cpu else None,
                "wrk_core_pct": _median(self.wrk_core),
                "other_cores_pct": _median(self.other_cores),
                # CPU the server side spent per answer, off wrk's core (us); kept for
                # comparison with older runs: it flatters the kernel paths (module doc)
                "other_us_per_req": _median([c / 100 * 1e6 / r.rps for c, r in zip(
                    self.other_cores, self.rounds, strict=True) if r.rps]),
                # CPU of the whole machine (every core, wrk's included) per answer (us),
                # other users' processes left out; and with them, and their share (% of one
                # core), to see how much the shared host moved the figure
                "cpu_us_per_req": _median(self.cpu_per_req()),
                "machine_us_per_req": _median([c for c in self._round_cpu(foreign=False)
                                               if c is not None]),
                "foreign_pct": _median(self._foreign_pct()),
                "rounds": [{**r.to_json(), "cpu_us_per_req": round(c, 1)} if c is not None
                           else r.to_json()
                           for r, c in zip(self.rounds, self._round_cpu(), strict=True)]}

    def _round_cpu(self, foreign: bool = True) -> list[float | None]:
        if len(self.busy_s) != len(self.rounds) or len(self.foreign_s) != len(self.rounds):
            return [None] * len(self.rounds)
        return [(b - (f if foreign else 0.0)) / r.requests * 1e6 if r.requests else None
                for b, f, r in zip(self.busy_s, self.foreign_s, self.rounds, strict=True)]

    def _foreign_pct(self) -> list[float]:
        if len(self.foreign_s) != len(self.rounds):
            return []
        return [100 * f / r.seconds for f, r in zip(self.foreign_s, self.rounds, strict=True)
                if r.seconds]

    def cpu_per_req(self) -> list[float]:
        """Whole-machine CPU per answer of each round (us)."""
        return [c for c in self._round_cpu() if c is not None]


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def _mean(rs: list[wrk.WrkResult]) -> wrk.WrkResult:
    """Mean of the two middle rounds (an even count)."""
    k = len(rs) // 2
    mid = rs[k - 1:k + 1]
    return wrk.WrkResult(
        requests=sum(r.requests for r in mid) // 2,
        seconds=statistics.fmean(r.seconds for r in mid),
        rps=statistics.fmean(r.rps for r in mid),
        p50_ms=statistics.fmean(r.p50_ms for r in mid),
        p99_ms=statistics.fmean(r.p99_ms for r in mid),
        connect=max(r.connect for r in mid), read=max(r.read for r in mid),
        write=max(r.write for r in mid), timeout=max(r.timeout for r in mid),
        non2xx=max(r.non2xx for r in mid),
    )


@contextlib.contextmanager
def _targets(env: Env, paths: list[str], n: int, host_ip: str) -> Iterator[dict[str, Urls]]:
    """Start whatever `paths` need for n replicas; yields path -> Urls; tears it down."""
    s = Setup(env, n, host_ip)
    proxies_before = len(env.proxies)
    try:
        yield {p: PATH_DEFS[p].start(s) for p in PATHS if p in paths}
    finally:
        for p in env.proxies[proxies_before:]:
            with contextlib.suppress(Exception):
                p.stop()
        del env.proxies[proxies_before:]
        for app in s.apps:
            env.rm_app(app)
        if s.made:
            docker("rm", "-f", *s.made, check=False)
        for undo in reversed(s.cleanups):
            undo()


def _forget_flows(url: str, source: str | None) -> None:
    """Delete the conntrack entries of the run just made (its destination; from the remote
    host, its source too): a new-connection run leaves ~15k entries per second in TIME_WAIT
    for 120 s, and a few such runs in a row fill the host's table (nf_conntrack_max 262,144
    here), which then drops new connections: measured as a 361 req/s row and a hung wrk.
    Only the bench's own flows: its remote address, or its path's address and port."""
    u = urllib.parse.urlsplit(url)
    cmd = ["conntrack", "-D", "-p", "tcp", "-d", str(u.hostname), "--dport", str(u.port)]
    if source:
        cmd += ["-s", source]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)


def run(env: Env, paths: list[str], replica_counts: list[int], seconds: float, rounds: int,
        warmup: float, log: Callable[[str], None], remote: RemoteHost | None = None,
        clients: tuple[str, ...] = ("local",)) -> list[Sample]:
    """Every path of `paths` for each N, from each of `clients` ("remote" needs `remote`)."""
    if "remote" in clients and remote is None:
        raise ValueError("remote clients need a RemoteHost")
    samples: list[Sample] = []
    for n in replica_counts:
        with _targets(env, paths, n, remote.host_ip if remote else "127.0.0.1") as urls:
            # (client, path, url, netns) in the order of one round
            runs = [(c, p, u, remote.ns if c == "remote" and remote else None)
                    for c in clients for p, us in urls.items()
                    if (u := us.local if c == "local" else us.remote) is not None]
            if warmup > 0:
                for _, _, url, ns in runs:
                    wrk.run(url, warmup, close=False, netns=ns)
            by_key: dict[tuple[str, str, str], Sample] = {}
            ours = bench_containers()  # their CPU is the paths', not other users'
            for r in range(rounds):
                for mode in MODES:
                    for client, path, url, ns in runs if r % 2 == 0 else reversed(runs):
                        pid = env.daemon_pid()
                        c0, t0 = (proc_cpu_seconds(pid), time.monotonic()) if pid else (0, 0)
                        f0 = cpu_snapshot(ours)
                        b0, m0 = cpu_busy_seconds(), time.monotonic()
                        res = wrk.run(url, seconds, close=mode == "close", netns=ns)
                        b1, dt = cpu_busy_seconds(), time.monotonic() - m0
                        f1 = cpu_snapshot(ours)
                        s = by_key.setdefault((path, mode, client),
                                              Sample(path, n, mode, client))
                        s.rounds.append(res)
                        s.wrk_core.append(100 * (b1[wrk.WRK_CPU] - b0[wrk.WRK_CPU]) / dt)
                        s.other_cores.append(100 * sum(
                            b1[c] - b0[c] for c in b1 if c != wrk.WRK_CPU) / dt)
                        s.busy_s.append(sum(b1[c] - b0[c] for c in b1))
                        # never more than the machine was busy (a reaped child's time can
                        # make one process's growth look larger than the run)
                        s.foreign_s.append(min(foreign_cpu_seconds(f0, f1), s.busy_s[-1]))
                        if pid:
                            s.daemon_cpu.append(
                                100 * (proc_cpu_seconds(pid) - c0) / (time.monotonic() - t0))
                        log(f"  N={n} {mode:9} {client:6} {path:14} round {r + 1}: "
                            f"{res.rps:9.0f} req/s p50 {res.p50_ms:.2f} ms "
                            f"p99 {res.p99_ms:.2f} ms"
                            + (f" daemon CPU {s.daemon_cpu[-1]:.0f}%" if pid else "")
                            + f" cores: wrk {s.wrk_core[-1]:.0f}% other {s.other_cores[-1]:.0f}%"
                            + (f" CPU/req {s.cpu_per_req()[-1]:.0f} us (others "
                               f"{100 * s.foreign_s[-1] / dt:.0f}%)" if res.requests else "")
                            + (f" FAILED {res.failed}" if res.failed else ""))
                        if mode == "close":
                            _forget_flows(url, remote.ip if ns and remote else None)
                        time.sleep(0.5)  # let TIME_WAIT churn and stray CPU settle
            samples += [by_key[(p, m, c)] for c, p, _, _ in runs for m in MODES]
    return samples
