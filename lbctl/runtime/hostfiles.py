"""The host's files as the engine sees them when it mounts a bind source: each component of a
path, from `/` down, looked up (never followed) in the engine's own mount namespace.

Why not the daemon's own view: under its systemd unit the daemon has a mount namespace of
its own (`ProtectHome=yes` hides /home, `PrivateTmp=yes` gives it another /tmp,
`ProtectSystem=strict` remounts the rest read-only), so its `realpath` of a member's
`/home/alice/conf` is not the directory the engine will mount. The engine resolves a bind
source in its own namespace, so that is where it is judged: through `/proc/PID/root` of the
engine's process, whose pid the kernel gives as the peer of the engine's Unix socket
(SO_PEERCRED: dockerd, or Podman's API service); for an engine reached over TCP, or a peer
whose root cannot be opened, PID 1's (the host's init), where the engine runs on a normal
host. Opening `/proc/PID/root` needs what the unit grants the daemon (CAP_SYS_PTRACE);
without it the walk fails and a member's bind mount is refused, never judged blind.

Each component is opened with O_PATH | O_NOFOLLOW relative to the one before, so what is
checked is what is walked: a symlink is reported, not followed, and `..` never appears (the
policy refuses it before a walk). Blocking calls (a hung NFS mount) run on a thread with a
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import struct
from collections.abc import Callable
from urllib.parse import urlparse

from lbctl.model.host import HostFacts
from lbctl.model.runtime import PathEntry

_ACL = "system.posix_acl_access"


class HostFilesError(OSError):
    """The engine's view of the host's files cannot be read."""


def engine_pid(url: str) -> int | None:
    """The pid of the process serving the engine's Unix socket (None: not a Unix socket, or
    it does not answer)."""
    u = urlparse(url)
    if u.scheme != "unix":
        return None
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2.0)
        try:
            s.connect(u.path)
            raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return None
    pid = int(struct.unpack("3i", raw)[0])
    return pid or None


class HostFiles:
    """`walk(path)`: the components of `path` as the engine's mount namespace has them."""

    def __init__(self, engine_url: str, timeout: float = 5.0,
                 pid: Callable[[], int | None] | None = None) -> None:
        """`pid`: the process whose mount namespace is the engine's (default: the peer of
        the engine's socket, engine_pid)."""
        self.engine_url = engine_url
        self.timeout = timeout
        self.pid = pid or (lambda: engine_pid(engine_url))

    async def walk(self, path: str) -> list[PathEntry]:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.walk_now, path), self.timeout)
        except TimeoutError:
            raise HostFilesError(f"looking up {path} took longer than {self.timeout:g}s") \
                from None

    def walk_now(self, path: str) -> list[PathEntry]:
        parts = [p for p in path.split("/") if p]
        if not path.startswith("/") or any(p in (".", "..") for p in parts):
            raise HostFilesError(f"{path!r} is not an absolute path without . or ..")
        root = self._open_root()
        fds = [root]
        try:
            entries = [_entry("/", root)]
            here = ""
            for part in parts:
                here += "/" + part
                try:
                    fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1])
                except FileNotFoundError:
                    entries.append(PathEntry(here, "missing"))
                    break
                except NotADirectoryError:
                    break  # the entry before is a file: already reported as one
                fds.append(fd)
                entries.append(_entry(here, fd))
                if entries[-1].kind != "dir":
                    break
            return entries
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _open_root(self) -> int:
        tried = []
        for pid in (self.pid(), 1):
            if pid is None:
                continue
            try:
                return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                tried.append(f"/proc/{pid}/root: {e.strerror}")
        raise HostFilesError("cannot see the engine's mount namespace (" + "; ".join(tried)
                             + ")")


def _entry(path: str, fd: int) -> PathEntry:
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    acl = False
    if kind in ("dir", "file"):
        # An O_PATH descriptor takes no xattr call; its /proc/self/fd link leads to the file.
        with contextlib.suppress(OSError):
            acl = len(os.getxattr(f"/proc/self/fd/{fd}", _ACL)) > 0
    return PathEntry(path, kind, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), acl)


def read_host_facts() -> HostFacts:
    """kernel.pid_max, MemTotal and fs.nr_open of this host (a default where one cannot be
    read)."""
    d = HostFacts()

    def number(path: str, default: int) -> int:
        try:
            with open(path) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return default

    mem = d.mem_total
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return HostFacts(number("/proc/sys/kernel/pid_max", d.pid_max), mem,
                     number("/proc/sys/fs/nr_open", d.nr_open))
