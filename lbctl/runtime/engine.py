"""The container engine, seen through its Docker-compatible API (Docker or Podman).

Everything engine-specific lives in lbctl.runtime: this facade turns aiodocker's calls into
lbctl's few operations, each bounded by a timeout (a wedged engine must fail a call, not hang
the controller: aiohttp's default session has no timeout at all), and keeps the inspect cache
that makes a full list cost one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.events import DockerEvents

from lbctl.model import LABEL_APP, LABEL_MANAGED, Container
from lbctl.model.errors import EngineError, ImageNotFound
from lbctl.model.log_lines import LogLine, since_param
from lbctl.model.options import DEFAULT_NETWORK
from lbctl.model.runtime import (
    CreateRequest,
    EngineEvent,
    ImageFacts,
    NetworkFacts,
    NetworkSpec,
    VolumeFacts,
)
from lbctl.runtime.convert import health_marker, join_mode, target_network, to_container
from lbctl.runtime.events import parse_event
from lbctl.runtime.logstream import LogDecoder
from lbctl.runtime.options import create_config, merge_ulimits
from lbctl.runtime.podman import podman_ulimits
from lbctl.settings import EngineSettings

log = logging.getLogger("lbctl.runtime")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

T = TypeVar("T")


def docker_host(explicit: str | None) -> str:
    return explicit or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


class Engine:
    """A thin, typed facade over aiodocker with lbctl's conventions built in."""

    def __init__(self, settings: EngineSettings = EngineSettings()) -> None:  # noqa: B008
        """`settings.docker_host` None: $DOCKER_HOST, else Docker's socket."""
        self.url = docker_host(settings.docker_host)
        self.call_timeout = settings.call_timeout
        self.remove_margin = settings.remove_margin
        self._docker: aiodocker.Docker | None = None
        self._log_docker: aiodocker.Docker | None = None
        self.log_line_max = settings.log_line_max
        self._bridges: dict[str, str | None] = {}
        # Inspect results keyed by (id, list-level State); a container's PID, IP and network
        # mode do not change while its State stays the same, so a full list costs one call.
        # Every event about a container drops its entry (forget), so a restart between two
        # lists is never served from the cache.
        self._inspect_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.flavor = "docker"  # or "podman", learned from /version
        self._version_known = False
        self.default_ulimits: list[dict[str, Any]] = []
        # Podman: container id -> log follows still reading it (Engine.logs); its removal
        # waits for them, at most log_remove_wait (see _stop_and_remove).
        self._following: dict[str, int] = {}
        self._follow_ended = asyncio.Event()
        self.log_remove_wait = settings.log_remove_wait

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(
                url=self.url,
                timeout=aiohttp.ClientTimeout(total=None, connect=self.call_timeout),
            )
        return self._docker

    @property
    def log_docker(self) -> aiodocker.Docker:
        """A client of its own for log streams: a follow holds a connection per container for
        as long as someone reads, and those must never take the connections the controller's
        calls need (aiohttp's pool holds 100; past that a call waits for a free one)."""
        if self._log_docker is None:
            self._log_docker = aiodocker.Docker(
                url=self.url,
                timeout=aiohttp.ClientTimeout(total=None, connect=self.call_timeout),
            )
        return self._log_docker

    async def close(self) -> None:
        for client in (self._docker, self._log_docker):
            if client is not None:
                await client.close()
        self._docker = self._log_docker = None

    async def _call(self, what: str, aw: Awaitable[T], timeout: float | None = None) -> T:
        """One engine operation, bounded in time, with engine errors as EngineError."""
        limit = self.call_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await aw
        except TimeoutError:
            raise EngineError(
                f"{what}: the container engine at {self.url} did not answer in {limit:.0f}s"
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(f"container engine at {self.url} is not reachable: {e}") from e

    def forget(self, container_id: str) -> None:
        """Drop what is cached about a container: called for every event about it."""
        for key in [k for k in self._inspect_cache if k[0] == container_id]:
            del self._inspect_cache[key]

    async def version(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = await self._call("version", self.docker.version())
        except aiodocker.DockerError as e:
            raise EngineError(f"container engine at {self.url}: {e.message}") from e
        self._version_known = True
        components = info.get("Components") or []
        if any("podman" in str(c.get("Name", "")).lower() for c in components):
            self.flavor = "podman"
            self.default_ulimits = podman_ulimits()
        return info

    async def info(self) -> dict[str, Any]:
        """The engine's /info (its configuration: LiveRestoreEnabled, drivers, ...)."""
        try:
            data = dict(await self._call("info", self.docker.system.info()))
        except aiodocker.DockerError as e:
            raise EngineError(f"container engine at {self.url}: {e.message}") from e
        return data

    async def image_exists(self, image: str) -> bool:
        try:
            await self._call(f"inspecting image {image}", self.docker.images.inspect(image))
        except aiodocker.DockerError as e:
            if e.status == 404:
                return False
            raise EngineError(f"inspecting image {image}: {e.message}") from e
        return True

    async def image_facts(self, image: str) -> ImageFacts | None:
        """The image's labels, entrypoint and command (None: not on this engine)."""
        try:
            data = await self._call(f"inspecting image {image}", self.docker.images.inspect(image))
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise EngineError(f"inspecting image {image}: {e.message}") from e
        return image_facts(data)

    async def list_containers(self, app: str | None = None) -> list[Container]:
        """Every container labelled `lbctl.app` (or `lbctl.app=app`), running or not."""
        return await self._call("listing containers", self._list(app))

    async def _list(self, app: str | None) -> list[Container]:
        label = f"{LABEL_APP}={app}" if app else LABEL_APP
        try:
            raw = await self.docker.containers.list(
                all=True, filters=json.dumps({"label": [label]})
            )
            summaries = [c._container for c in raw]
            details = await asyncio.gather(*(self._inspect(s) for s in summaries))
        except aiodocker.DockerError as e:
            raise EngineError(f"listing containers: {e.message}") from e
        live = {(s["Id"], str(s.get("State"))) for s in summaries}
        for key, data in list(self._inspect_cache.items()):
            labels = (data.get("Config") or {}).get("Labels") or {}
            if key not in live and (app is None or labels.get(LABEL_APP) == app):
                del self._inspect_cache[key]
        if not self._version_known:
            await self.version()
        out = []
        for d in details:
            if d is not None:
                c = to_container(d, await self._bridge(d))
                if self.flavor == "podman" and c.stop_timeout == 0:
                    # Podman 4.3 reports 0 for a container created without a stop timeout
                    # (Docker: none), and stops it with SIGKILL at once: no replica would
                    # get its graceful exit. Taken as unset, so the daemon's grace applies
                    # (an explicit --stop-timeout 0 then gets the grace too).
                    c = dataclasses.replace(c, stop_timeout=None)
                out.append(c)
        return out

    async def _inspect(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        key = (str(summary["Id"]), str(summary.get("State")))
        status = health_marker(str(summary.get("Status", "")))
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
        self.forget(key[0])  # older states of the same container
        self._inspect_cache[key] = data
        return data

    async def _bridge(self, d: dict[str, Any]) -> str | None:
        net = target_network(d)
        return await self._bridge_of(net[0], net[1]) if net else None

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
        return await self._call(f"creating container {req.name}", self._create(req))

    async def _create(self, req: CreateRequest) -> str:
        if not self._version_known:  # Podman's ulimits must be known before the first create
            await self.version()
        networks = [] if req.join else list(req.networks) or [DEFAULT_NETWORK]
        opt_config, opt_host = create_config(req.options)
        host_config: dict[str, Any] = {
            "NetworkMode": join_mode(req.join) if req.join else networks[0],
            "RestartPolicy": {"Name": "no"},
            "Init": False,
            **opt_host,
        }
        if req.sysctls:
            host_config["Sysctls"] = dict(req.sysctls)
        ulimits = merge_ulimits(self.default_ulimits,
                                list(req.ulimits) or list(opt_host.get("Ulimits", [])))
        if ulimits:
            host_config["Ulimits"] = ulimits
        host_config.update(req.extra_host_config)
        config: dict[str, Any] = {
            **opt_config,
            "Image": req.image,
            # The app's labels first: lbctl's own (refused as user labels) decide.
            "Labels": {**opt_config.get("Labels", {}), **req.labels},
            "Env": [f"{k}={v}" for k, v in req.env.items()],
            "HostConfig": host_config,
        }
        first = _endpoint(networks[0], req.aliases) if networks else {}
        if first:  # only when there is something to say: a default create stays as it was
            config["NetworkingConfig"] = {"EndpointsConfig": {networks[0]: first}}
        if req.command:
            config["Cmd"] = list(req.command)
        try:
            container = await self.docker.containers.create(config, name=req.name)
        except aiodocker.DockerError as e:
            if e.status == 404 and "network" in str(e.message).lower():
                raise EngineError(f"creating container {req.name}: {e.message}") from e
            if e.status == 404:
                raise ImageNotFound(f"image {req.image} not found on this engine") from e
            raise EngineError(f"creating container {req.name}: {e.message}") from e
        try:
            # API 1.41 creates with one network; the others are joined before the start,
            # as `docker run --network a --network b` does.
            for net in networks[1:]:
                await self.docker._query_json(
                    f"networks/{net}/connect", method="POST",
                    data={"Container": container.id,
                          "EndpointConfig": _endpoint(net, req.aliases)},
                )
        except aiodocker.DockerError as e:
            raise EngineError(f"connecting container {req.name}: {e.message}") from e
        try:
            await container.start()
        except aiodocker.DockerError as e:
            raise EngineError(f"starting container {req.name}: {e.message}") from e
        return str(container.id)

    async def cpu_count(self) -> int | None:
        """CPUs of the engine's host (what --cpus may not exceed); None when not told."""
        try:
            info = await self._call("engine info", self.docker.system.info())
        except aiodocker.DockerError as e:
            raise EngineError(f"engine info: {e.message}") from e
        n = info.get("NCPU") if isinstance(info, dict) else None
        return n if isinstance(n, int) and n > 0 else None

    async def network(self, name: str) -> NetworkFacts | None:
        """Driver and IPv6 of network `name`; None when it does not exist."""
        try:
            info = await self._call(f"inspecting network {name}", self.docker.networks.get(name))
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise EngineError(f"inspecting network {name}: {e.message}") from e
        data = await self._call(f"inspecting network {name}", info.show())
        driver = data.get("Driver") or data.get("driver")
        # Docker and Podman's compatible API say EnableIPv6, Podman's own ipv6_enabled.
        ipv6 = bool(data.get("EnableIPv6") or data.get("ipv6_enabled"))
        managed = _has_labels(data, {LABEL_MANAGED: "true"})
        return NetworkFacts(str(driver) if driver else "bridge", ipv6, managed)

    async def ensure_network(self, spec: NetworkSpec) -> bool:
        """Create the bridge network `spec` unless a network of that name exists (then it is
        used as it is: lbctl never changes a network it finds); True when it was created."""
        return await self._call(f"creating network {spec.name}", self._ensure_network(spec))

    async def _ensure_network(self, spec: NetworkSpec) -> bool:
        try:
            net = await self.docker.networks.get(spec.name)
            info = await net.show()
        except aiodocker.DockerError as e:
            if e.status != 404:
                raise EngineError(f"inspecting network {spec.name}: {e.message}") from e
        else:
            if spec.owned and not _has_labels(info, spec.labels):
                raise EngineError(
                    f"a network named {spec.name} exists and is not lbctl's: rename or remove "
                    "it (lbctl places apps that publish IPv6 on a network of its own)"
                )
            return False
        config: dict[str, Any] = {
            "Name": spec.name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": dict(spec.labels),
            "EnableIPv6": spec.ipv6_subnet is not None,
        }
        if spec.ipv6_subnet is not None:
            # IPv4 comes from the engine's own pools; only the IPv6 /64 is ours to pick.
            config["IPAM"] = {"Driver": "default", "Config": [{"Subnet": spec.ipv6_subnet}]}
        if spec.bridge and self.flavor == "docker":
            config["Options"] = {"com.docker.network.bridge.name": spec.bridge}
        try:
            await self.docker.networks.create(config)
        except aiodocker.DockerError as e:
            if e.status == 409:  # created meanwhile (another worker): just as good
                return False
            raise EngineError(f"creating network {spec.name}: {e.message}") from e
        self._bridges.pop(spec.name, None)
        log.info("network created", extra={"network": spec.name, "ipv6": spec.ipv6_subnet})
        return True

    async def remove_network(self, name: str, labels: Mapping[str, str]) -> bool:
        """Remove network `name` if it carries `labels` (it is lbctl's) and no container uses
        it; True if it went. Never raises for "in use" or "absent": the next app that needs
        it creates it again."""
        return await self._call(f"removing network {name}", self._remove_network(name, labels))

    async def _remove_network(self, name: str, labels: Mapping[str, str]) -> bool:
        try:
            net = await self.docker.networks.get(name)
            info = await net.show()
            if info.get("Containers") or not _has_labels(info, labels):
                return False
            await net.delete()
        except aiodocker.DockerError as e:
            if e.status in (403, 404, 409) or "in use" in str(e.message).lower():
                return False
            raise EngineError(f"removing network {name}: {e.message}") from e
        self._bridges = {k: v for k, v in self._bridges.items() if k != name}
        log.info("network removed", extra={"network": name})
        return True

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        """Create local volume `name` unless it exists; True when it was created."""
        try:
            await self._call(f"inspecting volume {name}",
                             self.docker._query_json(f"volumes/{name}"))
            return False
        except aiodocker.DockerError as e:
            if e.status != 404:
                raise EngineError(f"inspecting volume {name}: {e.message}") from e
        try:
            await self._call(f"creating volume {name}", self.docker._query_json(
                "volumes/create", method="POST",
                data={"Name": name, "Driver": "local", "Labels": dict(labels)}))
        except aiodocker.DockerError as e:
            raise EngineError(f"creating volume {name}: {e.message}") from e
        return True

    async def volume(self, name: str) -> VolumeFacts | None:
        """Driver, options and labels of volume `name`; None when it does not exist."""
        try:
            data = await self._call(f"inspecting volume {name}",
                                    self.docker._query_json(f"volumes/{name}"))
        except aiodocker.DockerError as e:
            if e.status == 404:
                return None
            raise EngineError(f"inspecting volume {name}: {e.message}") from e
        return VolumeFacts(str(data.get("Driver") or "local"),
                           {str(k): str(v) for k, v in (data.get("Options") or {}).items()},
                           {str(k): str(v) for k, v in (data.get("Labels") or {}).items()})

    async def remove_volume(self, name: str) -> bool:
        """Remove volume `name` (one this request created, when the request then failed);
        True if it went, False when it is absent or in use."""
        async def delete() -> None:
            async with self.docker._query(f"volumes/{name}", method="DELETE"):
                pass

        try:
            await self._call(f"removing volume {name}", delete())
        except aiodocker.DockerError as e:
            if e.status in (404, 409):
                return False
            raise EngineError(f"removing volume {name}: {e.message}") from e
        log.info("volume removed", extra={"volume": name})
        return True

    async def count_labelled(self, kind: str, label: str, value: str) -> int:
        """How many networks or volumes (`kind`) carry label=value: what a member made."""
        flt = json.dumps({"label": [f"{label}={value}"]})
        path = "networks" if kind == "network" else "volumes"
        try:
            data = await self._call(f"listing {path}", self.docker._query_json(
                path, params={"filters": flt}))
        except aiodocker.DockerError as e:
            raise EngineError(f"listing {path}: {e.message}") from e
        items = data.get("Volumes") or [] if isinstance(data, dict) else data
        # Podman's compatible API has answered filters loosely: count what really matches.
        return sum(1 for i in items if str((i.get("Labels") or {}).get(label)) == value)

    async def stop_and_remove(self, container_id: str, grace: int) -> None:
        await self._call(
            f"removing container {container_id[:12]}",
            self._stop_and_remove(container_id, grace),
            timeout=grace + self.remove_margin,
        )

    async def _stop_and_remove(self, container_id: str, grace: int) -> None:
        c = self.docker.containers.container(container_id)
        try:
            with contextlib.suppress(aiodocker.DockerError):
                await c.stop(t=grace)
            await self._followers_done(container_id)
            # v: a replica's anonymous volumes (`-v /data`, an image's VOLUME) are its own
            # and would pile up otherwise; named volumes are never removed by this.
            await c.delete(force=True, v=True)
        except aiodocker.DockerError as e:
            if self.flavor == "podman" and "dependent containers" in str(e.message):
                # Podman keeps a sandbox while replicas still use its namespace (Docker removes
                # it anyway); it is removed once they are gone.
                raise EngineError(
                    f"container {container_id[:12]} still has joined containers"
                ) from e
            if e.status != 404:
                raise EngineError(f"removing container {container_id[:12]}: {e.message}") from e
        finally:
            self.forget(container_id)

    async def logs_tail(self, container_id: str, lines: int = 3) -> str:
        """The last lines a container wrote (stdout and stderr), joined into one line."""
        try:
            out = await self._call(
                "reading logs",
                self.docker.containers.container(container_id).log(
                    stdout=True, stderr=True, tail=lines
                ),
            )
        except (aiodocker.DockerError, EngineError):
            return ""
        return " | ".join(s.strip() for s in out if s.strip())[-300:]

    async def logs(self, container_id: str, *, follow: bool, since: int | None = None,
                   tail: int | None = None) -> AsyncIterator[LogLine]:
        """A container's stdout and stderr, stamped by the engine, from the start of its log
        (or the last `tail` lines, or those since `since`, ns), and with `follow` on until it
        stops. A container gone meanwhile has no lines.

        Opening the stream (an inspect for its TTY, the response's headers) is an engine call
        like any other, under the call timeout; so is every read of a stream that does not
        follow. A followed stream waits for lines as long as the container runs: only its
        caller ends it. Nothing is read ahead of the caller (aiohttp stops reading the socket
        when its buffer is full), so a slow reader holds the engine's stream, not memory.
        """
        if not (follow and self.flavor == "podman"):
            async for line in self._read_log(container_id, follow, since, tail):
                yield line
            return
        self._following[container_id] = self._following.get(container_id, 0) + 1
        try:
            async for line in self._podman_follow(container_id, since, tail):
                yield line
        finally:
            left = self._following.get(container_id, 1) - 1
            if left > 0:
                self._following[container_id] = left
            else:
                self._following.pop(container_id, None)
            self._follow_ended.set()

    async def _podman_follow(self, container_id: str, since: int | None,
                             tail: int | None) -> AsyncIterator[LogLine]:
        """Podman 4.3 ends a follow once the container stops, now and then before it read the
        container's last lines, and loses them for good when the container is removed at once
        (lbctl's drain does: 2 of 4 stops lost lines here): read again from the last stamp
        given (to the second: Podman stamps no finer), skipping what was given, following
        while it runs; its removal waits for this (_followers_done)."""
        last, same = None, 0  # the last stamp given, and how many lines had it
        async for line in self._read_log(container_id, True, since, tail):
            last, same = line.time, same + 1 if line.time == last else 1
            yield line
        while True:
            running = await self._running(container_id)
            skip = same
            again = self._read_log(container_id, bool(running),
                                   since if last is None else last,
                                   tail if last is None else None)
            async for line in again:
                if last is not None and line.time < last:
                    continue  # given already
                if line.time == last and skip > 0:
                    skip -= 1  # given already: as many lines of that stamp as were
                    continue
                last, same = line.time, same + 1 if line.time == last else 1
                yield line
            if not running:
                return
            await asyncio.sleep(0.2)  # a follow that ends at once must not spin

    async def _followers_done(self, container_id: str) -> None:
        """Podman: wait (at most log_remove_wait) until no `lbctl logs -f` still reads the
        stopped container: removing it deletes its log, which the follow may not have read
        to the end (Engine._podman_follow)."""
        def followed() -> bool:
            return any(container_id.startswith(k) or k.startswith(container_id)
                       for k in self._following)

        if self.flavor != "podman" or not followed():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.log_remove_wait):
                while followed():
                    self._follow_ended.clear()
                    await self._follow_ended.wait()

    async def _running(self, container_id: str) -> bool | None:
        """Whether the container runs; None when it is gone (or cannot be asked)."""
        try:
            async with asyncio.timeout(self.call_timeout):
                info = await self.log_docker.containers.container(container_id).show()
        except (aiodocker.DockerError, TimeoutError, aiohttp.ClientError, OSError):
            return None
        return bool((info.get("State") or {}).get("Running"))

    async def _read_log(self, container_id: str, follow: bool, since: int | None,
                        tail: int | None) -> AsyncIterator[LogLine]:
        """One log request's lines (Engine.logs)."""
        params = {"stdout": "1", "stderr": "1", "timestamps": "1",
                  "follow": "1" if follow else "0"}
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = since_param(since)
        what = f"reading the log of {container_id[:12]}"
        docker = self.log_docker
        try:
            async with asyncio.timeout(self.call_timeout):
                if not self._version_known:
                    await self.version()
                info = await docker.containers.container(container_id).show()
                resp = await docker._do_query(
                    f"containers/{container_id}/logs", "GET", params=params,
                    timeout=aiohttp.ClientTimeout(total=None, connect=self.call_timeout))
        except aiodocker.DockerError as e:
            if e.status == 404:
                return
            raise EngineError(f"{what}: {e.message}") from e
        except TimeoutError:
            raise EngineError(f"{what}: the container engine at {self.url} did not answer "
                              f"in {self.call_timeout:.0f}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(f"container engine at {self.url} is not reachable: {e}") from e
        decoder = LogDecoder(bool((info.get("Config") or {}).get("Tty")), self.log_line_max)
        try:
            while True:
                if follow:
                    chunk = await resp.content.readany()
                else:
                    async with asyncio.timeout(self.call_timeout):
                        chunk = await resp.content.readany()
                if not chunk:
                    break
                for line in decoder.feed(chunk):
                    yield line
            for line in decoder.end():
                yield line
            if decoder.garbage is not None and b"no such container" not in decoder.garbage:
                text = decoder.garbage.decode("utf-8", "replace").strip()[:300]
                raise EngineError(f"{what}: the engine sent {text!r} instead of log lines")
        except TimeoutError:
            raise EngineError(f"{what}: the engine sent nothing for "
                              f"{self.call_timeout:.0f}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(f"{what}: {e}") from e
        finally:
            resp.close()  # a stream cut short cannot go back to the pool

    async def events(self) -> AsyncIterator[EngineEvent | None]:
        """Container events for lbctl's containers, and (Docker) network creations, for as
        long as the stream lasts.

        Yields None once when connected, so the caller can rebuild its view after every
        (re)connect before trusting the events that follow. Ends when the engine closes the
        stream; raises EngineError when it cannot connect. Reconnecting is the caller's job.
        """
        stream = DockerEvents(self.docker)  # type: ignore[no-untyped-call]
        sub = stream.subscribe(create_task=False)  # type: ignore[no-untyped-call]
        if not self._version_known:
            await self.version()
        # Docker's label filter would also drop network events (it matches their attributes,
        # which carry no labels), and Podman 4.3's needs key=value (a bare key matches no
        # event at all): lbctl's containers are picked out below, every container event
        # carrying its labels. Only Docker rearranges FORWARD when it creates a network.
        types = ["container", "network"] if self.flavor == "docker" else ["container"]
        filters: dict[str, list[str]] = {"type": types}
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
                parsed = parse_event(ev)
                if parsed is not None and parsed.kind == "network":
                    yield parsed
                elif parsed is not None and parsed.app is not None:
                    if parsed.changes_identity:
                        self.forget(parsed.container_id)
                    yield parsed
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise EngineError(f"event stream failed: {task.exception()}")


def image_facts(inspect: Mapping[str, Any]) -> ImageFacts:
    """An image inspect's Config as ImageFacts (Docker and Podman write the same fields; a
    missing or null one is empty)."""
    config = inspect.get("Config") or {}
    labels = config.get("Labels") or {}

    def words(v: object) -> tuple[str, ...]:
        if isinstance(v, str):  # an old image's shell-form string
            return ("/bin/sh", "-c", v)
        return tuple(str(x) for x in v) if isinstance(v, list) else ()

    return ImageFacts({str(k): str(v) for k, v in labels.items()},
                      words(config.get("Entrypoint")), words(config.get("Cmd")))


def _has_labels(network: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    # Docker says "Labels", Podman's compatible API "Labels" or its own "labels".
    have = network.get("Labels") or network.get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _endpoint(network: str, aliases: Sequence[str]) -> dict[str, Any]:
    # Docker takes aliases only on user-defined networks.
    return {"Aliases": list(aliases)} if aliases and network != DEFAULT_NETWORK else {}


__all__ = ["Engine", "docker_host"]
