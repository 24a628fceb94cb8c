"""`lbctl export`: an app in the formats of the tools that take over from one host. Pure: no
I/O. Each renderer takes the daemon's `GET /apps/NAME/spec` (an `AppSpec`) and returns text.

- compose (lbctl.export.compose): a compose file to run beside lbctl, read back by `lbctl
  apply -f` as the same app;
- swarm (lbctl.export.swarm): a stack file for `docker stack deploy`, the app's replicas,
  update policy, health check, limits, volumes and networks as a Swarm service;
- kubernetes (lbctl.export.kubernetes): a Deployment (rolling update from the update policy,
  probes, a preStop for the drain), PersistentVolumeClaims for named volumes, and a Service
  that keeps the client's address.

What a format has no field for is named in the output's header, never dropped silently; what
it cannot mean at all (a bind mount in Kubernetes) is refused in one line.
"""

from __future__ import annotations

from lbctl.export.common import k8s_name
from lbctl.export.compose import to_compose
from lbctl.export.kubernetes import to_kubernetes
from lbctl.export.swarm import to_swarm
from lbctl.model import AppSpec, InvalidInput

FORMATS = ("compose", "swarm", "kubernetes")

__all__ = ["FORMATS", "export", "k8s_name", "to_compose", "to_kubernetes", "to_swarm"]


def export(spec: AppSpec, fmt: str) -> str:
    if fmt == "compose":
        return to_compose(spec)
    if fmt == "swarm":
        return to_swarm(spec)
    if fmt in ("kubernetes", "k8s"):
        return to_kubernetes(spec)
    raise InvalidInput(f"unknown export format {fmt!r}: use {', '.join(FORMATS)}")
