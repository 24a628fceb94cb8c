"""Shipping a new image to N replicas under load: lbctl's rolling updates in both modes, side
by side with a Swarm-like update of the same replicas in a plain SO_REUSEPORT group, which
stops a replica without taking it out of the data plane first.

Every case starts from N fresh replicas of lbctl/demo (the static C server the tests use;
SIGTERM makes it close its listener, finish what it accepted and exit) tagged for this run as
OLD, and rolls them to NEW, the same binary under another name: what is measured is the
rollout, not a change of the server. The same wrk load runs through every case: one thread,
CONNECTIONS connections, a new connection per request (`Connection: close`), so every request
goes through the kernel's choice of a listener, with a small Lua script that counts answers
per BUCKET_S of CLOCK_MONOTONIC (the clock of time.monotonic()), which gives the request rate
before, during and after the rollout. wrk starts PRE_S before the rollout and is interrupted
(SIGINT: it prints its report) POST_S after it, longer than wrk's request timeout, so a
request the rollout left hanging is counted as failed too.

The warm-up cases (results.json's "warmup", `python -m bench --only warmup`) roll 3 replicas
to a revision that warms up (the demo server's WARMUP=8: it listens at once and answers 503
for 8 s, as a service loading its code does), once with today's readiness (a listening
socket, a TCP connect) and once with `--ready-path /ready`, lbctl's HTTP probe of each
replica: what the probe saves is the difference in failed requests (non-2xx), what it costs
is the difference in rollout time.

Cases (ids are what results.json keeps):
  lbctl rows     `lbctl update APP --image NEW [flags]` on an app of N replicas, timed until
                 the command returns (it waits until the last old replica has stopped)
  swarm-*        a pause sandbox (run_sandbox) whose network namespace N replicas join, hit on
                 the sandbox IP like throughput's `reuseport` path, updated replica by replica
                 the way `docker service update --update-parallelism 1` does it: stop-first =
                 `docker stop -t 10` (SIGTERM, then the grace) then `docker run` of NEW, and
                 wait until the new one listens before the next; start-first = the other way
                 round. No drain: the old replica stays in the SO_REUSEPORT group until its
                 own process closes its listener.
"""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import (
    PAUSE_IMAGE,
    Env,
    container_ip,
    container_pid,
    proc_cpu_seconds,
    run_backend,
    run_sandbox,
    wait_http,
)
from bench.image import PORT
from harness import wrk
from harness.engine import docker
from harness.images import demo_image
from lbctl.dataplane.sockets import find_listeners

Log = Callable[[str], None]

OLD = "lbctl/demo:bench-v1"
NEW = "lbctl/demo:bench-v2"
APP = "bench-ro"  # the lbctl.app label of every container made here (removed by Env.close)
CONNECTIONS = 32  # as scale-under-load: saturates the 2 cores without piling up queues
PRE_S = 3.0
POST_S = wrk.TIMEOUT_S + 1.0
BUCKET_S = 0.1
ROLLOUT_TIMEOUT_S = 300.0
STOP_GRACE_S = 10  # Swarm's default --stop-grace-period

# Counts answers per bucket of the monotonic clock in each wrk thread; done() prints them all
# on one line that parse_buckets() reads back ("lbctl-buckets WIDTH KEY:COUNT ...").
LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } lbctl_timespec;
int clock_gettime(int clk, lbctl_timespec *tp);
]]
local now = ffi.new("lbctl_timespec")
local WIDTH = @WIDTH@
buckets = {}
function response(status, headers, body)
  if status >= 200 and status < 400 then
    ffi.C.clock_gettime(1, now)  -- CLOCK_MONOTONIC
    local k = math.floor((tonumber(now.tv_sec) + tonumber(now.tv_nsec) / 1e9) / WIDTH)
    buckets[k] = (buckets[k] or 0) + 1
  end
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local all, keys, parts = {}, {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("buckets")) do all[k] = (all[k] or 0) + v end
  end
  for k in pairs(all) do table.insert(keys, k) end
  table.sort(keys)
  for _, k in ipairs(keys) do table.insert(parts, string.format("%d:%d", k, all[k])) end
  io.write("lbctl-buckets ", WIDTH, " ", table.concat(parts, " "), "\\n")
