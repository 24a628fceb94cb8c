"""wrk, the load generator of the benchmarks and of the tests that need more load than
harness.traffic's threads make: bounded runs (pinned to one CPU for the benchmarks, in the
background for the tests) and the one parser of its report, so both read wrk the same way.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONNECTIONS = 64
TIMEOUT_S = 5  # a request unanswered for this long counts as a `timeout` error
WRK_CPU = "1"  # wrk gets CPU 1 to itself as far as taskset can say so; the rest floats

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0  # the slowest request (a traffic hold shows here)
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    non2xx: int = 0

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non2xx

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(out: str) -> WrkResult:
    """Parse wrk 4.x output (with --latency)."""
    r = WrkResult()
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out):
        r.requests = int(m[1])
        r.seconds = _ms(m[2], m[3]) / 1e3
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        r.rps = float(m[1])
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s*{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
            setattr(r, attr, _ms(m[1], m[2]))
    # Thread Stats' Latency line: avg, stdev, max, +/- stdev.
    if m := re.search(r"^[ \t]*Latency[ \t]+\S+[ \t]+\S+[ \t]+([\d.]+)(us|ms|s|m)[ \t]", out, re.M):
        r.max_ms = _ms(m[1], m[2])
    if m := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        r.connect, r.read, r.write, r.timeout = (int(m[i]) for i in range(1, 5))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        r.non2xx = int(m[1])
    return r


def command(url: str, seconds: float, close: bool, connections: int = CONNECTIONS,
            script: Path | None = None, netns: str | None = None) -> list[str]:
    """wrk's command line; `netns`: run it in that network namespace (a remote client,
    harness.remote), still pinned to WRK_CPU."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", f"{TIMEOUT_S}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", WRK_CPU, *cmd]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return cmd


def start(url: str, seconds: float, close: bool, connections: int = CONNECTIONS,
          script: Path | None = None, netns: str | None = None) -> subprocess.Popen[str]:
    """wrk in the background; `seconds` bounds it, and SIGINT ends it sooner (wrk then prints
    its report as usual: what bench.rollout does once the rollout it measures is over)."""
    return subprocess.Popen(command(url, seconds, close, connections, script, netns),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], seconds: float) -> WrkResult:
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.strip()[-300:]}")
    return parse(out)


def run(url: str, seconds: float, close: bool, connections: int = CONNECTIONS,
        netns: str | None = None) -> WrkResult:
    return finish(start(url, seconds, close, connections, netns=netns), seconds)


class Wrk:
    """A bounded wrk run in the background for the tests (new connection per request by
    default; no CPU pinning, a shorter request timeout than the benchmarks')."""

    def __init__(self, url: str, seconds: int, connections: int = 16, close: bool = True,
                 timeout: int = 3) -> None:
        """`timeout`: seconds a request may take before wrk counts it a `timeout` error
        (longer than a traffic hold, for the tests that hold)."""
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout}s",
               "--latency"]
        if close:
            cmd += ["-H", "Connection: close"]
        self.proc = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, text=True)
        self.output = ""

    def result(self, linger: float | None = 3.0) -> dict[str, Any]:
        """wrk's counts as a dict (requests, connect/read/write/timeout, non2xx, failed).
        The load goes on `linger` seconds more (what follows the test's last step is measured
        too), then SIGINT ends it, if `seconds` did not: a bound, not a duration to sit out
        (wrk prints its report either way). None: its whole `seconds`."""
        try:
            self.output, _ = self.proc.communicate(timeout=linger)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            self.output, _ = self.proc.communicate(timeout=120)
        return parse(self.output).to_json()
