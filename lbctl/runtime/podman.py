"""What Podman needs that Docker does not, kept apart so the facade reads as one engine."""

from __future__ import annotations

import resource
from typing import Any


def podman_ulimits() -> list[dict[str, Any]]:
    """Ulimits for every container lbctl creates on Podman.

    Podman 4.3's Docker-compatible API asks runc for limits above what this host lets a
    process raise to (`error setting rlimit type 7: operation not permitted`), and it does
    not apply containers.conf's `default_ulimits` to API creates: explicit nofile *and* nproc
    are what work (either alone fails on the other). nofile may not exceed the hard limit
    the engine runs under (20000 here); lbctl's own is the best guess it has of it.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else max(1024, min(65536, hard))
    return [
        {"Name": "nofile", "Soft": nofile, "Hard": nofile},
        {"Name": "nproc", "Soft": 4096, "Hard": 8192},
    ]
