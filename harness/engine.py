"""The container engines' own CLIs (`docker`, `podman`): to look at what lbctl made, to do
things behind its back (kill a replica), and to remove whatever this process left behind.

lbctl talks to both through the Docker API; ENGINES says how to reach each one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harness import PREFIX, ROOT

PODMAN_HOST = "unix:///run/podman/podman.sock"  # what `make setup ENGINE=podman` serves
# engine -> (CLI on this host, --docker-host for the daemon; None: the default, Docker)
ENGINES: dict[str, tuple[str, str | None]] = {
    "docker": ("docker", None),
    "podman": ("podman", PODMAN_HOST),
}


def docker(*args: str, check: bool = True, cli: str = "docker") -> str:
    """The engine's CLI (`cli="podman"` for Podman's): stdout, or RuntimeError."""
    r = subprocess.run([cli, *args], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cli} {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def app_containers(app: str, cli: str = "docker") -> list[dict[str, Any]]:
    """`inspect` of every container (replicas and sandbox) labelled as the app's."""
    ids = docker("ps", "-aq", "--filter", f"label=lbctl.app={app}", cli=cli).split()
    if not ids:
        return []
    data: list[dict[str, Any]] = json.loads(docker("inspect", *ids, cli=cli))
    return data


def cleanup_leftovers(cli: str = "docker") -> None:
    """Remove every container of an app named with this process's PREFIX."""
    label = "{{index .Labels %s}}" if cli == "podman" else "{{.Label %s}}"
    fmt = " ".join(["{{.ID}}", label % '"lbctl.app"', label % '"lbctl.role"'])
    out = docker("ps", "-a", "--format", fmt, check=False, cli=cli)
    rows = [[*ln.split(), "", ""][:3] for ln in out.splitlines()]
    ours = [(i, role) for i, app, role in rows if app.startswith(PREFIX)]
    # Podman refuses to remove a sandbox while replicas that joined it exist: those first.
    for batch in ([i for i, r in ours if r != "sandbox"], [i for i, r in ours if r == "sandbox"]):
        if batch:
            docker("rm", "-f", *batch, check=False, cli=cli)


def checkout_image(name: str, program: str, workdir: Path) -> str:
    """lbctl/NAME built from THIS checkout's images/NAME (PROGRAM.c compiled static, as
    scripts/build-images.sh does), under a tag named by the source's hash: the `latest` tag
    is one on a shared engine, rebuilt by whichever checkout built it last, so a test or a
    benchmark that needs this checkout's program uses this one. `workdir`: where the build
    context goes."""
    src = ROOT / "images" / name
    digest = hashlib.sha256((src / f"{program}.c").read_bytes()
                            + (src / "Dockerfile").read_bytes())
    tag = f"lbctl/{name}:src-{digest.hexdigest()[:12]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                      check=False).returncode == 0:
        return tag
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(workdir / "out" / program),
                    str(src / f"{program}.c")], check=True, capture_output=True)
    shutil.copy(src / "Dockerfile", workdir / "Dockerfile")
    subprocess.run(["docker", "build", "-q", "--label", "lbctl.test=1", "-t", tag, str(workdir)],
                   check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag
