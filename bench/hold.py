"""`python -m bench.hold`: how much a traffic hold (`lbctl pause`) holds with 0 failed
requests, per mode: how many connections (ebpf: the hold listener's accept queue, bounded by
net.core.somaxconn; past it, and in iptables mode always, the clients' SYN retries) and how
many seconds (ebpf: the clients' own patience; iptables: the clients' last SYN retry, 67 s
on Linux 6.5+ with tcp_syn_linear_timeouts=4 and 63 s before, a client giving up at about
135 s or 127 s).

Each case opens N clients at once as a hold begins, each a new connection that sends a GET
and waits up to 300 s for the answer, then resumes after T seconds and counts what was
served. Prints a Markdown table (README, "Pause and resume"). Takes about 9 minutes; holds
the host lock; not part of `make bench` (it measures bounds, not speed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import PREFIX
from harness.daemon import Daemon
from harness.engine import checkout_image, cleanup_leftovers
from harness.host import free_port, host_lock

CLIENT_TIMEOUT = 300.0


@dataclass
class Case:
    mode: str
    clients: int
    hold: float  # seconds


@dataclass
class Outcome:
    case: Case
    served: int
    failed: int
    errors: dict[str, int]
    held: int | None  # connections in the hold's accept queue just before resume (ebpf)
    wait_max: float  # seconds the slowest served client waited
    wait_p50: float


CASES = [
    Case("ebpf", 1000, 10), Case("ebpf", 4000, 10), Case("ebpf", 8000, 10),
    Case("ebpf", 200, 120),
    Case("iptables", 4000, 10), Case("iptables", 200, 60), Case("iptables", 200, 70),
]
QUICK = [Case("ebpf", 1000, 5), Case("iptables", 1000, 5)]


async def client(port: int, errors: dict[str, int]) -> float | None:
    """Seconds until the answer, None when it failed (counted in `errors` by kind)."""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError) as e:
        kind = type(e).__name__
        errors[kind] = errors.get(kind, 0) + 1
        return None
    if not data.startswith(b"HTTP/1.1 200"):
        errors["non-200"] = errors.get("non-200", 0) + 1
        return None
    return time.monotonic() - t0


async def measure(d: Daemon, app: str, port: int, case: Case) -> Outcome:
    d.ok("pause", app, "--max", str(case.hold + 60))
    started = time.monotonic()
    errors: dict[str, int] = {}
    tasks = [asyncio.create_task(client(port, errors)) for _ in range(case.clients)]
    await asyncio.sleep(max(0.0, case.hold - 0.5 - (time.monotonic() - started)))
    hold = (await asyncio.to_thread(d.status, app))["hold"] or {}
    await asyncio.sleep(max(0.0, case.hold - (time.monotonic() - started)))
    await asyncio.to_thread(d.ok, "resume", app)
    waits = [w for w in await asyncio.gather(*tasks) if w is not None]
    return Outcome(case, len(waits), case.clients - len(waits), errors, hold.get("held"),
                   max(waits, default=0.0), statistics.median(waits) if waits else 0.0)


def run_cases(cases: list[Case]) -> list[Outcome]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    out: list[Outcome] = []
    with host_lock(), tempfile.TemporaryDirectory() as tmp:
        image = checkout_image("pause", "pause", Path(tmp) / "pause")
        d = Daemon(Path(tmp))
        d.start("--sandbox-image", image)
        try:
            for mode in dict.fromkeys(c.mode for c in cases):
                app, port = f"{PREFIX}-hold-{mode[:4]}", free_port()
                d.ok("run", app, "--image", "lbctl/demo:latest", "-p",
                     f"127.0.0.1:{port}:8080", "--replicas", "2", "--mode", mode, timeout=120)
                for case in (c for c in cases if c.mode == mode):
                    o = asyncio.run(measure(d, app, port, case))
                    print(f"{mode}: {case.clients} clients, {case.hold:g}s hold: {o.served} "
                          f"served, {o.failed} failed {o.errors or ''}, held {o.held}, waited "
                          f"max {o.wait_max:.1f}s, median {o.wait_p50:.1f}s", flush=True)
                    out.append(o)
                    time.sleep(3)  # TIME_WAIT and conntrack settle between cases
                d.ok("rm", app, timeout=120)
        finally:
            with contextlib.suppress(Exception):
                for a in d.api("GET", "/apps")["apps"]:
                    d.api("DELETE", f"/apps/{a['name']}")
            d.kill(signal.SIGTERM)
            cleanup_leftovers()
    return out


def table(outcomes: list[Outcome]) -> str:
    rows = ["| mode | clients at once | hold | served | failed | held in the queue | "
            "slowest / median wait |", "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        c = o.case
        failed = f"{o.failed}" + (f" ({', '.join(f'{k} {v}' for k, v in o.errors.items())})"
                                  if o.errors else "")
        rows.append(f"| {c.mode} | {c.clients} | {c.hold:g} s | {o.served} | {failed} | "
                    f"{'-' if o.held is None else o.held} | {o.wait_max:.1f} s / "
                    f"{o.wait_p50:.1f} s |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hold", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one short case per mode")
    args = p.parse_args()
    print(table(run_cases(QUICK if args.quick else CASES)))


if __name__ == "__main__":
    main()
