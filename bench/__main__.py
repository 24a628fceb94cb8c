"""`python -m bench`: every lbctl benchmark in one run, then bench/RESULTS.md + results.png.

Sets up what it needs (the bench-nginx image, a private lbctl daemon, host proxies), holds
the host lock (one lbctl daemon per host) the whole time, and removes everything it made at
the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
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
from bench.rss import RssSampler
from harness import wrk
from harness.host import E2E_LOCK, host_lock
from harness.remote import RemoteHost, forward_accept, remote_host

HERE = Path(__file__).resolve().parent
EXTRA = ("scale", "convergence", "sync", "footprint", "rollout", "warmup")
# The remote client's /30 is 10.253.REMOTE_TAG.0 (the e2e tests use tags 20..219).
REMOTE_TAG = 250
ALL = (*throughput.PATHS, *EXTRA)
# Run only when named in --only: `isolation` measures issue 22's candidates side by side
# (throughput.ISOLATION_PATHS) into a section of its own, which a full run, whose throughput
# table holds every path, does not need.
OPTIONAL = ("isolation",)


NOTES = [
    "Proxies: Debian's nginx with `worker_processes 1` (upstream `keepalive 64`, "
    "`proxy_http_version 1.1`, `proxy_set_header Connection \"\"`) and HAProxy with "
    "`nbthread 1` (`mode http`, `http-reuse always`, `balance roundrobin`): one worker each, "
    "like each nginx replica, because on 2 cores shared with wrk and the replicas a second "
    "proxy worker only takes CPU from the backends.",
    "`ebpf` and `iptables` are reached as users reach them: the app is published on "
    "0.0.0.0:PORT; a local client connects to 127.0.0.1:PORT (lbctl's DNAT in nat OUTPUT + "
    "MASQUERADE of the 127.0.0.1 source), a remote one to the host's address on its link "
    "(DNAT in nat PREROUTING, no MASQUERADE). `reuseport` and `ebpf-sandbox` are hit on the "
    "sandbox's bridge IP, which isolates the program's cost from the DNAT's; `reuseport-host` "
    "is N replicas in the host's own namespace (`docker run --network host`, one free port, "
    "SO_REUSEPORT, no program), the baseline of an ebpf app run in the host's namespace.",
    "Remote client: wrk runs in a network namespace of the bench's own "
    "(`ip netns exec lbctl-remote250 taskset -c 1 wrk ...`) joined to the host by a veth "
    "pair (10.253.250.2 -> the host's 10.253.250.1; harness.remote, which "
    "tests/e2e/test_clients.py uses too). Container and sandbox IPs are routed to it through "
    "the host; Docker's FORWARD rules drop new connections to unpublished container ports, "
    "so for the run the bench inserts two ACCEPTs for that veth only (`-i/-o lbrem250`, "
    "comment `lbctl-bench lbrem250`) at the top of DOCKER-USER and deletes them afterwards. "
    "Its packets cross the veth and nat PREROUTING + FORWARD as another machine's would; "
    "what differs from a real remote client is that the client's CPU is still this "
    "machine's (pinned to CPU 1 like the local wrk).",
    "New-connection runs are sensitive to TIME_WAIT and conntrack state left by the run before "
    "them (tens of thousands of connections per run); rounds alternate the order of the paths "
    "to spread that, but single close-mode figures still move by 20-30 % between rounds "
    "(see results.json for every round).",
    "Why `ebpf-sandbox` (the program without the DNAT, on the sandbox IP) once measured 0.3x "
    "of plain SO_REUSEPORT for new connections (4.9k vs 15.9k req/s, with a LOWER p50): "
    "it shared its app with `ebpf`, so both paths ran into ONE sandbox, from the same "
    "source address (the docker0 gateway: the 127.0.0.1 client is masqueraded to it), to "
    "the same sandbox address and port. A new-connection run leaves ~50k TIME_WAIT sockets "
    "in the sandbox (the server closes first), each remembering its client's last TCP "
    "timestamp. The next run's SYNs reuse those 4-tuples with timestamps of another offset "
    "(Linux derives the offset from the addresses as the client sees them: 127.0.0.1 -> "
    "127.0.0.1 for the DNAT run, gateway -> sandbox IP for the direct one), so many fail "
    "the TIME_WAIT socket's PAWS check: the sandbox answers with an ACK of the old "
    "connection, the client resets it and retransmits its SYN after the 1 s initial RTO. wrk "
    "times requests from their first write, so the stall is not in its latency, but each "
    "one takes a connection out for a second. Evidence (by hand, 2 replicas, wrk -c64 -d4s "
    "close, `nstat -az` in the sandbox's netns and on the host, `conntrack -S`, lbctl's "
    "/metrics): the DNAT run on a fresh app 13.3k req/s, no TcpExtPAWSTimewait; right after "
    "it the same sandbox's IP 6.5k req/s with 1,772 TcpExtPAWSTimewait in the sandbox and "
    "1,708 TcpExtTCPSynRetrans (= TCPTimeouts) and 1,772 TcpOutRsts on the host; a second "
    "ebpf app's sandbox IP (never reached through a DNAT) just after, 15.1k req/s with none "
    "of them. Run the other way round (sandbox IP first: 14.1k), the DNAT run is the one "
    "that drops (6.6k, 1,813 PAWSTimewait). The program is not involved: "
    "lbctl_bpf_verdicts stayed 0 (no fallback, no error: every SYN was steered), "
    "lbctl_replica_connections split exactly 50/50 in every run, and there was no "
    "ListenOverflows, ListenDrops, TCPReqQFullDrop or SyncookiesSent. Fix, in the bench: "
    "`ebpf-sandbox` has an app of its own. Users meet this only when one host reaches a "
    "sandbox both through 127.0.0.1:PORT and straight at the sandbox IP at thousands of "
    "connections a second (the PAWS effect of any NAT in front of TIME_WAIT); a remote "
    "client's source is not rewritten, so it is not exposed.",
    "Ways tried for new connections, chosen by measurement: with a new connection per "
    "request every path is bound by the client's core (see *cores* in the throughput table: "
    "wrk's core is full, the other one is not), so what can still raise req/s is work taken "
    "off that core. On loopback and on the veth the kernel delivers the packets wrk sends "
    "in wrk's own context (softirq on its core): the server side's receive path, conntrack "
    "included, is billed to the client's core. (1) `--network host` (ebpf mode): no veth, "
    "no DNAT, no second conntrack lookup; taken: ebpf-host is the fastest lbctl path and "
    "equal to plain SO_REUSEPORT in the host's namespace (`reuseport-host`). (2) NOTRACK "
    "(conntrack-free) for such an app's port: measured by hand on top of `reuseport-host` "
    "(N=2, local client, `python -m bench --quick --only reuseport-host --clients local` "
    "three times alternating without/with `iptables -t raw -I PREROUTING/OUTPUT -p tcp -j "
    "NOTRACK`): 16.7k / 17.0k / 16.5k req/s without, 18.3k / 17.6k / 18.5k with, +8 %. Not "
    "taken as a default: it leaves the fastest path at ~1.05-1.1x of the proxies (not 1.2x) "
    "and an untracked packet is neither NEW nor ESTABLISHED to a host firewall, so the "
    "common `-m state --state NEW --dport P -j ACCEPT` rule set (firewalld, RHEL's "
    "iptables-services) would drop every connection to the app. (3) eBPF redirect at the "
    "sandbox veth (bpf_redirect_peer) saves the veth crossing that (1) already removes.",
    "What the daemon does while the throughput runs (its CPU column): every app's worker "
    "probes its replicas every 0.25 s (lbctl.controller.readiness). In ebpf mode the probe "
    "asks the kernel for the replica's listening sockets with sock_diag (NETLINK_SOCK_DIAG "
    "through pyroute2, filtered on LISTEN) from a worker thread that enters the replica's "
    "network namespace with setns, and matches them by inode against the replica's own "
    "/proc/PID/fd (lbctl.dataplane.sockets): the kernel filters by state, so the tens of "
    "thousands of TIME_WAIT sockets a new-connection run leaves in the sandbox are never "
    "walked (the first version read /proc/PID/net/tcp, which lists them all, and cost the "
    "daemon a core under that load). A new listener is borrowed with pidfd_getfd and put in "
    "the program's SOCKMAP; a drain counts the replica's open connections the same way. In "
    "iptables mode the probe is a TCP connect to each replica's address. Per-replica "
    "counters are read (the program's per-CPU map, the rules' counters) only when asked: "
    "`lbctl status`, /metrics.",
    "Where the daemon's memory goes (by hand, for the whole-run RSS target: one ebpf and "
    "one iptables app of 2 replicas published on 0.0.0.0, wrk -c64 8 s per run, VmRSS from "
    "/proc/PID/status sampled every 50 ms around each step): 4 new-connection runs (each "
    "app, local and remote clients) moved it from 53.7 to 54.0 MB (4 keep-alive runs, in "
    "another try, from 53.7 to 53.9 MB); then "
    "`lbctl rm` of the ebpf app took it to 184 MB (3.2 s) and `lbctl rm` of the iptables app "
    "to 377 MB (24 s), where it stayed. The same two removals without load before them: "
    "0.6 s and 1.0 s, 54.2 MB. So a bench run's growth is the drain of replicas that just "
    "served tens of thousands of connections (their netns full of TIME_WAIT sockets, the "
    "conntrack table full of their entries). Suspects from the code, not yet confirmed by a "
    "profile: the drain's open-connection count (lbctl.dataplane.sockets.count_open) asks "
    "sock_diag for the states in _OPEN_STATES, which include 0x06, TCP_TIME_WAIT, so every "
    "poll dumps and parses every TIME_WAIT socket although none can count (no inode); and in "
    "iptables mode the drained replica's conntrack cleanup "
    "(lbctl.dataplane.conntrack._forget_backend) materializes a pyroute2 dump, "
    "`list(ct.dump(tuple_reply=...))`.",
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
    "A spoofed UDP flood against an ebpf app's flow table (`pytest -s "
    "tests/dataplane/test_ebpf_flood.py`, not part of `make bench`: UDP replicas in a "
    "namespace of the test's own, 300 real flows from a second namespace through a veth, then "
    "3 x MAX_FLOWS = 196,608 flows from spoofed sources in 10.200.0.0/16 sent by a raw socket "
    "in about 2 s, one or two datagrams each). With the LRU flow map lbctl had: one datagram "
    "per spoofed flow left 300 of 300 real flows (the kernel's LRU evicts first what was "
    "never looked up again); two each left 0 of 300. No flow moved while the replica set "
    "stayed (a forgotten flow is hashed back to its replica), but a scale 3 -> 4 right after "
    "moved 228 of 300, and a replica draining under the flood lost all 72 of its flows to "
    "the others while its drain counted 0 active flows (it would have stopped the replica at "
    "once). With the flow map that never evicts (new flows go to a 16,384-flow LRU while it "
    "is full; the daemon forgets flows quiet for 120 s, or 10 s once it is half full): both "
    "floods leave 300 of 300, 0 moved by the scale, 0 off the draining replica. Flows that "
    "start while the map is full live in that LRU, where a further flood of 16,384 "
    "two-datagram flows left 7 and 75 of 100 in two runs (the others are hashed back to "
    "their replica unless the replica set changes).",
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
        "replicas": list(args.replicas),
        "wrk": f"taskset -c {wrk.WRK_CPU} wrk -t1 -c{wrk.CONNECTIONS} --latency",
        "clients": list(args.clients),
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
                    help=f"comma-separated scenarios (default all but {','.join(OPTIONAL)}): "
                         f"{','.join((*ALL, *OPTIONAL))}")
    ap.add_argument("--replicas", default=None, metavar="N,N",
                    help="replica counts of the throughput and isolation runs (default 2,4; "
                         "2 with --quick)")
    ap.add_argument("--clients", default=",".join(throughput.CLIENTS),
                    help="throughput clients, comma-separated (default all): "
                         f"{','.join(throughput.CLIENTS)} (remote: wrk in a netns of its own)")
    ap.add_argument("--report-from", type=Path, default=None, metavar="RESULTS_JSON",
                    help="run nothing: redraw RESULTS.md and results.png from a results.json")
    ap.add_argument("--out", type=Path, default=HERE,
                    help="where RESULTS.md, results.png and results.json go (default bench/)")
    ap.add_argument("--fresh", action="store_true",
                    help="with --only: write this run's sections alone instead of merging them "
                         "into OUT/results.json (whose other sections are kept by default)")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(ALL) - set(OPTIONAL))
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from "
                 f"{', '.join((*ALL, *OPTIONAL))}")
    wanted = {c.strip() for c in args.clients.split(",") if c.strip()}
    bad = sorted(wanted - set(throughput.CLIENTS))
    if bad or not wanted:
        ap.error(f"unknown client(s) {', '.join(bad) or '(none given)'}; choose from "
                 f"{', '.join(throughput.CLIENTS)}")
    args.clients = tuple(c for c in throughput.CLIENTS if c in wanted)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 6.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.replicas is None:
        args.replicas = [2] if args.quick else [2, 4]
    else:
        try:
            args.replicas = sorted({int(n) for n in args.replicas.split(",") if n.strip()})
        except ValueError:
            args.replicas = []
        if not args.replicas or min(args.replicas) < 1:
            ap.error("--replicas takes replica counts >= 1, comma-separated (e.g. 2,4)")
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
        rss = RssSampler(env.daemon_pid).start()
        try:
            if "sync" in only:  # before the daemon: it owns the LBCTL- chains once it runs
                sizes = [1, 10, 100, 1000] + ([] if args.quick else [5000])
                ipt = _phase(res, "sync cost: iptables", lambda: synccost.iptables(sizes, log))
                bpf = _phase(res, "sync cost: eBPF maps", lambda: synccost.bpf(sizes, log))
                res["sync"] = {"iptables": [asdict(s) for s in ipt or []],
                               "bpf": bpf.to_json() if bpf else None}
            paths = [p for p in throughput.PATHS if p in only]
            if paths or "isolation" in only:
                with contextlib.ExitStack() as stack:
                    remote: RemoteHost | None = None
                    if "remote" in args.clients:
                        remote = stack.enter_context(remote_host(REMOTE_TAG))
                        stack.enter_context(forward_accept(remote.host_link))

                    def measure(ps: list[str]) -> list[throughput.Sample]:
                        return throughput.run(env, ps, args.replicas, args.duration,
                                              args.rounds, warmup=0 if args.quick else 2,
                                              log=log, remote=remote, clients=args.clients)

                    if paths:
                        samples = _phase(res, "throughput", lambda: measure(paths))
                        res["throughput"] = [s.to_json() for s in samples or []]
                    if "isolation" in only:
                        iso = _phase(res, "isolation", lambda: measure(
                            list(throughput.ISOLATION_PATHS)))
                        res["isolation"] = [s.to_json() for s in iso or []]
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
            if "warmup" in only:
                wu = _phase(res, "warm-up rollout", lambda: rollout.run(
                    env, rollout.WARMUP_REPLICAS, args.rounds,
                    [c.id for c in rollout.WARMUP_CASES], log))
                res["warmup"] = [s.to_json() for s in wu or []]
        finally:
            res["rss"] = rss.stop().to_json()  # before close(): that stops the daemon
            if res["rss"]["samples"]:
                log(f"daemon RSS through the run: max {res['rss']['max_rss_mb']:.1f} MB, "
                    f"VmHWM {res['rss']['hwm_mb']:.1f} MB")
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