end
"""


@dataclass(frozen=True)
class Case:
    id: str
    label: str
    mode: str  # lbctl's mode; "reuseport" for the Swarm-like cases
    order: str  # start-first | stop-first
    flags: tuple[str, ...] = ()  # `lbctl update` policy flags (default policy: none)
    migrate: bool = False  # Swarm-like: tcp_migrate_req=1 in the sandbox
    run_flags: tuple[str, ...] = ()  # `lbctl run` flags (the readiness probe)
    warmup: int = 0  # seconds the new revision answers 503 after it listens (WARMUP)

    @property
    def lbctl(self) -> bool:
        return self.mode != "reuseport"

    @property
    def app(self) -> str:
        """The app (or container name prefix) of this case: app names are short."""
        return f"{APP}{[c.id for c in (*CASES, *WARMUP_CASES)].index(self.id) + 1}"


CASES = (
    Case("ebpf", "lbctl ebpf, start-first, default policy (--monitor 5)", "ebpf",
         "start-first"),
    Case("ebpf-monitor1", "lbctl ebpf, start-first, --monitor 1", "ebpf", "start-first",
         ("--monitor", "1")),
    Case("iptables", "lbctl iptables, start-first, default policy", "iptables", "start-first"),
    Case("ebpf-stop-first", "lbctl ebpf, --update-order stop-first (drains first)", "ebpf",
         "stop-first", ("--update-order", "stop-first")),
    Case("swarm-stop-first", "Swarm-like stop-first: docker stop, docker run (no lbctl)",
         "reuseport", "stop-first"),
    Case("swarm-stop-first-migrate", "Swarm-like stop-first, sandbox with tcp_migrate_req=1",
         "reuseport", "stop-first", migrate=True),
    Case("swarm-start-first", "Swarm-like start-first: docker run, docker stop (no lbctl)",
         "reuseport", "start-first"),
)
QUICK = ("ebpf-monitor1", "swarm-stop-first")
WARMUP_S = 8  # the issue's: a service that answers 503 for its first 8 seconds
READY_PATH = ("--ready-path", "/ready")
WARMUP_CASES = (
    Case("warmup-ebpf-tcp", "lbctl ebpf, to a revision that warms up 8 s, TCP readiness",
         "ebpf", "start-first", warmup=WARMUP_S),
    Case("warmup-ebpf-http", "lbctl ebpf, to a revision that warms up 8 s, --ready-path /ready",
         "ebpf", "start-first", run_flags=READY_PATH, warmup=WARMUP_S),
    Case("warmup-iptables-tcp", "lbctl iptables, to a revision that warms up 8 s, TCP readiness",
         "iptables", "start-first", warmup=WARMUP_S),
    Case("warmup-iptables-http",
         "lbctl iptables, to a revision that warms up 8 s, --ready-path /ready", "iptables",
         "start-first", run_flags=READY_PATH, warmup=WARMUP_S),
)
WARMUP_REPLICAS = 3


@dataclass
class Round:
    """One rollout under load."""

    rollout_s: float
    load: wrk.WrkResult  # the whole wrk run: PRE_S + rollout + POST_S
    before_rps: float | None  # answers per second in the full buckets before the rollout
    during_rps: float | None  # ... in the full buckets inside the rollout
    lowest_rps: float | None  # the lowest bucket inside the rollout, per second
    # answers per second in consecutive BUCKET_S buckets, the first `start` seconds from the
    # rollout's start (negative: before it)
    start: float
    timeline: list[float]
    daemon_cpu_pct: float | None = None  # lbctl's daemon during the rollout, % of a core

    def to_json(self) -> dict[str, Any]:
        return {"rollout_s": round(self.rollout_s, 3), **self.load.to_json(),
                "before_rps": _round(self.before_rps), "during_rps": _round(self.during_rps),
                "lowest_rps": _round(self.lowest_rps),
                "daemon_cpu_pct": None if self.daemon_cpu_pct is None
                else round(self.daemon_cpu_pct, 1),
                "timeline": {"start": round(self.start, 2), "step": BUCKET_S,
                             "rps": [round(x) for x in self.timeline]}}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _median(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


@dataclass
class Sample:
    case: Case
    replicas: int
    rounds: list[Round] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.case.id, "label": self.case.label, "mode": self.case.mode,
                "order": self.case.order, "flags": list(self.case.flags),
                "migrate": self.case.migrate, "lbctl": self.case.lbctl,
                "replicas": self.replicas,
                "rollout_s": round(statistics.median(r.rollout_s for r in self.rounds), 3),
                "during_rps": _round(_median([r.during_rps for r in self.rounds])),
                "before_rps": _round(_median([r.before_rps for r in self.rounds])),
                "requests": sum(r.load.requests for r in self.rounds),
                "failed": sum(r.load.failed for r in self.rounds),
                "rounds": [r.to_json() for r in self.rounds]}


def parse_buckets(out: str) -> tuple[float, dict[int, int]]:
    """(bucket width in seconds, bucket index -> answers) from the Lua script's line."""
    m = re.search(r"^lbctl-buckets ([\d.]+) ?(.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no buckets (is it built with LuaJIT?): {out[-300:]}")
    counts = {int(k): int(v) for k, v in (p.split(":") for p in m[2].split())}
    return float(m[1]), counts


