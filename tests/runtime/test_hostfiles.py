"""The host's files as the engine sees them (lbctl.runtime.hostfiles), on the real kernel: a
path is looked up in the mount namespace of the engine's process, not the daemon's (under
its unit, /home and /tmp are others), component by component, and a symlink is reported,
never followed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import PREFIX
from lbctl.runtime.hostfiles import HostFiles, HostFilesError, engine_pid, read_host_facts

pytestmark = pytest.mark.kernel


@pytest.fixture
def other_namespace(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A process in a mount namespace of its own, where a tmpfs on `tmp_path/mnt` holds
    `seen-there` (a directory this process's namespace does not have): as the engine's
    /tmp is not the daemon's under PrivateTmp=yes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs {PREFIX} {mnt} && mkdir {mnt}/seen-there && "
              f"ln -s / {mnt}/seen-there/escape && echo ready && exec sleep 60")
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        yield p.pid, mnt
    finally:
        p.kill()
        p.wait()


def test_a_path_is_looked_up_where_the_engine_lives(other_namespace: tuple[int, Path]) -> None:
    pid, mnt = other_namespace
    there = HostFiles("tcp://nowhere", pid=lambda: pid)
    here = HostFiles("tcp://nowhere", pid=lambda: os.getpid())
    walked = there.walk_now(f"{mnt}/seen-there")
    assert [(e.path, e.kind) for e in walked][-2:] == [(str(mnt), "dir"),
                                                      (f"{mnt}/seen-there", "dir")]
    assert walked[-1].uid == 0 and walked[-1].mode == 0o755
    assert here.walk_now(f"{mnt}/seen-there")[-1].kind == "missing"
    # A symlink is the walk's last entry, reported as one, never followed.
    escape = there.walk_now(f"{mnt}/seen-there/escape/etc")
    assert (escape[-1].path, escape[-1].kind) == (f"{mnt}/seen-there/escape", "symlink")


def test_the_engines_process_is_the_peer_of_its_socket() -> None:
    pid = engine_pid("unix:///var/run/docker.sock")
    assert pid is not None and Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
    assert engine_pid("tcp://127.0.0.1:2375") is None
    assert engine_pid("unix:///nonexistent.sock") is None
    walked = HostFiles("unix:///var/run/docker.sock").walk_now("/etc/hostname")
    assert [e.path for e in walked] == ["/", "/etc", "/etc/hostname"]


async def test_what_cannot_be_walked_is_an_error() -> None:
    files = HostFiles("tcp://nowhere", pid=lambda: os.getpid())
    for bad in ("etc", "/srv/../etc", "/srv/./x"):
        with pytest.raises(HostFilesError):
            await files.walk(bad)
    assert (await files.walk("/"))[0].kind == "dir"


def test_the_hosts_numbers() -> None:
    facts = read_host_facts()
    assert facts.pid_max == int(Path("/proc/sys/kernel/pid_max").read_text())
    assert facts.nr_open == int(Path("/proc/sys/fs/nr_open").read_text())
    assert facts.mem_total > 1 << 30
