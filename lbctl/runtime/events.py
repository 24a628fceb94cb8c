"""Engine events, normalized: the controller only needs to know which container of which app
changed and whether it is going away. Docker and Podman name and shape events differently;
the differences end here."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from lbctl.model import LABEL_APP
from lbctl.model.runtime import EngineEvent

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
