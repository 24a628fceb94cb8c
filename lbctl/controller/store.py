"""Desired state on disk: the apps as the user last asked for them, their revisions and
rollouts, and the apps being removed.

It is the one thing a restarted daemon cannot rebuild from the engine (the engine knows what
runs, not what should), so writes are atomic (write a temp file, fsync, rename, fsync the
directory) and a damaged file stops the daemon instead of being taken as "no apps": a silent
reset to empty would tear down every app on the host. An app being removed stays in the file
(`deleted`) until its last container is gone, so a daemon restarted in the middle of `rm`
still knows the port its replicas drain on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbctl.fsutil import atomic_write
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.hold import Hold
from lbctl.model.rollout import MAX_HISTORY, Revision, Rollout

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)


class StateError(RuntimeError):
    """The state file exists but cannot be trusted."""


@dataclass(frozen=True)
class AppRecord:
    spec: AppSpec  # what replicas should run now (the target revision) and how many
    revision: int = 1
    history: tuple[Revision, ...] = ()  # oldest first, the current one included
    rollout: Rollout | None = None
    # Who set the app's template last: None for root (and apps from before owners were
    # kept), else the member's uid. A member's app is judged as theirs at every replica
    # create (controller.sources) and counts against the members' ceilings (limits).
    owner: int | None = None
    hold: Hold | None = None  # `lbctl pause`: new connections wait until resume or its end
    # Revisions whose release command ran and exited 0 (of those in `history`): a rollout to
    # one of them (an undo, a scale-up) does not run it again.
    released: tuple[int, ...] = ()

    def revision_of(self, number: int) -> Revision | None:
        return next((r for r in self.history if r.number == number), None)

    def with_history(self, rev: Revision) -> tuple[Revision, ...]:
        kept = [r for r in self.history if r.number != rev.number] + [rev]
        return tuple(kept[-MAX_HISTORY:])

    def with_released(self, revision: int) -> tuple[int, ...]:
        """`released` plus `revision`, for the revisions still in the history."""
        kept = {r.number for r in self.history}
        return tuple(sorted({n for n in (*self.released, revision) if n in kept}))


@dataclass
class State:
    apps: dict[str, AppRecord] = field(default_factory=dict)
    deleted: dict[str, AppSpec] = field(default_factory=dict)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "state.json"

    def load_state(self) -> State:
        if not self.path.exists():
            return State()
        try:
            raw: Any = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as e:
            raise StateError(
                f"state file {self.path} is unreadable ({e}); fix or move it away "
                "(lbctl will not guess: an empty state would remove every app)"
            ) from e
        if (
            not isinstance(raw, dict)
            or raw.get("version") not in READABLE_VERSIONS
            or not isinstance(raw.get("apps", []), list)
            or not isinstance(raw.get("deleted", []), list)
        ):
            raise StateError(f"state file {self.path} has an unknown format; fix or move it away")
        state = State()
        try:
            for item in raw.get("apps", []):
                rec = _record(item) if raw["version"] == 2 else AppRecord(AppSpec.from_json(item))
                if not rec.history:
                    rec = AppRecord(rec.spec, rec.revision,
                                    (Revision(rec.revision, rec.spec, 0.0, "adopted"),),
                                    rec.rollout, rec.owner, rec.hold, rec.released)
                state.apps[rec.spec.name] = rec
            for item in raw.get("deleted", []):
                spec = AppSpec.from_json(item)
                state.deleted[spec.name] = spec
        except (InvalidInput, KeyError, TypeError, ValueError) as e:
            raise StateError(
                f"state file {self.path} holds an invalid app: {e}; fix or move it away"
            ) from e
        return state

    def load(self) -> dict[str, AppSpec]:
        return {name: rec.spec for name, rec in self.load_state().apps.items()}

    def save_state(self, state: State) -> None:
        doc = {
            "version": STATE_VERSION,
            "apps": [_record_json(state.apps[n]) for n in sorted(state.apps)],
            "deleted": [state.deleted[n].to_json() for n in sorted(state.deleted)],
        }
        atomic_write(self.path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def save(self, apps: Mapping[str, AppSpec]) -> None:
        self.save_state(State({n: AppRecord(s) for n, s in apps.items()}))


def _record_json(rec: AppRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "spec": rec.spec.to_json(),
        "revision": rec.revision,
        "history": [r.to_json() for r in rec.history],
        "rollout": rec.rollout.to_json() if rec.rollout else None,
    }
    if rec.owner is not None:  # root's records stay as they were (older daemons read both)
        out["owner"] = rec.owner
    # Only when there is something to say: a file an older lbctl reads stays the same.
    if rec.hold is not None:
        out["hold"] = rec.hold.to_json()
    if rec.released:
        out["released"] = list(rec.released)
    return out


def _record(item: Any) -> AppRecord:
    if not isinstance(item, dict):
        raise TypeError("an app record must be an object")
    spec = AppSpec.from_json(item["spec"])
    history = tuple(
        Revision(int(h["revision"]), AppSpec.from_json(h["spec"]), float(h["created"]),
                 str(h.get("note", "")))
        for h in item.get("history", [])
    )
    rollout = Rollout.from_json(item["rollout"]) if item.get("rollout") else None
    owner = item.get("owner")
    if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int)):
        raise TypeError(f"owner {owner!r} is not a uid")
    hold = Hold.from_json(item["hold"]) if item.get("hold") else None
    released = tuple(int(n) for n in item.get("released", []))
    return AppRecord(spec, int(item.get("revision", 1)), history, rollout, owner, hold,
                     released)
