"""A Debian machine of the tests' own with systemd as PID 1, to install lbctl's package on and
drive it with `systemctl` and `journalctl` as an operator would.

It is a container on the host's engine: a tiny root file system (a few /etc files and
symlinks into /usr), the host's /usr as the lower layer of an overlay (dpkg writes to the
upper layer, so the host's /usr stays untouched), the host's dpkg database the same way (the
package's dependencies are installed here), the host's cgroup tree, and these of its own:

- **PID namespace**: systemd runs only as PID 1. lbctl reaches a replica's listening socket
  with pidfd_open() of the PID the engine reports, which names a process only in the engine's
  PID namespace or an ancestor of it; no process in a child namespace (this machine's) can
  reach the host engine's containers that way. So the machine runs
- **its own Docker engine** (docker.service from the host's docker.io, started by this systemd,
  storage on a tmpfs, lbctl's images loaded from the host's engine), whose containers are the
  machine's processes, in
- **its own network namespace** (loopback only, no route out: the engine's bridge and
  lbctl's rules live in it, so nothing touches the host's iptables), with its own bpffs.

Traffic goes to the machine's 127.0.0.1 from the host through `nsenter --net` (`in_netns`).
Everything it makes (the container, its image, the overlay volumes and directories) goes in
`remove()`; the engine inside, its containers and lbctl's package go with the container.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import PREFIX
from harness.engine import docker

# Host /etc files the machine needs: users and groups (docker.socket's group, adduser),
# the dynamic loader's cache, the alternatives iptables resolves through, dpkg's and apt's
# configuration, Python's. No unit configuration: the host's enabled services (its dockerd,
# nginx, ...) must not start in the machine.
ETC_FILES = ("passwd", "group", "shadow", "gshadow", "nsswitch.conf", "ld.so.cache",
             "ld.so.conf", "ld.so.conf.d", "alternatives", "protocols", "services",
             "ethertypes", "login.defs", "adduser.conf", "deluser.conf", "dpkg", "apt",
             "default/useradd", "python3", "python3.11", "manpath.config")
# What runc and dockerd inside need, short of --privileged (which fails here: the host's
# bounding set lacks CAP_SYS_RESOURCE, and Docker 20.10 does not know CAP_BPF by name;
# CAP_SYS_ADMIN lets the machine's processes use bpf()).
CAPS = ("SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "MKNOD", "SYS_CHROOT", "SETFCAP", "NET_RAW",
        "IPC_LOCK", "SYS_NICE", "DAC_READ_SEARCH", "LINUX_IMMUTABLE", "SYS_RAWIO",
        "AUDIT_CONTROL", "SYS_BOOT")


class Machine:
    """One machine: `start()` boots it (systemd, then its Docker engine), `sh()` runs a
    command in it, `remove()` leaves nothing behind."""

    def __init__(self, tmp: Path, images: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.name = f"{PREFIX}-machine"
        self.images = images  # loaded from the host's engine into the machine's
        self.image = ""
        self.volumes: list[str] = []
        self.pid = 0  # the machine's PID 1, as the host sees it

    # ---- life cycle -----------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        self.image = _rootfs_image()
        args = ["run", "-d", "--name", self.name, "--hostname", "lbctl-machine",
                "--network", "none", "--label", f"lbctl.test={PREFIX}",
                "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                # /proc/sys writable: lbctl sets route_localnet on the engine's bridge
                "--security-opt", "systempaths=unconfined",
                "--device-cgroup-rule", "a *:* rwm",
                "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
                "--tmpfs", "/var/lib/docker", "--tmpfs", "/var/lib/containerd",
                "-e", "container=docker", "--stop-signal", "SIGRTMIN+3"]
        for cap in CAPS:
            args += ["--cap-add", cap]
        for lower, target in (("/usr", "/usr"), ("/var/lib/dpkg", "/var/lib/dpkg")):
            args += ["-v", f"{self._overlay(lower)}:{target}"]
        docker(*args, self.image, "/lib/systemd/systemd")
        self.pid = int(docker("inspect", "-f", "{{.State.Pid}}", self.name).strip())
        self.wait(lambda: self.sh("systemctl", "is-system-running", check=False).stdout.strip()
                  in ("running", "degraded"), timeout, "systemd to boot")
        # A container's sysfs is read-only; a host's is not (lbctl sets hairpin_mode on the
        # bridge ports of its containers).
        self.sh("mount", "-o", "remount,rw", "/sys")
        # The host's policy-rc.d (no service starts during apt-get install, without systemd)
        # is not a server's: removed in the machine's layer only.
        self.sh("rm", "-f", "/usr/sbin/policy-rc.d")
        # A host with lbctl's package installed (the README's way to run it; make test runs
        # there too) lends it to the machine through its /usr and dpkg database: purged in
        # the machine's layers only, so that each test installs it as on a new server.
        state = self.sh("dpkg-query", "-W", "-f", "${db:Status-Status}", "lbctl",
                        check=False).stdout.strip()
        # (config-files too: dpkg would not write a conffile it remembers the admin deleted)
        if state not in ("", "not-installed"):
            self.sh("dpkg", "--purge", "--force-all", "lbctl")
        self.sh("systemctl", "start", "docker.service")
        self.wait(lambda: self.sh("docker", "info", check=False).returncode == 0, timeout,
                  "the machine's Docker engine")
        if self.images:
            save = subprocess.Popen(["docker", "save", *self.images], stdout=subprocess.PIPE)
            subprocess.run(["docker", "exec", "-i", self.name, "docker", "load", "-q"],
                           stdin=save.stdout, check=True, capture_output=True, timeout=120)
            assert save.wait(60) == 0, "docker save failed"

    def remove(self) -> None:
        """The container (systemd shuts down: the engine inside stops its containers), its
        image, the overlay volumes and their directories."""
        with contextlib.suppress(RuntimeError):
            docker("stop", "-t", "20", self.name, check=False)
        docker("rm", "-f", self.name, check=False)
        for volume in self.volumes:
            docker("volume", "rm", "-f", volume, check=False)
        if self.image:
            docker("rmi", self.image, check=False)
        shutil.rmtree(self.tmp / "overlays", ignore_errors=True)

    def _overlay(self, lower: str) -> str:
        """A volume that mounts an overlay of the host's `lower` (read-only under it) with an
        upper layer of our own: mounted while the container runs, gone with the volume."""
        base = self.tmp / "overlays" / lower.strip("/").replace("/", "-")
        (base / "upper").mkdir(parents=True)
        (base / "work").mkdir()
        name = f"{self.name}-{base.name}"
        docker("volume", "create", "--label", f"lbctl.test={PREFIX}", "--driver", "local",
               "--opt", "type=overlay", "--opt", "device=overlay",
               "--opt", f"o=lowerdir={lower},upperdir={base / 'upper'},workdir={base / 'work'}",
               name)
        self.volumes.append(name)
        return name

    # ---- inside ---------------------------------------------------------------------
    def sh(self, *cmd: str, user: str | None = None, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`cmd` in the machine (as `user`); raises on failure when `check`."""
        argv = ["docker", "exec", "-i" if input is not None else "-t=false"]
        if user:
            argv += ["-u", user]
        r = subprocess.run([*argv, self.name, *cmd], capture_output=True, text=True,
                           timeout=timeout, input=input, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}: "
                                 f"{(r.stderr or r.stdout).strip()[-2000:]}")
        return r

    def copy_in(self, path: Path, dest: str) -> None:
        """A host file into the machine (`docker cp` would miss the tmpfs mounts)."""
        with open(path, "rb") as f:
            subprocess.run(["docker", "exec", "-i", self.name, "sh", "-c", 'cat >"$0"', dest],
                           stdin=f, check=True, capture_output=True, timeout=60)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        out = self.sh("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """`journalctl -o json ARGS` entries, oldest first."""
        out = self.sh("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def in_netns(self, *cmd: str) -> list[str]:
        """A command line that runs `cmd` (a host binary) in the machine's network
        namespace: how the host sends traffic to the machine's 127.0.0.1."""
        return ["nsenter", "-t", str(self.pid), "-n", *cmd]

    def wrk(self, port: int, seconds: int, connections: int = 16) -> subprocess.Popen[str]:
        """wrk against the machine's 127.0.0.1:port in the background, a new connection per
        request (read it with harness.wrk.finish)."""
        return subprocess.Popen(
            self.in_netns("wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "3s",
                          "-H", "Connection: close", f"http://127.0.0.1:{port}/"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def curl(self, port: int, timeout: float = 2) -> str:
        """GET / on the machine's 127.0.0.1:port (the demo answers with the replica)."""
        r = subprocess.run(self.in_netns("curl", "-sf", "--max-time", str(timeout),
                                         f"http://127.0.0.1:{port}/"),
                           capture_output=True, text=True, check=False, timeout=timeout + 5)
        return r.stdout.strip() if r.returncode == 0 else ""

    @staticmethod
    def wait(pred: Any, timeout: float, what: str, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                if pred():
                    return
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def machine(tmp: Path, images: tuple[str, ...] = ()) -> Iterator[Machine]:
    m = Machine(tmp, images)
    try:
        m.start()
        yield m
    finally:
        m.remove()


def _rootfs_image() -> str:
    """The machine's root file system as an image (`docker import`), tagged by its content:
    symlinks into /usr as on a merged-/usr Debian, the host's /etc files the machine needs
    (without the host's `lbctl` group: installing the package must create it), an empty
    machine-id (systemd makes one at boot), multi-user.target as the default."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("etc", "etc/default", "etc/systemd", "etc/systemd/system", "usr", "run",
                  "tmp", "proc", "sys", "dev", "root", "home", "var", "var/lib",
                  "var/lib/dpkg", "var/lib/apt", "var/lib/apt/lists", "var/lib/apt/lists/partial",
                  "var/cache", "var/cache/apt", "var/cache/apt/archives",
                  "var/cache/apt/archives/partial", "var/log", "var/log/apt", "var/tmp"):
            add_dir(d, 0o1777 if d in ("tmp", "var/tmp") else 0o755)
        for d in ("bin", "sbin", "lib", "lib64"):
            add_link(d, f"usr/{d}")
        add_link("etc/os-release", "../usr/lib/os-release")
        add_link("etc/systemd/system/default.target", "/lib/systemd/system/multi-user.target")
        add_file("etc/machine-id", b"")
        for name in ETC_FILES:
            src = Path("/etc") / name
            if not src.exists():
                continue
            if name == "apt":  # without PackageKit's hook (no PackageKit on the bus here)
                tar.add(str(src), "etc/apt",
                        filter=lambda t: None if "packagekit" in t.name else t)
                continue
            if name in ("group", "gshadow"):
                lines = [ln for ln in src.read_text().splitlines()
                         if not ln.startswith("lbctl:")]
                add_file(f"etc/{name}", ("\n".join(lines) + "\n").encode(),
                         src.stat().st_mode & 0o777)
            else:
                tar.add(str(src), f"etc/{name}")
    data = buf.getvalue()
    tag = f"lbctl-test/machine:{hashlib.sha256(data).hexdigest()[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run(["docker", "import", "--change", "LABEL lbctl.test=1", "-", tag],
                       input=data, check=True, capture_output=True)
    return tag


def assert_no_leftovers() -> None:
    """Nothing of any machine of this process is left on the host's engine (the caller holds
    the host lock, so no other run has a machine now)."""
    label = f"label=lbctl.test={PREFIX}"
    left = docker("ps", "-aq", "--filter", label).split()
    left += docker("volume", "ls", "-q", "--filter", label).split()
    left += docker("images", "-q", "lbctl-test/machine").split()
    assert not left, f"left behind: {left}"

