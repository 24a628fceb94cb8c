"""Engine JSON -> `lbctl.model.Container`, and lbctl's labels: pure, so it is tested without
an engine. Health sits in `State.Health` (Docker) or `State.Healthcheck` (Podman); a replica
that joined a sandbox shows `container:<id>` as its network mode on both."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from lbctl.model import (
    LABEL_APP,
    LABEL_INDEX,
    LABEL_MANAGED,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SPEC_HASH,
    ROLE_REPLICA,
    Container,
)

JOIN_PREFIX = "container:"


def join_mode(container_id: str) -> str:
    """The network mode that puts a new container into `container_id`'s network namespace."""
    return f"{JOIN_PREFIX}{container_id}"


def joined_to(network_mode: str) -> str | None:
    if not network_mode.startswith(JOIN_PREFIX):
        return None
    return network_mode[len(JOIN_PREFIX):] or None


def first_network(d: dict[str, Any]) -> tuple[str, str, str] | None:
    """(network name, network id, IPv4 address) of the first network with an address."""
    net = d.get("NetworkSettings") or {}
    for net_name, n in (net.get("Networks") or {}).items():
        if n and n.get("IPAddress"):
            return str(net_name), str(n.get("NetworkID") or ""), str(n["IPAddress"])
    return None


def first_ipv6(d: dict[str, Any]) -> str | None:
    """The global IPv6 address on the network first_network() names (an IPv6-enabled one,
    such as lbctl's own; Docker's default bridge has none unless the daemon enables it)."""
    first = first_network(d)
    if first is None:
        return None
    n = ((d.get("NetworkSettings") or {}).get("Networks") or {}).get(first[0]) or {}
    addr = n.get("GlobalIPv6Address")
    return str(addr) if addr else None


def to_container(d: dict[str, Any], bridge: str | None) -> Container:
    cfg = d.get("Config") or {}
    labels: dict[str, str] = cfg.get("Labels") or {}
    state = d.get("State") or {}
    host_cfg = d.get("HostConfig") or {}
    net = d.get("NetworkSettings") or {}
    health_obj = state.get("Health") or state.get("Healthcheck") or None
    health = str(health_obj.get("Status")) if health_obj and health_obj.get("Status") else None
    first = first_network(d)
    ip = first[2] if first else (str(net["IPAddress"]) if net.get("IPAddress") else None)
    index = _int(labels.get(LABEL_INDEX))
    running = bool(state.get("Running"))
    started: float | None = None
    if running and state.get("StartedAt"):
        started = parse_time(str(state["StartedAt"]))
    exit_code = None if running else _int(state.get("ExitCode"))
    return Container(
        id=str(d["Id"]),
        name=str(d.get("Name", "")).lstrip("/"),
        app=labels.get(LABEL_APP, ""),
        role=labels.get(LABEL_ROLE, ROLE_REPLICA),
        managed=labels.get(LABEL_MANAGED) == "true",
        index=index,
        running=running,
        paused=bool(state.get("Paused")),
        health=health or None,
        ip=ip,
        ip6=first_ipv6(d),
        pid=int(state.get("Pid") or 0) or None,
        started_at=started,
        joined_to=joined_to(str(host_cfg.get("NetworkMode") or "")),
        bridge=bridge,
        spec_hash=labels.get(LABEL_SPEC_HASH) or None,
        revision=_int(labels.get(LABEL_REVISION)),
        exit_code=exit_code,
    )


def _int(value: object) -> int | None:
    with contextlib.suppress(ValueError, TypeError):
        return int(str(value))
    return None


def health_marker(status: str) -> str:
    """The health part of a list entry's Status ("Up 5 seconds (healthy)" -> "(healthy)"):
    health changes without a State change, while the uptime beside it changes every second."""
    start = status.rfind("(")
    return status[start:] if start >= 0 and status.endswith(")") else ""


def parse_time(text: str) -> float | None:
    # Docker gives nanoseconds ("2026-11-22T05:01:06.123456789Z"); fromisoformat wants micro.
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        frac = (frac + "000000")[:6]
        if "+" in head[10:] or head[10:].count("-"):
            return datetime.fromisoformat(text).timestamp()
        return datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()
    except ValueError:
        return None


def replica_labels(
    app: str,
    role: str,
    index: int | None = None,
    spec_hash: str | None = None,
    revision: int | None = None,
) -> dict[str, str]:
    labels = {LABEL_APP: app, LABEL_MANAGED: "true", LABEL_ROLE: role}
    if index is not None:
        labels[LABEL_INDEX] = str(index)
    if spec_hash is not None:
        labels[LABEL_SPEC_HASH] = spec_hash
    if revision is not None:
        labels[LABEL_REVISION] = str(revision)
    return labels
