"""Where the socket-activation shim (images/activate/activate.c, a static binary) is on this
host: the package installs it as /usr/lib/lbctl/activate; a checkout builds it into
images/activate/out/activate (scripts/build-images.sh, run by `make setup`)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGED = Path("/usr/lib/lbctl/activate")


def shim_path() -> Path:
    """The shim next to the package's source tree when there is one, else the package's."""
    here = Path(__file__).resolve().parents[3] / "images" / "activate" / "out" / "activate"
    return here if here.exists() else PACKAGED


def shim_unavailable(path: Path) -> str | None:
    """Why `path` cannot be the shim (None: it can): the engine bind-mounts it into every
    replica of an activated app and runs it there."""
    if not path.is_file():
        return (f"the socket-activation shim {path} is missing (a checkout builds it with "
                "scripts/build-images.sh; the package installs it)")
    if not os.access(path, os.X_OK):
        return f"the socket-activation shim {path} is not executable"
    return None
