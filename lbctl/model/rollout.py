"""How an app moves from one revision of its spec to the next: the rollout state the daemon
keeps, beside the update policy users set (lbctl.model.update_policy, named here too as the
rollout's knobs).

A revision is one version of the replica template (image, env, command, options); its hash
labels every replica created from it. A rollout is level-triggered: replicas whose hash is not
the target's are "old" and are replaced under the policy, so a restarted daemon simply goes
on from whatever runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lbctl.model.spec import AppSpec
from lbctl.model.update_policy import FailureAction, Order, UpdatePolicy

__all__ = ["MAX_HISTORY", "FailureAction", "Order", "Revision", "Rollout", "RolloutState",
           "UpdatePolicy"]


class RolloutState(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"
    COMPLETE = "complete"
    FAILED = "failed"  # failure_action=pause: stopped where it failed
    ROLLED_BACK = "rolled-back"  # failure_action=rollback: back on the previous revision


MAX_HISTORY = 10


@dataclass(frozen=True)
class Revision:
    """One version of an app's spec, as `rollout history` lists it."""

    number: int
    spec: AppSpec
    created: float  # epoch seconds
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.number, "spec": self.spec.to_json(),
                "created": self.created, "note": self.note}


@dataclass(frozen=True)
class Rollout:
    """The rollout towards revision `target` (absent once a rollout never happened)."""

    state: RolloutState
    target: int  # revision number the replicas move to
    previous: int | None = None  # revision they come from (undo and rollback go back to it)
    canary: int | None = None  # percent held for the new revision until resume or undo
    message: str = ""
    started: float = 0.0  # epoch seconds
    updated: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in (RolloutState.PROGRESSING, RolloutState.PAUSED)

    def to_json(self) -> dict[str, Any]:
        return {"state": str(self.state), "target": self.target, "previous": self.previous,
                "canary": self.canary, "message": self.message, "started": self.started,
                "updated": self.updated}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Rollout:
        return cls(
            state=RolloutState(d["state"]),
            target=int(d["target"]),
            previous=None if d.get("previous") is None else int(d["previous"]),
            canary=None if d.get("canary") is None else int(d["canary"]),
            message=str(d.get("message", "")),
            started=float(d.get("started", 0.0)),
            updated=float(d.get("updated", 0.0)),
        )
