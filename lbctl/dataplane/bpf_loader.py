"""Compile and load lbctl's SK_REUSEPORT program with bcc, pin it and its maps, and exit.

Run as `python -m lbctl.dataplane.bpf_loader --pin-dir DIR` (or `--check`).  This is a
separate, short-lived process on purpose: bcc maps LLVM and libclang, which leaves a process
at ~130 MB RSS for good, while the daemon must stay small.  The daemon only opens the pins
(lbctl.dataplane.bpfsys) and never imports bcc.

Pins written into DIR (created atomically: everything goes into a sibling temp dir that is
renamed to DIR at the end, so a half-written DIR never exists):
    prog_<tag>   the program (tag = version of the C source and its header, see source_tag())
    sockets wildcard groups selection config flows steered reasons cursor   its maps

On failure the process exits 1 with the reason on stderr; libbcc prints the verifier log to
stderr as well, and the daemon puts all of it in the exception it raises.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time

PROG_NAME = "lbctl_select"
PROG_TYPE_SK_REUSEPORT = 21  # bcc 0.26 has no constant for it
ATTACH_SELECT_OR_MIGRATE = 40  # BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: migration of queued conns
MAP_NAMES = ("sockets", "wildcard", "groups", "selection", "config", "flows", "steered",
             "reasons", "cursor", "overflow")
BPFFS = pathlib.Path("/sys/fs/bpf")
SOURCE_NAME = "lbctl_reuseport.c"
HEADER_NAME = "lbctl_shared.h"


def bpf_dir() -> pathlib.Path:
    """lbctl's bpf/ directory: next to the package (source tree or editable install), else the
    system data dir.  The shared header is always taken from here, also for a program built
    from $LBCTL_BPF_SRC (a test's variant of the program keeps the real sizes and layouts)."""
    here = pathlib.Path(__file__).resolve().parents[2] / "bpf"
    if (here / SOURCE_NAME).exists():
        return here
    return pathlib.Path("/usr/share/lbctl/bpf")


def source_path() -> pathlib.Path:
    """Where the C program lives: $LBCTL_BPF_SRC, else bpf_dir()."""
    env = os.environ.get("LBCTL_BPF_SRC")
    if env:
        return pathlib.Path(env)
    return bpf_dir() / SOURCE_NAME


def shipped(src: pathlib.Path | None = None) -> bool:
    """Is `src` (default: source_path()) the program shipped with this lbctl? Another one
    ($LBCTL_BPF_SRC: an older release's) may lack maps that came later."""
    return (src or source_path()).resolve() == (bpf_dir() / SOURCE_NAME).resolve()


def header_path() -> pathlib.Path:
    """The header both the program and lbctl.dataplane.ebpf.layout read."""
    return bpf_dir() / HEADER_NAME


def source_tag(src: pathlib.Path | None = None) -> str:
    """Version tag of the program: a hash of the C source and the shared header it is built
    with, so the daemon can tell whether the pinned program is the current one without
    compiling anything (a changed map size is a new version, like a changed line of C)."""
    digest = hashlib.sha256((src or source_path()).read_bytes())
    digest.update(header_path().read_bytes())
    return digest.hexdigest()[:16]


def is_bpffs_mounted(path: pathlib.Path = BPFFS) -> bool:
    with open("/proc/self/mounts") as f:
        return any(
            len(parts) > 2 and parts[1] == str(path) and parts[2] == "bpf"
            for parts in (line.split() for line in f)
        )


def ensure_bpffs() -> None:
    """Mount bpffs on /sys/fs/bpf when nothing is mounted there (pins need it)."""
    if is_bpffs_mounted():
        return
    BPFFS.mkdir(parents=True, exist_ok=True)
    import subprocess

    subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True, capture_output=True)


def load(src: pathlib.Path, pin_dir: pathlib.Path | None) -> dict[str, object]:
    """Compile + load (+ pin when pin_dir is given).  Returns facts for the caller."""
    import bcc  # only ever imported in this helper process

    from lbctl.dataplane import bpfsys

    t0 = time.monotonic()
    b = bcc.BPF(src_file=str(src).encode(), cflags=[f"-I{bpf_dir()}"])
    fn = b.load_func(PROG_NAME.encode(), PROG_TYPE_SK_REUSEPORT,
                     attach_type=ATTACH_SELECT_OR_MIGRATE)
    load_s = time.monotonic() - t0
    tag = source_tag(src)
    facts: dict[str, object] = {"tag": tag, "load_seconds": round(load_s, 3)}
    if pin_dir is None:
        return facts
    ensure_bpffs()
    pin_dir.parent.mkdir(parents=True, exist_ok=True)
    # bpffs refuses names containing '.' (EPERM), so no dot-file convention here.
    tmp = pin_dir.with_name(f"+tmp{os.getpid()}+{pin_dir.name}")
    tmp.mkdir()
    try:
        bpfsys.obj_pin(fn.fd, str(tmp / f"prog_{tag}"))
        for name in MAP_NAMES:
            fd = bcc.libbcc.lib.bpf_table_fd(b.module, name.encode())
            if fd < 0:
                # Another program than the one shipped ($LBCTL_BPF_SRC: an older release's)
                # may lack maps that came later (the flows' overflow); it is pinned with the
                # ones it has, as that release pinned it.
                if not shipped(src):
                    continue
                raise RuntimeError(f"map {name} missing from the compiled program")
            bpfsys.obj_pin(fd, str(tmp / name))
        # rename(2) onto an existing empty dir replaces it; a non-empty one fails (ENOTEMPTY),
        # which is what we want: never clobber a live app's pins from here.
        tmp.rename(pin_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # unlinking pins releases the objects
        raise
    facts["pin_dir"] = str(pin_dir)
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lbctl.dataplane.bpf_loader", description=__doc__)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--pin-dir", type=pathlib.Path, help="pin the program and maps here")
    g.add_argument("--check", action="store_true", help="compile and load, pin nothing")
    ap.add_argument("--src", type=pathlib.Path, default=None, help="C source (default: bundled)")
    args = ap.parse_args(argv)
    src = args.src or source_path()
    try:
        facts = load(src, None if args.check else args.pin_dir)
    except Exception as e:  # one line for the daemon; the verifier log is already on stderr
        print(f"lbctl bpf loader: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
