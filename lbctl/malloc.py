"""glibc malloc tuned for a daemon whose work comes in bursts, much of it in worker threads.

Why: glibc gives every thread that allocates its own arena (up to 8 per core) and returns an
arena's freed memory to the kernel only when its top is free. The daemon's blocking work
(sock_diag probes, conntrack clean-up, eBPF map updates) runs in asyncio's worker threads, so
a burst there (a drained replica's conntrack dump) left tens of megabytes in a thread's
arena for the rest of the daemon's life: RSS stayed at the high-water mark. Two arenas (the
main one and one the workers share) and a trim after each burst keep RSS near what is live.

Without glibc (musl) these are no-ops: its allocator has neither knob.
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # mallopt parameter, glibc's malloc.h
ARENAS = 2

try:
    _libc = ctypes.CDLL(None)
    _mallopt = _libc.mallopt
    _malloc_trim = _libc.malloc_trim
    GLIBC = True
except (OSError, AttributeError):
    GLIBC = False


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap malloc arenas at `n`. Only arenas created later obey, so call this before the
    first thread starts (MALLOC_ARENA_MAX in the environment does the same from exec)."""
    return GLIBC and bool(_mallopt(M_ARENA_MAX, n))


def trim() -> bool:
    """Give the free pages of every arena back to the kernel (malloc_trim(0) also releases
    free pages inside a heap, not only at its top). Costs a walk of the free lists: cheap at
    the daemon's size, so it is called after bursts and periodically."""
    return GLIBC and bool(_malloc_trim(0))
