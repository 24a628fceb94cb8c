"""The controller: watch the engine, plan, apply.

Engine events only wake the loop; each pass lists lbctl's containers afresh (one engine call,
inspects cached), probes what is new, asks `planner.plan` what to do and applies it in the
order the planner documents. A failed pass is retried with backoff and the next pass is a
full one: passes are level-triggered, so nothing is lost when an event is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lbctl.controller.planner import Observed, Plan, plan
from lbctl.controller.probes import Prober, tcp_probe
from lbctl.controller.store import StateStore
from lbctl.dataplane.ebpf import EbpfDataplane, EbpfError, ListenerError, Member
from lbctl.dataplane.iptables import IptablesDataplane
from lbctl.dataplane.iptables_rules import Backend, Service
from lbctl.dataplane.sockets import established_connections
from lbctl.metrics import Metrics
from lbctl.model import (
    ROLE_REPLICA,
    ROLE_SANDBOX,
    AppSpec,
    Container,
    InvalidInput,
    Mode,
    ReplicaState,
    replica_name,
    sandbox_name,
)
from lbctl.runtime.engine import CreateRequest, Engine, EngineError, replica_labels

log = logging.getLogger("lbctl.controller")

PASS_INTERVAL = 1.0
PROBE_INTERVAL = 0.25
EBPF_READY_RECHECK = 5.0
DOOM_GRACE = 15.0  # longer than `docker stop`'s default 10 s before its SIGKILL
SANDBOX_IMAGE = "lbctl/pause:latest"


class NotFound(LookupError):
    pass


class DataplaneError(RuntimeError):
    """A sync failed; already logged with its cause."""


@dataclass
class Drain:
    started: float
    done: bool = False


@dataclass
class Backoff:
    """Crash-looping replicas are recreated with exponential backoff, not in a tight loop."""

    failures: int = 0
    not_before: float = 0.0

    def bump(self, now: float) -> None:
        self.failures += 1
        self.not_before = now + min(30.0, 0.5 * 2 ** (self.failures - 1))


@dataclass
class Settings:
    drain_timeout: float = 10.0
    stop_grace: int = 10
    sandbox_image: str = SANDBOX_IMAGE
    default_mode: Mode = Mode.IPTABLES


@dataclass
class AppStatus:
    error: str | None = None
    last_event: str | None = None
    counters: dict[str, int] = field(default_factory=dict)


class Controller:
    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        iptables: IptablesDataplane,
        ebpf: EbpfDataplane | None,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.engine = engine
        self.store = store
        self.iptables = iptables
        self.ebpf = ebpf
        self.metrics = metrics
        self.settings = settings
        self.desired: dict[str, AppSpec] = {}
        self.prober = Prober()
        self.containers: list[Container] = []
        self.last_plan = Plan()
        self.draining: dict[str, Drain] = {}
        self.backoff: dict[tuple[str, int], Backoff] = {}
        self.app_status: dict[str, AppStatus] = {}
        self.in_dataplane: dict[str, tuple[str, ...]] = {}  # app -> container ids served
        # containers the engine is stopping, killing or pausing -> when the mark expires
        self.doomed: dict[str, float] = {}
        self.first_sync = asyncio.Event()
        self._wake = asyncio.Event()
        self._passed = asyncio.Condition()
        self._app_locks: dict[str, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        self._stopping = False
        self._had_sandbox: set[str] = set()
        self._deleted_ports: dict[str, int] = {}
        # Bumped on every change of `desired`; a plan made before the latest change cannot
        # say the app has converged (a `scale` right after the last pass would else return
        # at once with the old replica set).
        self.generation = 0
        self.planned_generation = -1

    # ---- lifecycle -------------------------------------------------------------------

    def load(self) -> None:
        self.desired = self.store.load()

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._watch(), name="watch"),
            asyncio.create_task(self._loop(), name="reconcile"),
            asyncio.create_task(self._probe_loop(), name="probe"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            self._stopping = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        """The event watch never ends on its own: reconnect with backoff, resync each time."""
        backoff = 0.2
        while not self._stopping:
            try:
                async for ev in self.engine.events():
                    if ev is None:
                        self.metrics.watch_restarts.inc()
                        log.info("engine event stream connected", extra={"engine": self.engine.url})
                        backoff = 0.2
                    else:
                        self.metrics.events.labels(action=ev.action).inc()
                        if ev.fatal:
                            # `kill` is announced before the signal is delivered: taking the
                            # replica out now closes most of the window in which new
                            # connections would still be sent to a dying process. The mark
                            # expires, since the engine's list may never show the change
                            # (a pause undone within a second, a signal the app survives).
                            self.doomed[ev.container_id] = time.monotonic() + DOOM_GRACE
                        elif ev.action in ("start", "unpause"):
                            self.doomed.pop(ev.container_id, None)
                    self.trigger()
                log.warning("engine event stream ended; reconnecting")
            except EngineError as e:
                log.warning("engine event stream: %s; retrying in %.1fs", e, backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine event stream failed; retrying in %.1fs", backoff)
            self.trigger()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _loop(self) -> None:
        backoff = 0.2
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PASS_INTERVAL)
            self._wake.clear()
            try:
                await self.reconcile_once()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except (EngineError, DataplaneError) as e:
                log.warning("reconcile: %s; retrying in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.trigger()
            except Exception:
                log.exception("reconcile pass failed; the next pass is a full resync")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.trigger()

    async def _probe_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                if await self._probe(self.containers, only_new=False):
                    self.trigger()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probe round failed")

    # ---- one pass --------------------------------------------------------------------

    async def reconcile_once(self) -> None:
        generation = self.generation
        containers = await self.engine.list_containers()
        self.containers = containers
        live = {c.id for c in containers}
        self.prober.forget_missing(live)
        for cid in list(self.draining):
            if cid not in live:
                del self.draining[cid]
        running = {c.id for c in containers if c.running and not c.paused}
        now = time.monotonic()
        self.doomed = {
            cid: until for cid, until in self.doomed.items() if cid in running and now < until
        }
        # Never sync a fresh container set before its replicas were probed once: a restarted
        # daemon would otherwise publish an empty backend set for a moment.
        await self._probe(containers, only_new=True)
        await self._update_drains(containers)

        pinned = frozenset(self.ebpf.pinned_apps()) if self.ebpf else frozenset()
        observed = Observed(
            containers=containers,
            probes={
                c.id: ReplicaState.UNHEALTHY if c.id in self.doomed else s
                for c in containers
                if (s := self.prober.state(c.id)) is not None
            },
            draining={cid: d.done for cid, d in self.draining.items()},
            failed_apps=frozenset(a for a, s in self.app_status.items() if s.error),
            dataplane_apps=pinned,
        )
        p = plan(self.desired, observed)

        for app in p.create_sandboxes:
            # A dead sandbox still holds the name the new one needs, and `remove` only runs
            # after the sync: take it away first (it serves nothing, it is not running).
            for c in p.remove:
                if c.app == app and c.role == ROLE_SANDBOX and not c.running:
                    await self._remove(c)
            await self._create_sandbox(app)
        now = time.monotonic()
        for cid in p.start_drain:
            self.draining[cid] = Drain(started=now)
            log.info("draining replica", extra=self._fields(cid))
        for cid in p.cancel_drain:
            self.draining.pop(cid, None)

        await self._sync_dataplane(p)
        self.last_plan = p
        self.planned_generation = generation
        self.first_sync.set()

        for c in p.remove:
            await self._remove(c)
        for app in p.gone_apps:
            if self.ebpf:
                await self.ebpf.remove(app)
            self.metrics.forget_app(app)
            self.app_status.pop(app, None)
        await self._create_replicas(p)
        self._export_states(p)
        async with self._passed:
            self._passed.notify_all()
        if not p.empty:
            self.trigger()

    async def _sync_dataplane(self, p: Plan) -> None:
        services: list[Service] = []
        backends: tuple[Backend, ...]
        bridges: tuple[str, ...]
        for name in sorted(self.desired):
            spec = self.desired[name]
            port = spec.publish.container_port
            if spec.mode is Mode.EBPF:
                sandbox = p.sandboxes.get(name)
                if sandbox is None or sandbox.ip is None:
                    continue
                backends = (Backend(sandbox.name, sandbox.ip, port),)
                bridges = (sandbox.bridge,) if sandbox.bridge else ()
            else:
                members = [c for c in p.backends.get(name, ()) if c.ip]
                backends = tuple(Backend(c.name, c.ip or "", port) for c in members)
                # Adopted containers (docker-compose) sit on their project's own bridge.
                bridges = tuple(sorted({c.bridge for c in members if c.bridge}))
            services.append(Service(name, spec.publish, backends, bridges))

        # eBPF first: a replica joins the selection table before the DNAT could send it
        # traffic, and leaves it in the same pass as it leaves the rules. One app's failure
        # does not hold back the others' sync; it fails the pass afterwards, so that no
        # container of a half-synced app is stopped and the next pass retries in full.
        failed: list[str] = []
        if self.ebpf is not None:
            for name, spec in sorted(self.desired.items()):
                sandbox = p.sandboxes.get(name)
                if spec.mode is not Mode.EBPF or sandbox is None or sandbox.pid is None:
                    continue
                ready = [Member(c.name, c.pid) for c in p.backends.get(name, ()) if c.pid]
                drains = [Member(c.name, c.pid) for c in p.draining.get(name, ()) if c.pid]
                with self.metrics.sync_seconds.labels(dataplane="ebpf").time():
                    try:
                        await self.ebpf.sync(
                            name, spec.publish.container_port, sandbox.pid, ready, drains
                        )
                    except ListenerError as e:
                        self._fail_app(name, str(e))  # the app must change, not lbctl
                    except EbpfError as e:
                        self.metrics.sync_errors.labels(dataplane="ebpf").inc()
                        self._note(name, e.summary)
                        log.error("eBPF sync failed: %s", e, extra={"app": name})
                        failed.append(name)
        with self.metrics.sync_seconds.labels(dataplane="iptables").time():
            try:
                await self.iptables.sync(services)
            except Exception:
                self.metrics.sync_errors.labels(dataplane="iptables").inc()
                raise
        self.in_dataplane = {
            app: tuple(c.id for c in cs) for app, cs in p.backends.items() if app not in failed
        }
        if failed:
            raise DataplaneError(f"eBPF sync failed for {', '.join(failed)}")

    async def _probe(self, containers: list[Container], only_new: bool) -> bool:
        """Probe running replicas of desired apps; True when a verdict changed."""
        jobs: list[Awaitable[tuple[ReplicaState, bool]]] = []
        probed: list[Container] = []
        now = time.monotonic()
        for c in containers:
            spec = self.desired.get(c.app)
            if spec is None or c.role != ROLE_REPLICA or not c.running or c.paused:
                continue
            if c.id in self.draining:
                continue
            state = self.prober.state(c.id)
            if only_new and state is not None:
                continue
            if (
                spec.mode is Mode.EBPF
                and state is ReplicaState.READY
                and c.health != "unhealthy"
                and now - self.prober.checked_at(c.id) < EBPF_READY_RECHECK
            ):
                # A ready replica's listener is in the sockmap, and a closed socket leaves
                # the map by itself (the program then skips its slot), so re-reading the
                # namespace's socket table (every TIME_WAIT included) 4 times a second buys
                # nothing: under a new-connection load it cost the daemon a whole core.
                continue
            jobs.append(self.prober.check(c, self._answers_for(spec)))
            probed.append(c)
        if not jobs:
            return False
        results = await asyncio.gather(*jobs)
        for c, (state, changed) in zip(probed, results, strict=True):
            if changed:
                log.info("replica %s", state, extra={"app": c.app, "replica": c.name})
        return any(changed for _, changed in results)

    def _answers_for(self, spec: AppSpec) -> Callable[[Container], Awaitable[bool]]:
        port = spec.publish.container_port

        async def answers(c: Container) -> bool:
            if spec.mode is Mode.EBPF:
                if self.ebpf is None or c.pid is None:
                    return False
                try:
                    return await self.ebpf.has_listener(c.pid, port, c.name)
                except ListenerError as e:
                    self._fail_app(spec.name, str(e))
                    return False
            if spec.publish.proto == "udp":
                return True  # no handshake to probe; running (and healthy) is all we know
            if not c.ip:
                return False
            return await tcp_probe(c.ip, port)

        return answers

    async def _update_drains(self, containers: list[Container]) -> None:
        now = time.monotonic()
        by_id = {c.id: c for c in containers}
        for cid, d in self.draining.items():
            if d.done:
                continue
            c = by_id.get(cid)
            spec = self.desired.get(c.app) if c else None
            if c is None or not c.running or c.pid is None:
                d.done = True
            elif now - d.started >= self.settings.drain_timeout:
                log.warning("drain timeout: stopping it with connections open",
                            extra=self._fields(cid))
                d.done = True
            else:
                port = spec.publish.container_port if spec else None
                if port is None:  # a deleted app's replica drains on its old port
                    port = self._deleted_ports.get(c.app)
                n = await established_connections(c.pid, port) if port else 0
                d.done = n == 0

    async def _remove(self, c: Container) -> None:
        log.info("removing container", extra=self._fields(c.id, c))
        await self.engine.stop_and_remove(c.id, self.settings.stop_grace)
        self.draining.pop(c.id, None)

    async def _create_sandbox(self, app: str) -> None:
        if app in self._had_sandbox:
            self.metrics.sandbox_repairs.labels(app=app).inc()
            log.warning("sandbox lost: recreating it and re-joining replicas", extra={"app": app})
        req = CreateRequest(
            name=sandbox_name(app),
            image=self.settings.sandbox_image,
            labels=replica_labels(app, ROLE_SANDBOX),
            env={"LBCTL_APP": app},
            sysctls={"net.ipv4.tcp_migrate_req": "1"},
        )
        try:
            await self.engine.create_and_start(req)
            self._had_sandbox.add(app)
        except EngineError as e:
            self._note(app, f"creating sandbox: {e}")
            raise

    async def _create_replicas(self, p: Plan) -> None:
        now = time.monotonic()
        jobs = []
        for app, index in p.create_replicas:
            spec = self.desired.get(app)
            if spec is None:
                continue
            bo = self.backoff.setdefault((app, index), Backoff())
            if now < bo.not_before:
                continue
            network = "bridge"
            if spec.mode is Mode.EBPF:
                sandbox = p.sandboxes.get(app)
                if sandbox is None:
                    continue
                network = f"container:{sandbox.id}"
            name = replica_name(app, index)
            env = dict(spec.env)
            env.update({"LBCTL_APP": app, "LBCTL_REPLICA": name})
            req = CreateRequest(
                name=name,
                image=spec.image,
                labels=replica_labels(app, ROLE_REPLICA, index),
                env=env,
                command=spec.command,
                network_mode=network,
            )
            if bo.failures:
                log.info("recreating replica", extra={"app": app, "replica": name})
            bo.bump(now)
            jobs.append(self._create_one(app, req))
        if jobs:
            await asyncio.gather(*jobs)

    async def _create_one(self, app: str, req: CreateRequest) -> None:
        try:
            await self.engine.create_and_start(req)
            log.info("replica started", extra={"app": app, "replica": req.name})
        except EngineError as e:
            self._note(app, str(e))
            log.warning("replica start failed: %s", e, extra={"app": app, "replica": req.name})
            # A failed start leaves a created container behind; the next pass removes it.

    def _export_states(self, p: Plan) -> None:
        for app in self.desired:
            counts: dict[ReplicaState, int] = {}
            for c in self.containers:
                if c.app == app and c.id in p.states:
                    counts[p.states[c.id]] = counts.get(p.states[c.id], 0) + 1
            self.metrics.set_replica_states(app, counts)
            if p.converged.get(app):  # healthy again: the next crash starts a fresh backoff
                for key in [k for k in self.backoff if k[0] == app]:
                    del self.backoff[key]

    def _fail_app(self, app: str, message: str) -> None:
        st = self.app_status.setdefault(app, AppStatus())
        if st.error != message:
            log.error("app failed: %s", message, extra={"app": app})
        st.error = message

    def _note(self, app: str, message: str) -> None:
        self.app_status.setdefault(app, AppStatus()).last_event = message

    def _fields(self, cid: str, c: Container | None = None) -> dict[str, Any]:
        if c is None:
            c = next((x for x in self.containers if x.id == cid), None)
        if c is None:
            return {"container": cid[:12]}
        return {"app": c.app, "replica": c.name}

    # ---- API operations --------------------------------------------------------------

    def lock(self, app: str) -> asyncio.Lock:
        return self._app_locks.setdefault(app, asyncio.Lock())

    async def create_app(self, spec: AppSpec, replace: bool = False) -> bool:
        """Add an app (or, with replace, change its replica count). Returns True if created."""
        async with self._create_lock:
            existing = self.desired.get(spec.name)
            if existing is not None:
                if not replace:
                    raise InvalidInput(
                        f"app {spec.name} already exists: use `lbctl scale` or `lbctl rm` first"
                    )
                if existing.with_replicas(spec.replicas) != spec:
                    raise InvalidInput(
                        f"app {spec.name} exists with a different image, publish, mode, env or "
                        "command: `lbctl rm` it first"
                    )
                await self._set_desired(spec)
                return False
            for other in self.desired.values():
                if other.publish.clashes_with(spec.publish):
                    raise InvalidInput(
                        f"port {spec.publish.host_port}/{spec.publish.proto} is already "
                        f"published by app {other.name}"
                    )
            _check_port_free(spec)
            if spec.mode is Mode.EBPF:
                reason = EbpfDataplane.unavailable_reason() if self.ebpf else "disabled"
                if reason:
                    raise InvalidInput(
                        f"ebpf mode is not available here ({reason}): use --mode iptables"
                    )
            if not await self.engine.image_exists(spec.image):
                raise InvalidInput(
                    f"image {spec.image} is not on this engine: build or pull it first"
                )
            self.app_status.pop(spec.name, None)
            await self._set_desired(spec)
            return True

    async def scale(self, name: str, replicas: int) -> AppSpec:
        spec = self.desired.get(name)
        if spec is None:
            raise NotFound(f"no app named {name}")
        new = spec.with_replicas(replicas)
        await self._set_desired(new)
        # One line per accepted change, in the order they were applied: with racing clients
        # it is the record of which request won.
        log.info("scale accepted", extra={"app": name, "replicas": replicas})
        return new

    async def delete_app(self, name: str, timeout: float) -> None:
        spec = self.desired.get(name)
        if spec is None:
            raise NotFound(f"no app named {name}")
        self._deleted_ports[name] = spec.publish.container_port
        desired = dict(self.desired)
        del desired[name]
        self.store.save(desired)
        self.desired = desired
        self.generation += 1
        generation = self.generation
        self.trigger()
        # Also wait for a pass that planned without the app: with no container of its own
        # (only adopted ones, or none), nothing else would hold this until its rules are gone.
        await self.wait_for(
            lambda: self.planned_generation >= generation and self._app_gone(name), timeout
        )
        self.app_status.pop(name, None)
        self.metrics.forget_app(name)
        self._deleted_ports.pop(name, None)

    def _app_gone(self, name: str) -> bool:
        if any(c.app == name and c.managed for c in self.containers):
            return False
        return not (self.ebpf and name in self.ebpf.pinned_apps())

    async def _set_desired(self, spec: AppSpec) -> None:
        desired = dict(self.desired)
        desired[spec.name] = spec
        self.store.save(desired)  # durable before it is acted on
        self.desired = desired
        self.generation += 1
        self.trigger()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async def _wait() -> None:
            async with self._passed:
                await self._passed.wait_for(predicate)

        await asyncio.wait_for(_wait(), timeout)

    # ---- status ----------------------------------------------------------------------

    async def counters(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        try:
            for (app, replica), n in (await self.iptables.counters()).items():
                out.setdefault(app, {})[replica] = n
        except Exception as e:  # status must still answer when counters cannot be read
            log.warning("reading iptables counters: %s", e)
        if self.ebpf is not None:
            for app, spec in self.desired.items():
                if spec.mode is Mode.EBPF and app in self.ebpf.pinned_apps():
                    try:
                        out[app] = await self.ebpf.counters(app)
                        for reason, n in (await self.ebpf.reasons(app)).items():
                            self.metrics.bpf_reasons.labels(app=app, reason=reason).set(n)
                    except Exception as e:
                        log.warning("reading eBPF counters of %s: %s", app, e)
        for app, per in out.items():
            if app in self.desired:
                for replica, n in per.items():
                    self.metrics.connections.values[(app, replica)] = n
        return out

    async def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is not None and name not in self.desired:
            raise NotFound(f"no app named {name}")
        counters = await self.counters()
        p = self.last_plan
        now = time.time()
        apps = []
        for app in sorted(self.desired):
            if name is not None and app != name:
                continue
            spec = self.desired[app]
            replicas = []
            for c in sorted(
                (c for c in self.containers if c.app == app and c.role == ROLE_REPLICA),
                key=lambda c: (c.index is None, c.index or 0, c.name),
            ):
                if not c.running:
                    continue
                state = p.states.get(c.id, ReplicaState.STARTING)
                if state is ReplicaState.READY and c.id not in self.in_dataplane.get(app, ()):
                    state = ReplicaState.STARTING
                replicas.append(
                    {
                        "name": c.name,
                        "container_id": c.id,
                        "state": str(state),
                        "connections_total": counters.get(app, {}).get(c.name, 0),
                        "adopted": not c.managed,
                        "uptime_seconds": round(now - c.started_at, 1) if c.started_at else None,
                    }
                )
            st = self.app_status.get(app, AppStatus())
            ready = sum(1 for r in replicas if r["state"] == "ready")
            apps.append(
                {
                    "name": app,
                    "mode": str(spec.mode),
                    "publish": str(spec.publish),
                    "image": spec.image,
                    "desired": spec.replicas,
                    "ready": ready,
                    "converged": bool(p.converged.get(app))
                    and app in self.in_dataplane
                    and self.planned_generation == self.generation,
                    "error": st.error,
                    "last_event": st.last_event,
                    "replicas": replicas,
                }
            )
        return apps

    def spec_json(self, name: str) -> Mapping[str, Any]:
        spec = self.desired.get(name)
        if spec is None:
            raise NotFound(f"no app named {name}")
        return spec.to_json()


def _check_port_free(spec: AppSpec) -> None:
    """Refuse a host port that something else on the host already serves (Docker's -p,
    a local server): our DNAT would silently steal its traffic."""
    kind = socket.SOCK_STREAM if spec.publish.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((spec.publish.host_ip, spec.publish.host_port))
        except OSError as e:
            raise InvalidInput(
                f"port {spec.publish.host_ip}:{spec.publish.host_port}/{spec.publish.proto} "
                f"is already in use on this host ({e.strerror})"
            ) from None
