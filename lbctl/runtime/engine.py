"""The container engine, seen through its Docker-compatible API (Docker or Podman).

Everything engine-specific lives here: the raw inspect/list/event JSON of Docker and Podman
differs in small ways (health in `State.Health` or `State.Healthcheck`, networks named
`bridge` or `podman`, event `Action` vs `status`), and this module turns it into
`lbctl.model.Container` so that nothing above it has to know which engine answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
from aiodocker.events import DockerEvents

from lbctl.model import (
    LABEL_APP,
    LABEL_INDEX,
    LABEL_MANAGED,
    LABEL_ROLE,
    ROLE_REPLICA,
    ROLE_SANDBOX,
    Container,
)

log = logging.getLogger("lbctl.runtime")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

# Events that can change what the data plane should hold. Everything else (exec, attach,
# resize, ...) is noise for us.
WATCHED_ACTIONS = frozenset(
    {"create", "start", "die", "kill", "stop", "destroy", "oom", "pause", "unpause", "rename"}
)


class EngineError(RuntimeError):
    """The engine refused a request or could not be reached."""


class ImageNotFound(EngineError):
    pass


def docker_host(explicit: str | None) -> str:
    return explicit or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


@dataclass(frozen=True)
class EngineEvent:
    action: str  # normalized: "health_status" for every health_status: ... variant
    container_id: str
    app: str | None
    signal: int | None = None  # for "kill": the signal the engine is about to send

    @property
    def fatal(self) -> bool:
        """The container is going away (a kill with a terminating signal, die, stop, oom)."""
        if self.action == "kill":
            return self.signal in (2, 3, 9, 15)
        return self.action in ("die", "stop", "oom", "pause")


@dataclass(frozen=True)
class CreateRequest:
    name: str
    image: str
    labels: Mapping[str, str]
    env: Mapping[str, str]
    command: Sequence[str] = ()
    network_mode: str = "bridge"
    sysctls: Mapping[str, str] | None = None
    ulimits: Sequence[Mapping[str, Any]] = ()


class Engine:
    """A thin, typed facade over aiodocker with lbctl's conventions built in."""

    def __init__(self, url: str | None = None) -> None:
        self.url = docker_host(url)
        self._docker: aiodocker.Docker | None = None
        self._bridges: dict[str, str | None] = {}
        # Inspect results keyed by (id, list-level State); a container's PID, IP and network
        # mode do not change while its State stays the same, so a full list costs one call.
        self._inspect_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.flavor = "docker"  # or "podman", learned from /version
        self._version_known = False
        self.default_ulimits: list[dict[str, Any]] = []

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def version(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = await self.docker.version()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as e:
            raise EngineError(f"container engine at {self.url} is not reachable: {e}") from e
        self._version_known = True
        components = info.get("Components") or []
        if any("podman" in str(c.get("Name", "")).lower() for c in components):
            self.flavor = "podman"
            self.default_ulimits = podman_ulimits()
        return info

    async def image_exists(self, image: str) -> bool:
        try:
            await self.docker.images.inspect(image)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return False
            raise EngineError(f"inspecting image {image}: {e.message}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(f"container engine at {self.url} is not reachable: {e}") from e
        return True

    async def list_containers(self, app: str | None = None) -> list[Container]:
        """Every container labelled `lbctl.app` (or `lbctl.app=app`), running or not."""
        label = f"{LABEL_APP}={app}" if app else LABEL_APP
        try:
            raw = await self.docker.containers.list(
                all=True, filters=json.dumps({"label": [label]})
            )
            summaries = [c._container for c in raw]
            details = await asyncio.gather(*(self._inspect(s) for s in summaries))
        except aiodocker.DockerError as e:
            raise EngineError(f"listing containers: {e.message}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(f"container engine at {self.url} is not reachable: {e}") from e
        live = {(s["Id"], str(s.get("State"))) for s in summaries}
        for key in list(self._inspect_cache):
            if key not in live:
                del self._inspect_cache[key]
        out = []
        for d in details:
            if d is not None:
                out.append(await self._to_container(d))
        return out

    async def _inspect(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        key = (str(summary["Id"]), str(summary.get("State")))
        # Health changes without a State change; the list's Status text shows it, next to an
        # uptime ("Up 5 seconds (healthy)") that changes every second and must not count.
        status = _health_marker(str(summary.get("Status", "")))
        cached = self._inspect_cache.get(key)
        if cached is not None and cached.get("_lbctl_status") == status:
            return cached
        try:
            data: dict[str, Any] = await self.docker.containers.container(key[0]).show()
        except aiodocker.DockerError as e:
            if e.status == 404:  # removed between list and inspect
                return None
            raise
        data["_lbctl_status"] = status
        self._inspect_cache[key] = data
        return data

    async def _to_container(self, d: dict[str, Any]) -> Container:
        cfg = d.get("Config") or {}
        labels: dict[str, str] = cfg.get("Labels") or {}
        state = d.get("State") or {}
        host_cfg = d.get("HostConfig") or {}
        net = d.get("NetworkSettings") or {}
        health_obj = state.get("Health") or state.get("Healthcheck") or None
        health = str(health_obj.get("Status")) if health_obj and health_obj.get("Status") else None
        if health == "":
            health = None
        ip: str | None = None
        bridge: str | None = None
        for net_name, n in (net.get("Networks") or {}).items():
            if n and n.get("IPAddress"):
                ip = str(n["IPAddress"])
                bridge = await self._bridge_of(str(net_name), str(n.get("NetworkID") or ""))
                break
        if ip is None and net.get("IPAddress"):
            ip = str(net["IPAddress"])
        index: int | None = None
        with contextlib.suppress(ValueError, TypeError):
            index = int(labels.get(LABEL_INDEX, ""))
        started: float | None = None
        if state.get("Running") and state.get("StartedAt"):
            started = _parse_time(str(state["StartedAt"]))
        pid = int(state.get("Pid") or 0) or None
        return Container(
            id=str(d["Id"]),
            name=str(d.get("Name", "")).lstrip("/"),
            app=labels.get(LABEL_APP, ""),
            role=labels.get(LABEL_ROLE, ROLE_REPLICA),
            managed=labels.get(LABEL_MANAGED) == "true",
            index=index,
            running=bool(state.get("Running")),
            paused=bool(state.get("Paused")),
            health=health,
            ip=ip,
            pid=pid,
            started_at=started,
            network_mode=str(host_cfg.get("NetworkMode") or ""),
            bridge=bridge,
        )

    async def _bridge_of(self, net_name: str, net_id: str) -> str | None:
        """The host bridge interface of a network: where route_localnet has to be set."""
        key = net_id or net_name
        if key in self._bridges:
            return self._bridges[key]
        bridge: str | None = None
        try:
            info = await self.docker.networks.get(key)
            data = await info.show()
            opts = data.get("Options") or {}
            bridge = opts.get("com.docker.network.bridge.name")
            if self.flavor == "podman":
                # Podman's compat inspect has no bridge name (its network is `podman`, its
                # bridge cni-podman0 with CNI, podman0 with netavark); its own API has.
                own = await self.docker._query_json(
                    f"v4.0.0/libpod/networks/{key}/json", versioned_api=False
                )
                bridge = own.get("network_interface") if isinstance(own, dict) else None
            elif not bridge and data.get("Driver") == "bridge":
                bridge = "docker0" if net_name == "bridge" else f"br-{str(data['Id'])[:12]}"
        except aiodocker.DockerError:
            bridge = None
        self._bridges[key] = bridge
        return bridge

    async def create_and_start(self, req: CreateRequest) -> str:
        if not self._version_known:  # Podman's ulimits must be known before the first create
            await self.version()
        host_config: dict[str, Any] = {
            "NetworkMode": req.network_mode,
            "RestartPolicy": {"Name": "no"},
            "Init": False,
        }
        if req.sysctls:
            host_config["Sysctls"] = dict(req.sysctls)
        ulimits = list(req.ulimits) or self.default_ulimits
        if ulimits:
            host_config["Ulimits"] = ulimits
        config: dict[str, Any] = {
            "Image": req.image,
            "Labels": dict(req.labels),
            "Env": [f"{k}={v}" for k, v in req.env.items()],
            "HostConfig": host_config,
        }
        if req.command:
            config["Cmd"] = list(req.command)
        try:
            container = await self.docker.containers.create(config, name=req.name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                raise ImageNotFound(f"image {req.image} not found on this engine") from e
            raise EngineError(f"creating container {req.name}: {e.message}") from e
        try:
            await container.start()
        except aiodocker.DockerError as e:
            raise EngineError(f"starting container {req.name}: {e.message}") from e
        return str(container.id)

    async def stop_and_remove(self, container_id: str, grace: int) -> None:
        c = self.docker.containers.container(container_id)
        try:
            with contextlib.suppress(aiodocker.DockerError):
                await c.stop(t=grace)
            await c.delete(force=True)
        except aiodocker.DockerError as e:
            if self.flavor == "podman" and "dependent containers" in str(e.message):
                # Podman keeps a sandbox while replicas still use its namespace (Docker removes
                # it anyway). The same pass removes those replicas; the next one the sandbox.
                log.info("container %s still has joined containers; removing it later",
                         container_id[:12])
                return
            if e.status != 404:
                raise EngineError(f"removing container {container_id[:12]}: {e.message}") from e

    async def logs_tail(self, container_id: str, lines: int = 3) -> str:
        try:
            out = await self.docker.containers.container(container_id).log(
                stdout=True, stderr=True, tail=lines
            )
        except aiodocker.DockerError:
            return ""
        return " ".join(s.strip() for s in out if s.strip())[-300:]

    async def events(self) -> AsyncIterator[EngineEvent | None]:
        """Container events for lbctl's containers, for as long as the stream lasts.

        Yields None once when connected, so the caller can rebuild its view after every
        (re)connect before trusting the events that follow. Ends when the engine closes the
        stream; raises EngineError when it cannot connect. Reconnecting is the caller's job.
        """
        stream = DockerEvents(self.docker)  # type: ignore[no-untyped-call]
        sub = stream.subscribe(create_task=False)  # type: ignore[no-untyped-call]
        if not self._version_known:
            await self.version()
        filters: dict[str, list[str]] = {"type": ["container"]}
        if self.flavor == "docker":
            # Podman 4.3's label filter needs key=value: a bare key matches no event at all,
            # so there lbctl's containers are picked out below (every event carries labels).
            filters["label"] = [LABEL_APP]
        task = asyncio.create_task(stream.run(filters=json.dumps(filters)))
        try:
            # The engine sends the HTTP headers only when the first event arrives on some
            # versions; a version call proves the engine answers before we claim "connected".
            await self.version()
            yield None
            while True:
                ev = await sub.get()
                if ev is None:
                    break
                parsed = _parse_event(ev)
                if parsed is not None and parsed.app is not None:
                    yield parsed
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise EngineError(f"event stream failed: {task.exception()}")


def podman_ulimits() -> list[dict[str, Any]]:
    """Ulimits for every container lbctl creates on Podman.

    Podman 4.3's Docker-compatible API asks runc for limits above what this host lets a
    process raise to (`error setting rlimit type 7: operation not permitted`), and it does
    not apply containers.conf's `default_ulimits` to API creates: explicit nofile *and* nproc
    are what work (either alone fails on the other). nofile may not exceed the hard limit
    the engine runs under (20000 here); lbctl's own is the best guess it has of it.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else max(1024, min(65536, hard))
    return [
        {"Name": "nofile", "Soft": nofile, "Hard": nofile},
        {"Name": "nproc", "Soft": 4096, "Hard": 8192},
    ]


def _health_marker(status: str) -> str:
    start = status.rfind("(")
    return status[start:] if start >= 0 and status.endswith(")") else ""


# Podman's names for the events lbctl watches (its `kill` carries no signal attribute, so a
# kill is not taken as fatal there; the `die` that follows is).
_PODMAN_ACTIONS = {"remove": "destroy"}


def _parse_event(ev: Mapping[str, Any]) -> EngineEvent | None:
    action = str(ev.get("Action") or ev.get("status") or "")
    action = action.split(":", 1)[0].strip()  # "health_status: healthy", "exec_start: sh"
    action = _PODMAN_ACTIONS.get(action, action)
    if action not in WATCHED_ACTIONS and action != "health_status":
        return None
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    cid = str(actor.get("ID") or ev.get("id") or "")
    sig: int | None = None
    with contextlib.suppress(TypeError, ValueError):
        sig = int(str(attrs.get("signal")))
    return EngineEvent(action=action, container_id=cid, app=attrs.get(LABEL_APP), signal=sig)


def _parse_time(text: str) -> float | None:
    # Docker gives nanoseconds ("2026-11-22T05:01:06.123456789Z"); fromisoformat wants micro.
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        frac = (frac + "000000")[:6]
        tz = "+00:00"
        if "+" in head[10:] or head[10:].count("-"):
            return datetime.fromisoformat(text).timestamp()
        return datetime.fromisoformat(f"{head}.{frac}{tz}").timestamp()
    except ValueError:
        return None


def replica_labels(app: str, role: str, index: int | None = None) -> dict[str, str]:
    labels = {LABEL_APP: app, LABEL_MANAGED: "true", LABEL_ROLE: role}
    if index is not None:
        labels[LABEL_INDEX] = str(index)
    return labels


__all__ = [
    "ROLE_REPLICA",
    "ROLE_SANDBOX",
    "CreateRequest",
    "Engine",
    "EngineError",
    "EngineEvent",
    "ImageNotFound",
    "docker_host",
    "replica_labels",
]
