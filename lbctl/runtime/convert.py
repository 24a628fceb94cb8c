"""Engine JSON -> `lbctl.model.Container`, and lbctl's labels: pure, so it is tested without
an engine. Health sits in `State.Health` (Docker) or `State.Healthcheck` (Podman); a replica
that joined a sandbox shows `container:<id>` as its network mode on both."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from lbctl.model import (
    LABEL_APP,
    LABEL_HOLD,
    LABEL_INDEX,
    LABEL_MANAGED,
    LABEL_NETWORK,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SPEC_HASH,
    ROLE_REPLICA,
    Container,
)
from lbctl.model.options import HOST_NETWORK

JOIN_PREFIX = "container:"


def join_mode(container_id: str) -> str:
    """The network mode that puts a new container into `container_id`'s network namespace
    (HOST_NETWORK: the host's own; the planner's stand-in for a `--network host` app's
    sandbox has that id, as the engines name the host's network mode)."""
    if container_id == HOST_NETWORK:
        return HOST_NETWORK
    return f"{JOIN_PREFIX}{container_id}"


def joined_to(network_mode: str) -> str | None:
    if network_mode == HOST_NETWORK:
        return HOST_NETWORK
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


def target_network(d: dict[str, Any]) -> tuple[str, str, str] | None:
    """(name, id, IPv4 address) of the network lbctl sends the container's traffic to: the
    one its `lbctl.network` label names (the engine lists networks by name, not in the order
    they were joined), else the first with an address (an adopted container)."""
    labels = (d.get("Config") or {}).get("Labels") or {}
    wanted = labels.get(LABEL_NETWORK)
    if wanted:
        n = ((d.get("NetworkSettings") or {}).get("Networks") or {}).get(wanted)
        if n and n.get("IPAddress"):
            return str(wanted), str(n.get("NetworkID") or ""), str(n["IPAddress"])
        return None
    return first_network(d)


def target_ipv6(d: dict[str, Any]) -> str | None:
    """The global IPv6 address on the network target_network() names, the DNAT target of
    the app's IPv6 publishes (an IPv6-enabled network, such as lbctl's own; Docker's default
    bridge has none unless the engine's daemon enables it)."""
    target = target_network(d)
    if target is None:
        return None
    n = ((d.get("NetworkSettings") or {}).get("Networks") or {}).get(target[0]) or {}
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
    target = target_network(d)
    ip = target[2] if target else None
    if ip is None and not labels.get(LABEL_NETWORK) and net.get("IPAddress"):
        ip = str(net["IPAddress"])
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
        ip6=target_ipv6(d),
        pid=int(state.get("Pid") or 0) or None,
        started_at=started,
        joined_to=joined_to(str(host_cfg.get("NetworkMode") or "")),
        bridge=bridge,
        spec_hash=labels.get(LABEL_SPEC_HASH) or None,
        revision=_int(labels.get(LABEL_REVISION)),
        exit_code=exit_code,
        stop_timeout=_int(cfg.get("StopTimeout")),
        hold=labels.get(LABEL_HOLD) or None,
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

