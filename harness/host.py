"""The one host that tests, benchmarks and other engineers' runs share: the lock that keeps
two lbctl daemons off the same LBCTL- chains, free ports, and the kernel's iptables state.

Anything that starts a daemon or syncs rules holds `host_lock()` for as long as it does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
from collections.abc import Iterator

E2E_LOCK = "/run/lock/lbctl-e2e.lock"
# flock belongs to an open file: a second open in the same process would wait for itself.
_depth = 0


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """One lbctl daemon owns the host's LBCTL- chains: every test (and benchmark) that starts
    a daemon or syncs rules holds this lock, so two runs on one machine wait for each other
    instead of wiping each other's rules."""
    global _depth
    if _depth:  # held by this process already (a module fixture around a test's daemon)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    os.makedirs(os.path.dirname(E2E_LOCK), exist_ok=True)
    with open(E2E_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _depth = 1
        try:
            yield
        finally:
            _depth = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iptables_save() -> str:
    """Every table, without counters and comment lines (timestamps)."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#")) + "\n"
