"""Build the benchmark backend image `lbctl/bench-nginx:latest` offline.

No registry is reachable, so the image is a root filesystem assembled from this machine's
own files: Debian's /usr/sbin/nginx plus every library `ldd` lists, busybox-static for a
two-line entry script, and a minimal /etc. The entry script writes the replica's name
($LBCTL_REPLICA, which lbctl sets; else the hostname) into the config, so every replica
answers its own name even in ebpf mode, where replicas share the sandbox's UTS namespace
and therefore its hostname. It listens on 8080, or on $BENCH_PORT: replicas run with
`--network host` (the `reuseport-host` path) share the host's ports with everything else, so
the bench gives them a free one. Given listeners by socket activation (LISTEN_FDS, the
`ebpf-activation` path), it serves those instead of binding (nginx's NGINX variable).

STOPSIGNAL is SIGQUIT: nginx's graceful shutdown (SIGTERM is its fast shutdown, which drops
the connections it already accepted).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

IMAGE = "lbctl/bench-nginx:latest"
PORT = 8080
NGINX = Path("/usr/sbin/nginx")
BUSYBOX = Path("/bin/busybox")
HASH_LABEL = "lbctl.build-sha256"

NGINX_CONF = """\
worker_processes 1;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 65;
    server {
        listen @PORT@ reuseport backlog=4096;
        location / {
            default_type text/plain;
            return 200 "@REPLICA@\\n";
        }
    }
}
"""

ENTRY = """\
#!/bin/busybox sh
# Put this replica's name in the body and its port (8080 unless $BENCH_PORT says otherwise,
# for replicas in the host's namespace) in the listen line, then become nginx (PID 1, the
# listener's owner).
name="${LBCTL_REPLICA:-$(/bin/busybox hostname)}"
port="${BENCH_PORT:-8080}"
# Socket activation (LISTEN_FDS from lbctl's shim, the `ebpf-activation` path): nginx takes
# inherited listeners only through its own variable, NGINX="3;4;...", and keeps those whose
# address is a `listen` of its config (hence BENCH_PORT = the listeners' port).
if [ -n "$LISTEN_FDS" ] && [ "$LISTEN_PID" = "$$" ]; then
    fds=""
    i=3
    while [ "$i" -lt $((3 + LISTEN_FDS)) ]; do fds="$fds$i;"; i=$((i + 1)); done
    export NGINX="$fds"
    unset LISTEN_FDS LISTEN_PID LISTEN_FDNAMES
fi
/bin/busybox sed -e "s/@REPLICA@/$name/" -e "s/@PORT@/$port/" /etc/nginx/nginx.conf.in \
    > /tmp/nginx.conf
exec /usr/sbin/nginx -c /tmp/nginx.conf -g 'daemon off;'
"""

DOCKERFILE = f"""\
FROM scratch
COPY rootfs/ /
LABEL lbctl.image=bench-nginx
EXPOSE {PORT}
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/entry.sh"]
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n"


def libraries(binary: Path) -> list[Path]:
    """The shared libraries (and the loader) `ldd` lists for `binary`."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    libs = [Path(m) for m in re.findall(r"(/\S+)\s+\(0x", out)]
    return [p for p in libs if p.exists()]


def _inputs_hash() -> str:
    h = hashlib.sha256()
    for part in (NGINX.read_bytes(), BUSYBOX.read_bytes(), NGINX_CONF.encode(), ENTRY.encode(),
                 DOCKERFILE.encode(), PASSWD.encode(), GROUP.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _current_hash() -> str:
    r = subprocess.run(
        ["docker", "image", "inspect", "--format",
         f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', IMAGE],
        capture_output=True, text=True, check=False,
    )
    return r.stdout.strip() if r.returncode == 0 else ""


def _copy(src: Path, root: Path) -> None:
    dst = root / src.relative_to("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src.resolve(), dst)


def build(force: bool = False) -> bool:
    """Build the image unless an identical one exists; returns True if it built."""
    for tool in (NGINX, BUSYBOX):
        if not tool.exists():
            raise RuntimeError(f"{tool} is missing: run `make setup` (nginx-light, busybox-static)")
    want = _inputs_hash()
    if not force and _current_hash() == want:
        return False
    with tempfile.TemporaryDirectory(prefix="lbctl-bench-image-") as tmp:
        ctx = Path(tmp)
        root = ctx / "rootfs"
        for f in [NGINX, *libraries(NGINX)]:
            _copy(f, root)
        _copy(BUSYBOX, root)
        (root / "bin" / "sh").symlink_to("busybox")
        for d in ("tmp", "run", "var/lib/nginx", "var/log/nginx", "etc/nginx"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        (root / "etc/passwd").write_text(PASSWD)
        (root / "etc/group").write_text(GROUP)
        (root / "etc/nginx/nginx.conf.in").write_text(NGINX_CONF)
        entry = root / "entry.sh"
        entry.write_text(ENTRY)
        entry.chmod(0o755)
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        r = subprocess.run(
            ["docker", "build", "-q", "--label", f"{HASH_LABEL}={want}", "-t", IMAGE, str(ctx)],
            capture_output=True, text=True, check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        if r.returncode != 0:
            raise RuntimeError(f"docker build of {IMAGE} failed: {r.stderr.strip()[-500:]}")
    return True
