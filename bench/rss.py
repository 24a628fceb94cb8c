"""The lbctl daemon's memory over a whole bench run, not just the footprint phase.

The footprint phase measures a quiet daemon and a scale storm; the throughput, rollout and
convergence phases load it differently (tens of thousands of TIME_WAIT sockets in a sandbox,
drains, event storms), and an RSS target holds only if it holds through all of them. A
thread samples /proc/PID/status of whichever daemon the run has at the moment (Env starts
one lazily and may replace one that died) and keeps the largest VmRSS seen and each daemon's
last VmHWM: VmHWM is the kernel's own peak, so a spike between two samples still counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

INTERVAL_S = 0.5


def status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc/PID/status."""
    rss = hwm = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


@dataclass
class RunRss:
    """What the sampler saw; max_rss_mb/hwm_mb are 0 when no daemon ran."""

    samples: int = 0
    max_rss_mb: float = 0.0
    hwm_mb: float = 0.0  # the largest VmHWM of any daemon of the run
    daemons: int = 0  # daemon processes seen (1 unless one was restarted)
    seconds: float = 0.0
    # (seconds since start, VmRSS MB) every ~10 s, to see where it grows
    timeline: list[tuple[float, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["timeline"] = [[round(t, 1), round(mb, 1)] for t, mb in self.timeline]
        return d


class RssSampler:
    """Samples `pid_of()` (None: no daemon now) every INTERVAL_S in a thread, between
    start() and stop()."""

    def __init__(self, pid_of: Callable[[], int | None], interval: float = INTERVAL_S) -> None:
        self.pid_of = pid_of
        self.interval = interval
        self.result = RunRss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._hwm: dict[int, float] = {}
        self._t0 = 0.0

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> RunRss:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()  # the last word, in case the run was shorter than one interval
        r = self.result
        r.seconds = time.monotonic() - self._t0
        r.daemons = len(self._hwm)
        r.hwm_mb = max(self._hwm.values(), default=0.0)
        return r

    def sample(self) -> None:
        pid = self.pid_of()
        if pid is None:
            return
        try:
            rss, hwm = status_mb(pid)
        except (OSError, ValueError):  # it exited between pid_of() and the read
            return
        r = self.result
        r.samples += 1
        r.max_rss_mb = max(r.max_rss_mb, rss)
        self._hwm[pid] = max(self._hwm.get(pid, 0.0), hwm)
        t = time.monotonic() - self._t0
        if not r.timeline or t - r.timeline[-1][0] >= 10:
            r.timeline.append((t, rss))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
