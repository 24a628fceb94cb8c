"""This checkout's demo server as an image: what the tests and the benchmarks run when they
need a feature of the server they ship with (WARMUP, /ready, the drain's keep-alive handling).

`lbctl/demo:latest` is one tag on a shared engine, rebuilt by whichever checkout ran
scripts/build-images.sh last; this one is tagged by the hash of its source, built once
(offline: a static binary in a FROM-scratch image) and then found by its tag.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import ROOT


def demo_image() -> str:
    """The tag of lbctl/demo built from this checkout's images/demo (built when missing)."""
    src = ROOT / "images" / "demo"
    digest = hashlib.sha256((src / "httpd.c").read_bytes() + (src / "Dockerfile").read_bytes())
    tag = f"lbctl/demo:src-{digest.hexdigest()[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                      check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="lbctl-demo-image-") as tmp:
        ctx = Path(tmp)
        (ctx / "out").mkdir()
        subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(ctx / "out" / "httpd"),
                        str(src / "httpd.c")], check=True, capture_output=True)
        shutil.copy(src / "Dockerfile", ctx / "Dockerfile")
        subprocess.run(["docker", "build", "-q", "--label", "lbctl.test=1", "-t", tag, str(ctx)],
                       check=True, capture_output=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag
