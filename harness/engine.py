"""The container engines' own CLIs (`docker`, `podman`): to look at what lbctl made, to do
things behind its back (kill a replica), and to remove whatever this process left behind.

lbctl talks to both through the Docker API; ENGINES says how to reach each one.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from harness import PREFIX

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
