"""Run a little code inside another process's network namespace, from a worker thread.

Python 3.11 has no os.setns; libc's setns(2) through ctypes switches only the calling thread,
so callers run this in a thread of their own (asyncio.to_thread) and the event loop's thread
never leaves the daemon's namespace. A netlink socket belongs to the namespace it was created
in: create it inside, use it, close it, leave.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def inside(pid: int) -> Iterator[None]:
    """The calling thread in `pid`'s network namespace for the `with` body. Raises OSError
    when the process is gone or setns fails; never returns with the thread still inside."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into pid {pid}: {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc.setns(own, _CLONE_NEWNET) != 0:
                    raise SystemExit(f"cannot return to the daemon's network namespace: "
                                     f"{os.strerror(ctypes.get_errno())}")
        finally:
            os.close(target)
    finally:
        os.close(own)
