"""Reading an app's counters (`steered` per slot, `reasons`) without the app's sync lock.

A scrape (`GET /metrics`, `GET /apps`) must never wait behind a sync, and a sync must never
wait behind a scrape, so these reads share nothing with a sync but two immutable values: the
pin directory and the replica -> slots view that each applied plan publishes.  Each read
opens the pinned map by its path and closes it again rather than using the plane's fds,
which an upgrade or a remove closes under it (a closed fd number is soon reused by another
object, and reading that would be wrong, not just fail).

A read racing with an upgrade may find the pins moving (the old directory removed, the new
one not yet renamed into place) and one racing with a remove finds nothing: both return None,
and the plane answers with what it returned last (monotonic.Monotonic).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import TypeVar

from lbctl.dataplane import bpfsys
from lbctl.dataplane.ebpf.table import REASONS

__all__ = ["reasons", "steered"]

T = TypeVar("T")


def steered(pin: pathlib.Path, view: Mapping[str, tuple[int, ...]]) -> dict[str, int] | None:
    """Replica -> new connections and flows steered to it (the sum over its slots and CPUs);
    None when the pins are not there right now."""
    return _read(pin / "steered", lambda fd: {
        name: sum(bpfsys.percpu_sum_u64(fd, s) for s in slots) for name, slots in view.items()
    })  # fmt: skip


def reasons(pin: pathlib.Path) -> dict[str, int] | None:
    """Reason -> count (table.REASONS); None when the pins are not there right now."""
    return _read(pin / "reasons", lambda fd: {
        r: bpfsys.percpu_sum_u64(fd, i) for i, r in enumerate(REASONS)
    })  # fmt: skip


def _read(path: pathlib.Path, read: Callable[[int], T]) -> T | None:
    try:
        fd = bpfsys.obj_get(str(path))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None  # moving (an upgrade) or gone (a remove)
        raise
    try:
        return read(fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
