"""One daemon per state dir and pin root: the lock and how its holder is named (a second
daemon against the real one: tests/e2e/test_single_daemon.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbctl import instance_lock
from lbctl.instance_lock import AlreadyRunning

HOLD = ("import sys, time; from pathlib import Path; from lbctl import instance_lock; "
        "instance_lock.hold(Path(sys.argv[1]), 'x', '--x'); print('held', flush=True); "
        "time.sleep(60)")


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    path = tmp_path / "state" / "daemon.lock"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "held\n"
        with pytest.raises(AlreadyRunning) as e:
            instance_lock.hold(path, f"state dir {path.parent}", "--state-dir")
        assert str(e.value) == (f"another lbctl daemon (pid {first.pid}) runs on state dir "
                                f"{path.parent}: stop it first, or give this one its own "
                                "--state-dir")
        assert "\n" not in str(e.value)
    finally:
        first.kill()
        first.wait()
    # The kernel dropped the lock with its holder: no stale lock.
    fd = instance_lock.hold(path, "state dir", "--state-dir")
    assert path.read_text() == ""  # nothing written: the kernel names the holder
    os.close(fd)


def test_the_pin_root_lock_lives_outside_bpffs_named_after_the_root(tmp_path: Path) -> None:
    a = instance_lock.pin_root_lock(tmp_path, Path("/sys/fs/bpf/lbctl"))
    assert a.parent == tmp_path and a == instance_lock.pin_root_lock(
        tmp_path, Path("/sys/fs/bpf/lbctl/"))
    assert a != instance_lock.pin_root_lock(tmp_path, Path("/sys/fs/bpf/lbctl-other"))


def test_holder_reads_the_kernel_s_record(tmp_path: Path) -> None:
    f = tmp_path / "lock"
    f.write_text("")

    fd = os.open(f, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        locks = tmp_path / "locks"
        locks.write_text(f"1: POSIX  ADVISORY  WRITE 11 {key} 0 EOF\n"
                         f"2: FLOCK  ADVISORY  WRITE 4242 {key} 0 EOF\n"
                         f"2: -> FLOCK  ADVISORY  WRITE 99 {key} 0 EOF\n")
        assert instance_lock.holder(fd, locks) == 4242
        locks.write_text("1: FLOCK  ADVISORY  WRITE 5 00:01:2 0 EOF\n")
        assert instance_lock.holder(fd, locks) is None
    finally:
        os.close(fd)
