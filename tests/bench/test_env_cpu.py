"""Whose CPU a run counts (bench.env): the whole machine's busy time from /proc/stat, and the
processes of other users of the shared host, which a run leaves out. Real processes, no
engine: a busy child of this process is the run's, an orphaned one (another user's stand-in)
is not."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pytest

from bench.env import Proc, cpu_busy_seconds, cpu_snapshot, foreign_cpu_seconds

SPIN = "import time\nt = time.time()\nwhile time.time() - t < {secs}: pass\n"


def _pids_named(prefix: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith(prefix):
                        out.append(int(d))
            except OSError:
                pass
    return out


def test_per_core_busy_grows_with_a_busy_process() -> None:
    b0, t0 = cpu_busy_seconds(), time.monotonic()
    subprocess.run([sys.executable, "-c", SPIN.format(secs=0.5)], check=True)
    b1, dt = cpu_busy_seconds(), time.monotonic() - t0
    assert set(b0) == set(b1) and len(b0) == os.cpu_count()
    assert sum(b1[c] - b0[c] for c in b1) >= 0.3  # the spin's 0.5 s (ticks are 10 ms)
    assert all(b1[c] - b0[c] <= dt + 0.1 for c in b1)  # no core busier than the clock (+ ticks)


def test_an_orphan_is_foreign_and_our_children_and_kernel_threads_are_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", SPIN.format(secs=3)])
    # `sh -c 'X &'` exits at once: X is reparented away from this process, like a process
    # of another user's session (its output elsewhere, or run() would wait for it).
    spin = SPIN.format(secs=3)
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c '{spin}' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    orphan = int(out.stdout.strip())
    try:
        before = cpu_snapshot([])
        time.sleep(1.0)
        after = cpu_snapshot([])
        procs = {pid for pid, p in after.items() if p.foreign}
        assert orphan in procs and child.pid not in procs and os.getpid() not in procs
        # kernel threads do the network stack's softirq work (ksoftirqd): the run's
        assert not {2, *_pids_named("ksoftirqd/")} & procs
        # the orphan spun through the second: foreign CPU of the run (the total's arithmetic
        # is the next test's: other users' processes come and go meanwhile)
        # (a share of a shared, busy host: little, but not nothing)
        assert after[orphan].cpu - before[orphan].cpu >= 0.05 and after[orphan].foreign
    finally:
        child.kill()
        child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, 9)


def test_a_reaped_childs_life_before_the_run_is_not_counted() -> None:
    """A reaper's reaped children's time jumps by a child's whole life when it reaps it: only
    the part within the run counts, whoever reaps it (an orphan's reaper is init, not the
    parent it had), and a pid taken again by a new process is a new process."""
    before = {1: Proc(0, 500.0, True, 1), 10: Proc(1, 100.0, True, 5),
              11: Proc(10, 40.0, True, 6), 12: Proc(10, 30.0, False, 7),
              14: Proc(15, 7.0, True, 9), 15: Proc(1, 1.0, True, 8),
              20: Proc(1, 5.0, False, 2), 21: Proc(20, 3.0, True, 10), 30: Proc(1, 9.0, True, 3)}
    # 11 and 12 ended (1 s and 2 s more), 10 reaped them and used 0.5 s itself; 15 ended
    # (0.1 s more) and its orphan 14 (0.4 s more) went to init, which reaped both; 21 ended
    # and the run's 20 reaped it; 30 ended (init reaped it) and its pid is another process's
    # now (0.2 s); 13 is new (0.25 s)
    after = {1: Proc(0, 500.0 + 1.1 + 7.4 + 9.0, True, 1),
             10: Proc(1, 100.0 + 0.5 + 41.0 + 32.0, True, 5), 13: Proc(10, 0.25, True, 11),
             20: Proc(1, 9.0 + 3.5, False, 2), 30: Proc(1, 0.2, True, 12)}
    assert foreign_cpu_seconds(before, after) == pytest.approx(
        0.5 + 1.0 + 2.0 + 0.1 + 0.4 + 0.2 + 0.25)
    assert foreign_cpu_seconds(before, before) == 0.0
