"""Clients that are not this process on 127.0.0.1: a "remote host" in a network namespace of
the test's own, containers on the engine's bridge, and a container's own namespace.

- RemoteHost (harness.remote, shared with the benchmarks): a namespace joined to the host by
  a veth pair, 10.x (and fd..) addresses on both ends and a default route through the host:
  to lbctl it is another machine on a directly connected network, reaching the host's
  address on that link.
- source_image(): the demo and client images built from this checkout's sources under a tag
  of their own (`lbctl/demo:src-<hash>`, `lbctl/client:src-<hash>`, labelled lbctl.test=1),
  so a test never depends on what another checkout last tagged `latest` in the shared engine.
- ns_requests() / container_requests(): N requests, each on a new socket (a new connection
  or UDP flow for the data plane), answered names counted.

Every namespace, link and container made here is removed on exit, even when a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from harness import ROOT
from harness.remote import RemoteHost as RemoteHost  # the e2e tests import them from here
from harness.remote import remote_host as remote_host

IMAGES = {
    # kind -> (source dir, C file, binary name in the image)
    "demo": ("images/demo", "httpd.c", "httpd"),
    "client": ("images/client", "client.c", "client"),
}


def _sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def source_image(kind: str, cli: str = "docker") -> str:
    """`lbctl/<kind>:src-<hash of its sources>`, built from this checkout if the engine does
    not have it yet (Podman gets Docker's build through `docker save | podman load`)."""
    directory, source, binary = IMAGES[kind]
    src = ROOT / directory
    digest = hashlib.sha256((src / source).read_bytes() + (src / "Dockerfile").read_bytes())
    tag = f"lbctl/{kind}:src-{digest.hexdigest()[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                      check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = Path(tmp)
            (ctx / "out").mkdir()
            _sh("gcc", "-static", "-O2", "-s", "-o", str(ctx / "out" / binary),
                str(src / source))
            shutil.copy(src / "Dockerfile", ctx / "Dockerfile")
            r = subprocess.run(["docker", "build", "-q", "--label", "lbctl.test=1", "-t", tag,
                                str(ctx)], capture_output=True, text=True, check=False,
                               env={**os.environ, "DOCKER_BUILDKIT": "0"})
            if r.returncode != 0:
                raise RuntimeError(f"building {tag}: {r.stderr.strip()}")
    if cli == "podman" and subprocess.run(["podman", "image", "inspect", tag],
                                          capture_output=True, check=False).returncode != 0:
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        subprocess.run(["podman", "load", "-q"], stdin=save.stdout, check=True,
                       capture_output=True)
        save.wait()
    return tag


# Runs in a namespace: COUNT requests, each on a new socket, answers' first words counted.
_CLIENT = r"""
import json, socket, sys, collections
proto, host = sys.argv[1], sys.argv[2]
port, count, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
seen = collections.Counter()
for i in range(count):
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: lbctl\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError("bad answer " + repr(head[:40]))
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(b"lbctl-client %d\n" % i, (host, port))
                body = s.recv(4096)
        words = body.decode().split()
        seen[words[0] if words else "ERR empty"] += 1
    except OSError as e:
        seen["ERR " + type(e).__name__] += 1
print(json.dumps(seen))
"""


def ns_requests(r: RemoteHost, proto: str, host: str, port: int, count: int,
                timeout: float = 2.0) -> Counter[str]:
    """`count` requests from the remote host; answer -> how many (errors as "ERR <kind>")."""
    out = r.run(sys.executable, "-c", _CLIENT, proto, host, str(port), str(count),
                str(timeout))
    if out.returncode != 0:
        raise RuntimeError(f"client in {r.ns} failed: {out.stderr.strip()[-500:]}")
    return Counter(json.loads(out.stdout))


def local_requests(proto: str, host: str, port: int, count: int,
                   timeout: float = 2.0) -> Counter[str]:
    """The same from this host's own network namespace."""
    out = subprocess.run([sys.executable, "-c", _CLIENT, proto, host, str(port), str(count),
                          str(timeout)], capture_output=True, text=True, timeout=120,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr.strip()[-500:]}")
    return Counter(json.loads(out.stdout))


def container_requests(image: str, proto: str, host: str, port: int, count: int, *,
                       network: str | None = None, timeout_ms: int = 2000,
                       cli: str = "docker") -> Counter[str]:
    """`count` requests from a new container of lbctl/client (on the engine's default
    network, or `network`, e.g. `container:<id>` to share a replica's namespace)."""
    args: Sequence[str] = [cli, "run", "--rm", "--label", "lbctl.test=1"]
    if network:
        args = [*args, "--network", network]
    if cli == "podman":
        args = [*args, "--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1000:2000"]
    r = subprocess.run([*args, image, proto, host, str(port), str(count), str(timeout_ms)],
                       capture_output=True, text=True, timeout=300, check=False)
    if r.returncode not in (0, 1) or not r.stdout:
        raise RuntimeError(f"{cli} run {image}: exit {r.returncode}: {r.stderr.strip()}")
    return Counter(line.strip() if line.startswith("ERR") else line.split()[0]
                   for line in r.stdout.splitlines() if line.strip())


def ipv6_forwarding() -> dict[str, str]:
    """all/default IPv6 forwarding, to put back after a test: creating an IPv6 network makes
    Docker turn it on for the whole host and leave it on."""
    base = Path("/proc/sys/net/ipv6/conf")
    return {k: (base / k / "forwarding").read_text().strip() for k in ("all", "default")}


def restore_ipv6_forwarding(saved: dict[str, str]) -> None:
    base = Path("/proc/sys/net/ipv6/conf")
    for k in ("all", "default"):  # "all" first: writing it resets every interface's value
        with contextlib.suppress(OSError):
            if (base / k / "forwarding").read_text().strip() != saved[k]:
                (base / k / "forwarding").write_text(saved[k] + "\n")


def ip6tables_save() -> str:
    """Every ip6tables table, without counters and comment lines (like helpers.iptables_save)."""
    out = subprocess.run(["ip6tables-save"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#")) + "\n"


def hairpin_port(pid: int) -> Path:
    """The hairpin_mode file of the bridge port of pid's namespace (its eth0's veth peer)."""
    from lbctl.dataplane import hairpin

    for inner, outer in hairpin._peers(pid):
        name = socket.if_indextoname(outer)
        port = Path("/sys/class/net") / name
        if int((port / "iflink").read_text()) == inner:
            return port / "brport" / "hairpin_mode"
    raise LookupError(f"no bridge port found for pid {pid}")
