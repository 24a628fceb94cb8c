"""One daemon per state dir and per bpf pin root.

Two daemons on one state dir would both write its state file, and the second would take the
first's control socket away (it unlinks a socket path in use: `Api.start`); two on one pin
root would rewrite each other's eBPF maps. So the daemon holds an exclusive flock on a file
in its state dir and on one for its pin root before it touches anything, for its whole life
(the kernel drops a lock with its holder, so a killed daemon leaves none behind), and a
second one stops at once with one line naming the first.

The pin root's lock file cannot live in the pin root: bpffs holds pins and directories only,
and the data plane removes the root with its last app. It lives in the lock dir (/run/lock),
named after the root's path. The holder's pid comes from /proc/locks (the kernel's own
record), so a stale pid can never be shown.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")


class AlreadyRunning(RuntimeError):
    """Another daemon holds the lock; str() is the one line for the user."""


def state_dir_lock(state_dir: Path) -> Path:
    return state_dir / "daemon.lock"


def pin_root_lock(lock_dir: Path, pin_root: Path) -> Path:
    digest = hashlib.sha256(str(pin_root.resolve()).encode()).hexdigest()[:16]
    return lock_dir / f"lbctl-pins-{digest}.lock"


def hold(path: Path, what: str, flag: str) -> int:
    """Lock `path` (created when missing) for this process; returns the fd to keep open.
    Raises AlreadyRunning naming the holder: "`what` is held by ... (`flag` to use
    another)"."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder(fd)
        os.close(fd)
        who = f"pid {pid}" if pid is not None else "a process that /proc/locks does not name"
        raise AlreadyRunning(f"another lbctl daemon ({who}) runs on {what}: stop it first, "
                             f"or give this one its own {flag}") from None
    except BaseException:
        os.close(fd)
        raise
    # Nothing is written in it: a daemon that stops at once (a damaged state file) leaves the
    # state dir exactly as it found it, and the holder's pid is the kernel's to tell.
    return fd


def holder(fd: int, proc_locks: Path = PROC_LOCKS) -> int | None:
    """The pid holding a flock on the file open at `fd`, from /proc/locks."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = proc_locks.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 00:28:5678 0 EOF" (a blocked waiter: "1: -> ...")
        fields = line.split()
        if "->" in fields or "FLOCK" not in fields or key not in fields:
            continue
        i = fields.index(key)
        if fields[i - 1].isdigit():
            return int(fields[i - 1])
    return None
