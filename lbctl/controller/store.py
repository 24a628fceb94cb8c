"""Desired state on disk: the apps as the user last asked for them.

It is the one thing a restarted daemon cannot rebuild from the engine (the engine knows what
runs, not what should), so writes are atomic (write a temp file, fsync, rename, fsync the
directory) and a damaged file stops the daemon instead of being taken as "no apps": a silent
reset to empty would tear down every app on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lbctl.model import AppSpec, InvalidInput

STATE_VERSION = 1


class StateError(RuntimeError):
    """The state file exists but cannot be trusted."""


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"

    def load(self) -> dict[str, AppSpec]:
        if not self.path.exists():
            return {}
        try:
            raw: Any = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as e:
            raise StateError(
                f"state file {self.path} is unreadable ({e}); fix or move it away "
                "(lbctl will not guess: an empty state would remove every app)"
            ) from e
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise StateError(
                f"state file {self.path} has an unknown format; fix or move it away"
            )
        apps: dict[str, AppSpec] = {}
        try:
            for item in raw.get("apps", []):
                spec = AppSpec.from_json(item)
                apps[spec.name] = spec
        except InvalidInput as e:
            raise StateError(f"state file {self.path} holds an invalid app: {e}") from e
        return apps

    def save(self, apps: Mapping[str, AppSpec]) -> None:
        doc = {
            "version": STATE_VERSION,
            "apps": [apps[name].to_json() for name in sorted(apps)],
        }
        atomic_write(self.path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
