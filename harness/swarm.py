"""A Docker engine of the test's own, as a single-node swarm, so that `docker swarm init` and
`docker stack deploy` leave the host's engine as it was.

The engine is a second `dockerd` in a network namespace of its own (`ip netns`), entered with
`nsenter --net` only: its bridges, iptables rules, `docker_gwbridge` and the swarm's ingress
live in that namespace and go with it, while it shares the host's mount namespace, so the
containerd it starts (its own, under its --exec-root) sees the root filesystems it mounts. It
has its own --data-root, --exec-root, unix socket, pidfile and containerd namespaces. The
namespace has an address to advertise (a veth pair inside it) and no default route: the
engine's registry look-ups fail at once instead of timing out (no registry is reachable).

Swarm's routing mesh needs IPVS, which this kernel lacks (HOST.md): a service's replicas run,
but a port published through the mesh does not answer. Tests check the replicas and the
service's spec, not traffic through the mesh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness import PREFIX

ADVERTISE = "10.203.77.1"  # the namespace's own address; routed nowhere


class SwarmEngine:
    """`start()` brings the engine up and makes it a swarm manager; `stop()` removes all of it
    (the process, its containerd, its mounts and directories, the namespace)."""

    def __init__(self) -> None:
        self.netns = f"{PREFIX}-swarm"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-swarm-", dir="/tmp"))
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.log = self.dir / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 120) -> str:
        """The docker CLI against this engine; stdout, or RuntimeError with its stderr."""
        r = subprocess.run(["docker", "-H", self.host, *args], input=input,
                           capture_output=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.decode().strip()}")
        return r.stdout.decode()

    def start(self) -> None:
        ip = ["ip", "-n", self.netns]
        for cmd in (["ip", "netns", "add", self.netns], [*ip, "link", "set", "lo", "up"],
                    [*ip, "link", "add", "sw0", "type", "veth", "peer", "name", "sw1"],
                    [*ip, "addr", "add", f"{ADVERTISE}/30", "dev", "sw0"],
                    [*ip, "link", "set", "sw0", "up"], [*ip, "link", "set", "sw1", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        (self.dir / "data").mkdir()
        (self.dir / "exec").mkdir()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "dockerd",
                 "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
                 "-H", self.host, "--pidfile", str(self.dir / "docker.pid"),
                 "--containerd-namespace", f"{PREFIX}-swarm",
                 "--containerd-plugins-namespace", f"{PREFIX}-swarm-plugins"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test's dockerd did not start: "
                                   + self.log.read_text()[-2000:])
            time.sleep(0.3)
        self.docker("swarm", "init", "--advertise-addr", ADVERTISE)

    def _answers(self) -> bool:
        r = subprocess.run(["docker", "-H", self.host, "version", "--format",
                            "{{.Server.Version}}"], capture_output=True, timeout=10, check=False)
        return r.returncode == 0

    def load_image(self, image: str) -> None:
        """The host engine's `image`, copied in (`docker save | docker load`): no registry."""
        saved = subprocess.run(["docker", "save", image], capture_output=True, check=True,
                               timeout=120).stdout
        self.docker("load", input=saved)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.docker("swarm", "leave", "--force", timeout=30)
            # dockerd stops its containers and its containerd on SIGTERM.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # The engine's namespaces of overlay networks are bind mounts under its exec root,
        # and a killed engine can leave its overlay mounts: unmount whatever is under its dir.
        prefix = str(self.dir) + "/"
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for m in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", m], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What stop() should have removed and did not."""
        left = []
        if self.dir.exists():
            left.append(str(self.dir))
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if any(line.split()[0] == self.netns for line in netns.splitlines() if line.strip()):
            left.append(f"netns {self.netns}")
        with open("/proc/self/mountinfo") as f:
            left += [line.split()[4] for line in f if str(self.dir) in line]
        return left
