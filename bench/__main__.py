"""`python -m bench`: every lbctl benchmark in one run, then bench/RESULTS.md + results.png.

Sets up what it needs (the bench-nginx image, a private lbctl daemon, host proxies), holds
the host lock (one lbctl daemon per host) the whole time, and removes everything it made at
the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    dynamics,
    image,
    merge,
    report,
    rollout,
    rollout_report,
    synccost,
    throughput,
)
from bench.env import PIN_ROOT, Env, remove_bench_containers
from harness import wrk
from harness.host import E2E_LOCK, host_lock

HERE = Path(__file__).resolve().parent
EXTRA = ("scale", "convergence", "sync", "footprint", "rollout")
ALL = (*throughput.PATHS, *EXTRA)


NOTES = [
    "Proxies: Debian's nginx with `worker_processes 1` (upstream `keepalive 64`, "
    "`proxy_http_version 1.1`, `proxy_set_header Connection \"\"`) and HAProxy with "
    "`nbthread 1` (`mode http`, `http-reuse always`, `balance roundrobin`): one worker each, "
    "like each nginx replica, because on 2 cores shared with wrk and the replicas a second "
    "proxy worker only takes CPU from the backends.",
    "`ebpf` and `iptables` are reached as users reach them, on 127.0.0.1:PORT through lbctl's "
    "DNAT (+ MASQUERADE of the 127.0.0.1 source); `reuseport` and `ebpf-sandbox` are hit on the "
    "sandbox's bridge IP, which isolates the program's cost from the DNAT's.",
    "New-connection runs are sensitive to TIME_WAIT and conntrack state left by the run before "
    "them (tens of thousands of connections per run); rounds alternate the order of the paths "
    "to spread that, but single close-mode figures still move by 20-30 % between rounds "
    "(see results.json for every round).",
    "Profile of the idle daemon (py-spy record, 2 apps x 4 replicas, by hand during "
    "development): ~73 % of samples in `lbctl.dataplane.sockets._tcp_rows`, i.e. the ebpf "
    "readiness probe reading /proc/PID/net/tcp{,6} for every replica several times a second; "
    "each read walks the kernel's whole TCP hash (~10 ms for tcp+tcp6 here). That is what "
    "the idle CPU figure measures; a sock_diag query filtered on LISTEN would avoid it. "
    "Under new-connection load on an ebpf app the same probe is worse: the netns then holds "
    "tens of thousands of TIME_WAIT sockets, which /proc/PID/net/tcp lists too; py-spy dumps "
    "of the daemon during the full run's `ebpf` new-connection run found two worker threads in "
    "`_tcp_rows` in 5 of 5 dumps, and the daemon at ~100-160 % of a core (see the daemon CPU "
    "column).",
    "docker-proxy is Docker's userland proxy for `-p` published ports (local clients); lbctl "
    "never puts it in the path.",
    "Why the Swarm-like rolling updates fail requests although the demo server shuts down "
    "gracefully (by hand during development: 4 demo replicas in one sandbox, the rollout's "
    "wrk load, `docker stop` of 3 of them, `nstat -az` in the sandbox's netns): 20 read "
    "errors against 17 TcpExtTCPAbortOnData, i.e. connections the stopping server had "
    "accepted and closed with their request unread (on SIGTERM it closes every connection "
    "with nothing read yet as idle, as HTTP servers do with idle keep-alive connections; "
    "until the signal, new ones kept arriving), and TcpExtTCPMigrateReqSuccess 0 with "
    "tcp_migrate_req=1: its accept queue was empty, nothing to migrate. Without the sysctl, "
    "22 read errors for the same 3 stops.",
    "Why lbctl deletes a drained iptables-mode replica's conntrack entries itself before it "
    "stops (by hand during development: the rollout case with `--monitor 1`, tcpdump of SYN "
    "and RST on docker0, `docker events`, `conntrack -E`): before it did, rollouts lost about "
    "1 request in 100,000 at 13k new connections/s (10 in 6 rounds). Every server RST fell "
    "within the 0.2 s between a drained old replica's `die` and `stop` events, and answered "
    "the handshake ACK of a NEW connection to ANOTHER replica (its sequence number was that "
    "replica's SYN-ACK + 1); `conntrack -E` showed dockerd (USERSPACE, progname=dockerd) "
    "destroying that new connection's entry. Docker deletes a leaving container's entries by "
    "their original tuple from a dump taken a moment before; at this rate a client port comes "
    "back every 0.3-2 s, so a new connection often takes the original tuple of one of the "
    "removed replica's TIME_WAIT entries in between, and loses its entry in mid-handshake. "
    "`conntrack -D` deletes the same way and did not help (3 failed in 5 rounds); lbctl now "
    "deletes by the reply tuple, which names the replica (lbctl.dataplane.conntrack): 0 "
    "failed in 6 rounds, 1.63 million requests. The eBPF mode was never exposed: its "
    "replicas share the sandbox's address, which stays.",
]


def log(msg: str) -> None:
    print(msg, flush=True)


def _version(cmd: list[str], pick: Callable[[str], str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return pick(r.stdout + r.stderr)
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def _meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = ", ".join([
        _version(["nginx", "-v"], lambda s: s.strip().split(":", 1)[1].strip()),
        "HAProxy " + _version(["haproxy", "-v"], lambda s: s.split()[2]),
        _version(["wrk", "-v"], lambda s: s.split()[0] + " " + s.split()[1]),
        "Docker " + _version(["docker", "version", "--format", "{{.Server.Version}}"],
                             lambda s: s.strip()),
        f"Python {platform.python_version()}",
    ])
    return {
        "command": " ".join(["python -m bench", *argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "duration": args.duration,
        "rounds": args.rounds,
        "quick": args.quick,
        "wrk": f"taskset -c {wrk.WRK_CPU} wrk -t1 -c{wrk.CONNECTIONS} --latency",
        "versions": versions,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per wrk run (default 6; 2 with --quick)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per path (default 2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: N=2 only, 1 round, fewer tries, shorter storms")
    ap.add_argument("--only", default=",".join(ALL),
                    help=f"comma-separated scenarios (default all): {','.join(ALL)}")
    ap.add_argument("--report-from", type=Path, default=None, metavar="RESULTS_JSON",
                    help="run nothing: redraw RESULTS.md and results.png from a results.json")
    ap.add_argument("--out", type=Path, default=HERE,
                    help="where RESULTS.md, results.png and results.json go (default bench/)")
    ap.add_argument("--fresh", action="store_true",
                    help="with --only: write this run's sections alone instead of merging them "
                         "into OUT/results.json (whose other sections are kept by default)")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(ALL))
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    if args.duration is None:
        args.duration = 2.0 if args.quick else 6.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    return args


def _phase(res: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    log(f"== {name}")
    t0 = time.monotonic()
    try:
        value = fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        traceback.print_exc()
        res.setdefault("errors", {})[name] = f"{type(e).__name__}: {str(e)[:300]}"
        return None
    log(f"   ({time.monotonic() - t0:.0f} s)")
    return value


def _leftover_rules() -> bool:
    r = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    return "bench-" in r.stdout and "LBCTL-" in r.stdout


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    res: dict[str, Any] = {"meta": _meta(args, argv), "notes": list(NOTES)}
    only = args.only
    log("building lbctl/bench-nginx (offline) ...")
    image.build()
    log(f"waiting for the host lock ({E2E_LOCK}: one lbctl daemon per host) ...")
    with host_lock(), tempfile.TemporaryDirectory(prefix="lbctl-bench-") as tmp:
        started = time.monotonic()  # the run, not the wait for the lock
        remove_bench_containers()
        shutil.rmtree(PIN_ROOT, ignore_errors=True)
        env = Env(Path(tmp))
        try:
            if "sync" in only:  # before the daemon: it owns the LBCTL- chains once it runs
                sizes = [1, 10, 100, 1000] + ([] if args.quick else [5000])
                ipt = _phase(res, "sync cost: iptables", lambda: synccost.iptables(sizes, log))
                bpf = _phase(res, "sync cost: eBPF maps", lambda: synccost.bpf(sizes, log))
                res["sync"] = {"iptables": [asdict(s) for s in ipt or []],
                               "bpf": bpf.to_json() if bpf else None}
            paths = [p for p in throughput.PATHS if p in only]
            if paths:
                counts = [2] if args.quick else [2, 4]
                samples = _phase(res, "throughput", lambda: throughput.run(
                    env, paths, counts, args.duration, args.rounds,
                    warmup=0 if args.quick else 2, log=log))
                res["throughput"] = [s.to_json() for s in samples or []]
            if "scale" in only:
                secs = 10 if args.quick else 25
                sl = _phase(res, "scale under load", lambda: dynamics.scale_under_load(
                    env, ["ebpf", "iptables", "reuseport"], secs, log))
                res["scale"] = [s.to_json() for s in sl or []]
            if "convergence" in only:
                tries = 5 if args.quick else 20
                cv = _phase(res, "convergence", lambda: dynamics.convergence(
                    env, ["ebpf", "iptables"], tries, log))
                res["convergence"] = [c.to_json() for c in cv or []]
            if "footprint" in only:
                fp = _phase(res, "footprint", lambda: dynamics.footprint(
                    env, idle=3 if args.quick else 10, storm=15 if args.quick else 30, log=log))
                res["footprint"] = asdict(fp) if fp else None
            if "rollout" in only:
                n, cases = (2, list(rollout.QUICK)) if args.quick else \
                    (4, [c.id for c in rollout.CASES])
                ro = _phase(res, "rollout", lambda: rollout.run(
                    env, n, args.rounds, cases, log))
                res["rollout"] = [s.to_json() for s in ro or []]
        finally:
            log("cleaning up ...")
            env.close()
            if _leftover_rules():
                import asyncio

                from lbctl.dataplane.iptables import IptablesDataplane

                asyncio.run(IptablesDataplane(Path(tmp)).sync([]))
    res["meta"]["runtime_s"] = time.monotonic() - started
    return res


# A list of plain numbers as json.dumps(indent=1) lays it out: one number a line. JSON strings
# hold no raw newline, so this matches only the layout, never text inside a string.
_NUMBERS = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def dumps(res: dict[str, Any]) -> str:
    """results.json's text, with lists of numbers on one line each: a rollout's timeline holds
    hundreds of rates, which would otherwise take a line apiece."""
    text = json.dumps(res, indent=1, default=str)
    return _NUMBERS.sub(lambda m: "[" + ", ".join(v.strip() for v in m[1].split(",")) + "]",
                        text)


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(dumps(res) + "\n")
    if not report.chart(res, out / "results.png"):
        res["notes"].append("results.png not drawn: matplotlib is missing "
                            "(`.venv/bin/pip install -e '.[bench]'`).")
    if res.get("rollout") and not rollout_report.chart(res, out / "rollout.png"):
        res["notes"].append("rollout.png not drawn: matplotlib is missing "
                            "(`.venv/bin/pip install -e '.[bench]'`).")
    (out / "RESULTS.md").write_text(report.markdown(res))
    log(f"wrote {out / 'RESULTS.md'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report_from is not None:
        res = json.loads(args.report_from.read_text())
        res["notes"] = list(NOTES)  # the current wording; the figures stay the run's
        write(res, args.out)
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (Docker, iptables, eBPF); run `make bench` as root",
              file=sys.stderr)
        return 1

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        res = run(args, argv)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is removed", file=sys.stderr)
        return 130
    failed = sorted(res.get("errors", {}))  # this run's; a merge keeps older ones on show
    previous = args.out / "results.json"
    if set(args.only) != set(ALL) and not args.fresh and previous.exists():
        res = merge.merge(json.loads(previous.read_text()), res, args.only, throughput.PATHS)
        log(f"merged into {previous} (the sections of scenarios not run are kept)")
    write(res, args.out)
    if failed:
        print(f"bench: phase(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
