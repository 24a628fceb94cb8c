"""Desired state on disk: the apps as the user last asked for them.

It is the one thing a restarted daemon cannot rebuild from the engine (the engine knows what
runs, not what should), so writes are atomic (write a temp file, fsync, rename, fsync the
directory) and a damaged file stops the daemon instead of being taken as "no apps": a silent
reset to empty would tear down every app on the host.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lbctl.fsutil import atomic_write
from lbctl.model import AppSpec, InvalidInput

STATE_VERSION = 1


class StateError(RuntimeError):
    """The state file exists but cannot be trusted."""


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
        if (
            not isinstance(raw, dict)
            or raw.get("version") != STATE_VERSION
            or not isinstance(raw.get("apps", []), list)
        ):
            raise StateError(
                f"state file {self.path} has an unknown format; fix or move it away"
            )
        apps: dict[str, AppSpec] = {}
        try:
            for item in raw.get("apps", []):
                spec = AppSpec.from_json(item)
                apps[spec.name] = spec
        except InvalidInput as e:
            raise StateError(
                f"state file {self.path} holds an invalid app: {e}; fix or move it away"
            ) from e
        return apps

    def save(self, apps: Mapping[str, AppSpec]) -> None:
        doc = {
            "version": STATE_VERSION,
            "apps": [apps[name].to_json() for name in sorted(apps)],
        }
        atomic_write(self.path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
