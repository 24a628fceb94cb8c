"""Socket activation's pieces built from this checkout, for the daemons the tests and the
benchmarks run: the shim (images/activate/activate.c, static) and the labelled demo image
(lbctl/demo from images/demo plus io.lbctl.listen-fds=true), each under a name of its
sources' hash, so a run never depends on what another checkout last built."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from harness import ROOT

SHIM_SRC = ROOT / "images" / "activate" / "activate.c"
DEMO = ROOT / "images" / "demo"
SHIM_CACHE = Path("/var/tmp/lbctl-activate")


def build_shim(out_dir: Path = SHIM_CACHE) -> Path:
    """The shim compiled from this checkout (as scripts/build-images.sh does), cached in
    `out_dir` by the source's hash."""
    digest = hashlib.sha256(SHIM_SRC.read_bytes()).hexdigest()[:12]
    out = out_dir / f"activate-{digest}"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}")
        r = subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(tmp), str(SHIM_SRC)],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"compiling {SHIM_SRC} failed: {r.stderr.strip()[-400:]}")
        tmp.chmod(0o755)
        tmp.replace(out)  # atomic: a concurrent run sees the whole binary or none
    return out


def activation_image(demo_image: str, cli: str = "docker") -> str:
    """`demo_image` (this checkout's lbctl/demo) declaring that it takes an inherited listener
    (what lbctl/demo-activation is to lbctl/demo), on the engine `cli` names."""
    label = (DEMO / "Dockerfile.activation").read_bytes()
    tag = "lbctl/demo-activation:src-" + hashlib.sha256(
        demo_image.encode() + label).hexdigest()[:12]
    if _missing("docker", tag):
        with tempfile.TemporaryDirectory() as ctx:
            lines = [f"FROM {demo_image}" if ln.startswith("FROM ") else ln
                     for ln in label.decode().splitlines()]
            (Path(ctx) / "Dockerfile").write_text("\n".join(lines) + "\n")
            r = subprocess.run(["docker", "build", "-q", "--label", "lbctl.test=1", "-t", tag,
                                ctx], capture_output=True, text=True, check=False,
                               env={**os.environ, "DOCKER_BUILDKIT": "0"})
            if r.returncode != 0:
                raise RuntimeError(f"building {tag}: {r.stderr.strip()}")
    if cli == "podman" and _missing("podman", tag):
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        subprocess.run(["podman", "load", "-q"], stdin=save.stdout, check=True,
                       capture_output=True)
        save.wait()
    return tag


def _missing(cli: str, tag: str) -> bool:
    return subprocess.run([cli, "image", "inspect", tag], capture_output=True,
                          check=False).returncode != 0
