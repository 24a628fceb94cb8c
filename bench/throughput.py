"""Throughput and latency of every path, side by side, against the same nginx replicas.

Paths (ids are what `--only` takes):
  direct       one replica reached on its container IP (no balancing at all)
  reuseport    a pause sandbox + N replicas joined to it, plain kernel SO_REUSEPORT, no
               program; wrk hits the sandbox IP
  ebpf         lbctl ebpf mode on 127.0.0.1:PORT (lbctl's DNAT to the sandbox + the program)
  ebpf-sandbox the same lbctl ebpf app hit on its sandbox IP (the program without the DNAT)
  iptables     lbctl iptables mode on 127.0.0.1:PORT (statistic DNAT to each replica)
  nginx        Debian's nginx on the host as reverse proxy in front of N replicas
  haproxy      HAProxy on the host in front of the same N replicas
  dockerproxy  one replica published with Docker's own -p 127.0.0.1:PORT (docker-proxy)

Every (path, N, connection mode) is run `rounds` times, rounds interleaved and in alternating
order so drift of the machine hits every path alike; the median round is reported.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.env import (
    Env,
    container_ip,
    proc_cpu_seconds,
    run_backend,
    run_sandbox,
    wait_http,
)
from bench.image import PORT
from harness import wrk
from harness.engine import docker
from harness.host import free_port

PATHS = ("direct", "reuseport", "ebpf", "ebpf-sandbox", "iptables", "nginx", "haproxy",
         "dockerproxy")
MODES = ("keepalive", "close")
LABELS = {
    "direct": "one backend, direct (container IP)",
    "reuseport": "kernel SO_REUSEPORT, no program (sandbox IP)",
    "ebpf": "lbctl ebpf mode (127.0.0.1 DNAT + program)",
    "ebpf-sandbox": "lbctl ebpf program, sandbox IP (no DNAT)",
    "iptables": "lbctl iptables mode (statistic DNAT)",
    "nginx": "nginx reverse proxy (1 worker, upstream keepalive 64)",
    "haproxy": "HAProxy (nbthread 1, http-reuse always)",
    "dockerproxy": "docker-proxy (-p 127.0.0.1:PORT), 1 replica",
}


@dataclass
class Sample:
    path: str
    replicas: int
    mode: str
    rounds: list[wrk.WrkResult] = field(default_factory=list)
    # CPU of the lbctl daemon during each round, % of one core (None: no daemon running)
    daemon_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> wrk.WrkResult:
        ordered = sorted(self.rounds, key=lambda r: r.rps)
        return ordered[(len(ordered) - 1) // 2] if len(ordered) % 2 else _mean(ordered)

    def to_json(self) -> dict[str, Any]:
        m = self.median
        return {"path": self.path, "replicas": self.replicas, "mode": self.mode,
                "rps": round(m.rps, 1), "p50_ms": round(m.p50_ms, 3),
                "p99_ms": round(m.p99_ms, 3), "failed": m.failed,
                "daemon_cpu_pct": round(statistics.median(self.daemon_cpu), 1)
                if self.daemon_cpu else None,
                "rounds": [r.to_json() for r in self.rounds]}


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
def _targets(env: Env, paths: list[str], n: int) -> Iterator[dict[str, str]]:
    """Start whatever `paths` need for n replicas; yields path -> URL; tears it down."""
    urls: dict[str, str] = {}
    made: list[str] = []
    apps: list[str] = []
    proxies_before = len(env.proxies)
    try:
        if {"direct", "nginx", "haproxy"} & set(paths):
            names = [f"bench-raw{n}-{i}" for i in range(1, n + 1)]
            for name in names:
                run_backend(name, "bench-raw")
                made.append(name)
            ips = [container_ip(name) for name in names]
            for ip in ips:
                wait_http(ip, PORT)
            upstreams = [f"{ip}:{PORT}" for ip in ips]
            if "direct" in paths:
                urls["direct"] = f"http://{ips[0]}:{PORT}/"
            for kind in ("nginx", "haproxy"):
                if kind in paths:
                    urls[kind] = env.proxy(kind, upstreams).url
        if "reuseport" in paths:
            sb = f"bench-rp{n}-sandbox"
            run_sandbox(sb, "bench-rp")
            made.append(sb)
            for i in range(1, n + 1):
                made.append(f"bench-rp{n}-{i}")
                run_backend(made[-1], "bench-rp", network=f"container:{sb}")
            ip = container_ip(sb)
            wait_http(ip, PORT)
            urls["reuseport"] = f"http://{ip}:{PORT}/"
        if "dockerproxy" in paths:
            port = free_port()
            name = f"bench-dp{n}"
            run_backend(name, "bench-dp", publish=f"127.0.0.1:{port}:{PORT}")
            made.append(name)
            wait_http("127.0.0.1", port)
            urls["dockerproxy"] = f"http://127.0.0.1:{port}/"
        if {"ebpf", "ebpf-sandbox"} & set(paths):
            app = "bench-ebpf"
            port = env.run_app(app, n, "ebpf")
            apps.append(app)
            urls["ebpf"] = f"http://127.0.0.1:{port}/"
            sb_ip = container_ip(f"{app}-sandbox")
            urls["ebpf-sandbox"] = f"http://{sb_ip}:{PORT}/"
        if "iptables" in paths:
            app = "bench-ipt"
            port = env.run_app(app, n, "iptables")
            apps.append(app)
            urls["iptables"] = f"http://127.0.0.1:{port}/"
        yield {p: urls[p] for p in paths if p in urls}
    finally:
        for p in env.proxies[proxies_before:]:
            with contextlib.suppress(Exception):
                p.stop()
        del env.proxies[proxies_before:]
        for app in apps:
            env.rm_app(app)
        if made:
            docker("rm", "-f", *made, check=False)


def run(env: Env, paths: list[str], replica_counts: list[int], seconds: float, rounds: int,
        warmup: float, log: Callable[[str], None]) -> list[Sample]:
    samples: list[Sample] = []
    for n in replica_counts:
        with _targets(env, paths, n) as urls:
            order = list(urls)
            if warmup > 0:
                for path in order:
                    wrk.run(urls[path], warmup, close=False)
            by_key: dict[tuple[str, str], Sample] = {}
            for r in range(rounds):
                for mode in MODES:
                    for path in order if r % 2 == 0 else reversed(order):
                        pid = env.daemon_pid()
                        c0, t0 = (proc_cpu_seconds(pid), time.monotonic()) if pid else (0, 0)
                        res = wrk.run(urls[path], seconds, close=mode == "close")
                        s = by_key.setdefault((path, mode), Sample(path, n, mode))
                        s.rounds.append(res)
                        if pid:
                            s.daemon_cpu.append(
                                100 * (proc_cpu_seconds(pid) - c0) / (time.monotonic() - t0))
                        log(f"  N={n} {mode:9} {path:12} round {r + 1}: {res.rps:9.0f} req/s "
                            f"p50 {res.p50_ms:.2f} ms p99 {res.p99_ms:.2f} ms"
                            + (f" daemon CPU {s.daemon_cpu[-1]:.0f}%" if pid else "")
                            + (f" FAILED {res.failed}" if res.failed else ""))
                        time.sleep(0.5)  # let TIME_WAIT churn and stray CPU settle
            samples += [by_key[(p, m)] for p in order for m in MODES]
    return samples