def rate(buckets: dict[int, int], width: float, t0: float,
         t1: float) -> tuple[float | None, float | None]:
    """(mean, lowest) answers per second over the buckets that lie wholly inside [t0, t1];
    (None, None) when no bucket does."""
    first, last = int(t0 // width) + 1, int(t1 // width) - 1
    if last < first:
        return None, None
    counts = [buckets.get(k, 0) for k in range(first, last + 1)]
    return sum(counts) / (len(counts) * width), min(counts) / width


def measure(url: str, roll: Callable[[], None], script: Path,
            cpu: Callable[[], float] | None = None) -> Round:
    """wrk on `url` from PRE_S before roll() until POST_S after it returns."""
    proc = wrk.start(url, PRE_S + ROLLOUT_TIMEOUT_S + POST_S + 30, close=True,
                     connections=CONNECTIONS, script=script)
    started = time.monotonic()
    try:
        time.sleep(PRE_S)
        c0 = cpu() if cpu else 0.0
        t0 = time.monotonic()
        roll()
        t1 = time.monotonic()
        c1 = cpu() if cpu else 0.0
        time.sleep(POST_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.strip()[-300:]}")
    width, buckets = parse_buckets(out)
    # the first second of wrk is its ramp-up (64 connects at once), not the steady rate
    before, _ = rate(buckets, width, started + 1.0, t0)
    during, lowest = rate(buckets, width, t0, t1)
    # wrk's first and last buckets are partial: not a rate
    keys = sorted(buckets)[1:-1]
    timeline = [buckets.get(k, 0) / width for k in range(keys[0], keys[-1] + 1)] if keys else []
    start = (keys[0] - int(t0 // width)) * width if keys else 0.0
    return Round(t1 - t0, wrk.parse(out), before, during, lowest, start, timeline,
                 100 * (c1 - c0) / (t1 - t0) if cpu else None)


# ------------------------------------------------------------------------ the cases


def _images_of(ids: list[str]) -> list[str]:
    return sorted(docker("inspect", "--format", "{{.Config.Image}}", *ids).split())


def _lbctl_case(env: Env, case: Case, n: int, script: Path) -> Round:
    app = case.app
    port = env.run_app(app, n, case.mode, image=OLD, extra=case.run_flags)
    try:
        d = env.lbctl()
        assert d.proc is not None
        pid = d.proc.pid
        warm = ("-e", f"WARMUP={case.warmup}") if case.warmup else ()

        def roll() -> None:
            d.ok("update", app, "--image", NEW, *warm, *case.flags, timeout=ROLLOUT_TIMEOUT_S)

        rd = measure(f"http://127.0.0.1:{port}/", roll, script,
                     cpu=lambda: proc_cpu_seconds(pid))
        st = d.status(app)
        images = _images_of([r["container_id"] for r in st["replicas"]])
        if images != [NEW] * n or st["rollout"]["state"] != "complete":
            raise RuntimeError(f"{app}: the rollout did not end on {n} x {NEW}: {images}, "
                               f"rollout {st['rollout']}")
        return rd
    finally:
        env.rm_app(app)


def listening(name: str, timeout: float = 30.0) -> None:
    """Until the container's own process holds a listener on PORT (in the shared netns, the
    group's other listeners do not count)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = container_pid(name)
        if pid > 0 and find_listeners(pid, PORT):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{name} does not listen on {PORT} after {timeout:g} s")


def _swarm_case(case: Case, n: int, script: Path) -> Round:
    tag = case.app
    sandbox = f"{tag}-sandbox"
    old = [f"{tag}-{i}" for i in range(1, n + 1)]
    new = [f"{tag}-{i}-v2" for i in range(1, n + 1)]
    made = [sandbox]
    try:
        run_sandbox(sandbox, APP, migrate=case.migrate)
        net = f"container:{sandbox}"
        for name in old:
            made.append(name)
            run_backend(name, APP, network=net, image=OLD)
        for name in old:
            listening(name)
        ip = container_ip(sandbox)
        wait_http(ip, PORT)

        def start(name: str) -> None:
            made.append(name)
            run_backend(name, APP, network=net, image=NEW)
            listening(name)

        def stop(name: str) -> None:
            docker("stop", "-t", str(STOP_GRACE_S), name)

        def roll() -> None:
            for o, nw in zip(old, new, strict=True):
                if case.order == "stop-first":
                    stop(o)
                    start(nw)
                else:
                    start(nw)
                    stop(o)

        rd = measure(f"http://{ip}:{PORT}/", roll, script)
        running = docker("ps", "-q", "--filter", f"label=lbctl.app={APP}",
                         "--filter", f"name={tag}-").split()
        if _images_of(running) != sorted([NEW] * n + [PAUSE_IMAGE]):
            raise RuntimeError(f"{tag}: not on {n} x {NEW} after the update")
        return rd
    finally:
        docker("rm", "-f", *made, check=False)


# ------------------------------------------------------------------------ the run


def tag_images() -> None:
    """OLD and NEW: this run's names for one build of the demo server, this checkout's
    (harness.images: lbctl/demo:latest is whichever checkout built it last, and the warm-up
    cases need this one's WARMUP and /ready), fixed for the whole run."""
    source = demo_image()
    for t in (OLD, NEW):
        docker("tag", source, t)


def untag_images() -> None:
    docker("rmi", OLD, NEW, check=False)  # only the tags go; SOURCE keeps the image


def run(env: Env, replicas: int, rounds: int, cases: list[str], log: Log) -> list[Sample]:
    """Every case `rounds` times, rounds in alternating order so that drift of a shared
    machine hits every case alike."""
    chosen = [c for c in (*CASES, *WARMUP_CASES) if c.id in cases]
    samples = {c.id: Sample(c, replicas) for c in chosen}
    script = env.tmp / "rollout-buckets.lua"
    script.write_text(LUA.replace("@WIDTH@", repr(BUCKET_S)))
    tag_images()
    try:
        for r in range(rounds):
            for case in chosen if r % 2 == 0 else reversed(chosen):
                rd = _lbctl_case(env, case, replicas, script) if case.lbctl \
                    else _swarm_case(case, replicas, script)
                samples[case.id].rounds.append(rd)
                ld = rd.load
                log(f"  {case.id:25} round {r + 1}: rollout {rd.rollout_s:5.1f} s, "
                    f"{ld.requests} requests, failed {ld.failed} (connect {ld.connect}, read "
                    f"{ld.read}, write {ld.write}, timeout {ld.timeout}, non-2xx {ld.non2xx}), "
                    f"{rd.during_rps or 0:.0f} req/s during (before {rd.before_rps or 0:.0f})")
                time.sleep(1.0)  # let the TIME_WAIT of the last case's sandbox go with it
    finally:
        untag_images()
    return [samples[c.id] for c in chosen]
