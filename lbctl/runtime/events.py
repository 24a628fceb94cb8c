"""Engine events, normalized: the controller only needs to know which container of which app
changed and whether it is going away. Docker and Podman name and shape events differently;
the differences end here."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lbctl.model import LABEL_APP

# Events that can change what the data plane should hold. Everything else (exec, attach,
# resize, ...) is noise for us.
WATCHED_ACTIONS = frozenset(
    {"create", "start", "die", "kill", "stop", "destroy", "oom", "pause", "unpause", "rename"}
)
# Network events that matter: Docker puts its own jumps (DOCKER-USER,
# DOCKER-ISOLATION-STAGE-1) back on top of FORWARD whenever it creates a network, below which
# its isolation drops what lbctl DNATs from one bridge to another; the host rules' next sync
# puts lbctl's jumps first again (lbctl.dataplane.iptables._ensure_jumps).
NETWORK_ACTIONS = frozenset({"create"})
# Podman's names for the events lbctl watches (its `kill` carries no signal attribute, so a
# kill is not taken as fatal there; the `die` that follows is).
_PODMAN_ACTIONS = {"remove": "destroy"}


@dataclass(frozen=True)
class EngineEvent:
    action: str  # normalized: "health_status" for every health_status: ... variant
    container_id: str
    app: str | None
    signal: int | None = None  # for "kill": the signal the engine is about to send
    kind: str = "container"  # or "network" (container_id is then the network's id)

    @property
    def changes_identity(self) -> bool:
        """The container's PID, address or name may differ afterwards: what was cached about
        it is stale. (`kill` and health changes leave them as they are; the `die` that
        follows a fatal kill says so itself.)"""
        return self.action not in ("kill", "health_status", "pause", "unpause")

    @property
    def fatal(self) -> bool:
        """The container is going away (a kill with a terminating signal, die, stop, oom)."""
        if self.action == "kill":
            return self.signal in (2, 3, 9, 15)
        return self.action in ("die", "stop", "oom", "pause")


def parse_event(ev: Mapping[str, Any]) -> EngineEvent | None:
    action = str(ev.get("Action") or ev.get("status") or "")
    action = action.split(":", 1)[0].strip()  # "health_status: healthy", "exec_start: sh"
    action = _PODMAN_ACTIONS.get(action, action)
    if ev.get("Type") == "network":
        if action not in NETWORK_ACTIONS:
            return None
        net = ev.get("Actor") or {}
        return EngineEvent(action=action, container_id=str(net.get("ID") or ""), app=None,
                           kind="network")
    if action not in WATCHED_ACTIONS and action != "health_status":
        return None
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    cid = str(actor.get("ID") or ev.get("id") or "")
    sig: int | None = None
    with contextlib.suppress(TypeError, ValueError):
        sig = int(str(attrs.get("signal")))
    return EngineEvent(action=action, container_id=cid, app=attrs.get(LABEL_APP), signal=sig)
