"""An app's program and maps live as pins in bpffs, under <pin_root>/<app>/, not in the daemon.

Why pins: the data plane must outlive the daemon.  The attached program keeps steering while
no daemon runs, and a restarted daemon reopens the same maps (and their counters) by path.
Why a loader subprocess: compiling with bcc maps LLVM into the process for good (~130 MB
RSS); the daemon only ever opens what the short-lived lbctl.dataplane.bpf_loader pinned.

This module owns everything about those directories: naming them (bpffs refuses dots),
creating them through the loader, opening them, replacing one program version by another
through a sibling `<app>+next` directory, finishing an upgrade a dead daemon left half done,
and removing them.  It knows nothing about replicas or slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from lbctl.dataplane import bpf_loader, bpfsys
from lbctl.dataplane.ebpf import flows
from lbctl.dataplane.ebpf.errors import EbpfError
from lbctl.dataplane.ebpf.table import MAX_SLOTS, REASONS
from lbctl.settings import EbpfSettings

__all__ = [
    "Maps",
    "carry_counters",
    "decode",
    "encode",
    "next_dir",
    "open_pins",
    "pin_dir",
    "pinned_apps",
    "pinned_tag",
    "promote",
    "recover",
    "remove_pins",
    "run_loader",
]


@dataclass
class Maps:
    """The daemon's open fds of one pinned program version: the program and its maps by
    name (bpf_loader.MAP_NAMES).  `pin_dir` follows the pins when an upgrade renames them."""

    pin_dir: pathlib.Path
    tag: str
    prog: int
    fds: dict[str, int]

    def close(self) -> None:
        for fd in [self.prog, *self.fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)


def encode(app: str) -> str:
    # bpffs refuses '.' in names; '~' cannot occur in an app name, so this is reversible.
    return app.replace(".", "~")


def decode(name: str) -> str:
    return name.replace("~", ".")


def pin_dir(root: pathlib.Path, app: str) -> pathlib.Path:
    """Where the app's live program and maps are pinned."""
    return root / encode(app)


def next_dir(root: pathlib.Path, app: str) -> pathlib.Path:
    """Where a new program version is pinned while the old one still serves.  '+' cannot
    occur in an app name, so pinned_apps() can tell these from apps."""
    return root / f"{encode(app)}+next"


def pinned_apps(root: pathlib.Path) -> list[str]:
    """Apps with pinned objects under root (what a restarted daemon finds)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(decode(n) for n in names if "+" not in n)


def pinned_tag(pin: pathlib.Path) -> str | None:
    """Version tag of the program pinned in `pin`; the tag is in the pin's name, so no bpf
    call is needed to tell whether the pinned program is the current source."""
    try:
        progs = [n for n in os.listdir(pin) if n.startswith("prog_")]
    except FileNotFoundError:
        return None
    return progs[0][5:] if progs else None


def open_pins(pin: pathlib.Path) -> Maps:
    """Open the program and maps pinned in `pin`.  A program of an older version may lack maps
    that the current one has (the flow map came with UDP): those are left out of Maps.fds, and
    the daemon only uses such a version to carry its counters into the current one."""
    tag = pinned_tag(pin)
    if tag is None:
        raise EbpfError(f"{pin} holds no program pin: remove the directory and retry")
    fds: dict[str, int] = {}
    try:
        prog = bpfsys.obj_get(str(pin / f"prog_{tag}"))
        fds["prog"] = prog
        current = tag == bpf_loader.source_tag() and bpf_loader.shipped()
        for name in bpf_loader.MAP_NAMES:
            if current or (pin / name).exists():
                fds[name] = bpfsys.obj_get(str(pin / name))
    except OSError as e:
        for fd in fds.values():
            os.close(fd)
        raise EbpfError(f"cannot open the pinned eBPF objects in {pin}: {e}") from e
    del fds["prog"]
    return Maps(pin, tag, prog, fds)


async def run_loader(
    args: list[str], timeout: float = EbpfSettings.loader_timeout
) -> dict[str, Any]:
    """Run the loader process with `args` (--pin-dir DIR or --check); its facts on success,
    EbpfError carrying its stderr (the verifier log) otherwise, or when it takes longer than
    `timeout` seconds (EbpfSettings.loader_timeout)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lbctl.dataplane.bpf_loader", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EbpfError(f"eBPF loader timed out after {timeout:g}s") from None
    text = err.decode(errors="replace").strip()
    if proc.returncode != 0:
        last = text.splitlines()[-1] if text else f"exit code {proc.returncode}"
        raise EbpfError(f"loading the eBPF program failed: {last}", text)
    try:
        facts: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EbpfError("eBPF loader printed no result", text) from None
    return facts


def recover(pin: pathlib.Path, nxt: pathlib.Path) -> None:
    """A daemon that died mid-upgrade may have removed the old pins but not yet renamed
    the new ones into place; finish that.  Otherwise a leftover +next is dropped."""
    if nxt.exists():
        if pin.exists():
            shutil.rmtree(nxt, ignore_errors=True)
        else:
            nxt.rename(pin)


def promote(nxt: pathlib.Path, pin: pathlib.Path) -> None:
    """The last step of an upgrade, once the new program is attached: drop the old pins and
    move the new ones into their place.  A crash between the two steps is what recover()
    finishes."""
    shutil.rmtree(pin, ignore_errors=True)
    nxt.rename(pin)


def carry_counters(old: Maps, new: Maps) -> None:
    """Copy the replaced program's counters into the new maps so they stay monotonic, and its
    UDP flows so that they stay on their replicas.  Connections counted by the old program
    between this copy and the attach (microseconds) are lost from the counters, not from
    service; a flow first seen in that window is hashed again by the new program.  Slots
    beyond an older program's smaller maps read as 0."""
    flows.copy(old.fds, new.fds)
    for slot in range(MAX_SLOTS):
        total = bpfsys.percpu_sum_u64(old.fds["steered"], slot)
        if total:
            bpfsys.percpu_set_u64(new.fds["steered"], slot, total)
    for i in range(len(REASONS)):
        total = bpfsys.percpu_sum_u64(old.fds["reasons"], i)
        if total:
            bpfsys.percpu_set_u64(new.fds["reasons"], i, total)


def remove_pins(root: pathlib.Path, app: str) -> None:
    """Unpin everything of the app (the live and any half-loaded next version); the root
    goes too once no app is left.  Unlinking a pin drops its reference: the objects are
    freed once no fd and no socket group holds them."""
    for d in (pin_dir(root, app), next_dir(root, app)):
        shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # only when no app is left
