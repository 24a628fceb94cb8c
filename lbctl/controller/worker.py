"""One worker per app (kopf's shape): observe -> plan -> apply for that app alone.

Engine events and probe verdicts only wake the worker; each pass lists the app's containers
afresh, asks `planner.plan_app` what to do and applies it. A pass is bounded in time, a failed
one is retried with the worker's own backoff and shown as the app's error in `status`; the
next pass is a full one, so nothing is lost when an event is. One app's fault (a squatted
sandbox name, a remove error, a damaged eBPF state file, a hung engine call) therefore stays
that app's: the other workers go on.

A worker is given what it works with, and nothing else: the engine, the desired state (the
apps service), its app's share of the data planes, the drains, its probe rounds, the metrics
and the settings. The daemon (and tests, on fakes) make them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from lbctl.controller import clock, template
from lbctl.controller.apply import AppDataplane
from lbctl.controller.apps import AppsService
from lbctl.controller.draining import Drains
from lbctl.controller.interfaces import ActivationPort, EnginePort
from lbctl.controller.metrics import RELEASE_RESULTS, Metrics
from lbctl.controller.planner import AppPlan, Desired, Observed, plan_app
from lbctl.controller.readiness.rounds import ReplicaProbes
from lbctl.controller.retire import Retirements
from lbctl.controller.sources import SourceGuard
from lbctl.controller.view import AppView, CrashReport, ReleaseReport
from lbctl.model import ROLE_REPLICA, AppSpec, Container, Mode, ReplicaState
from lbctl.model.errors import EbpfError, EngineError, InvalidInput
from lbctl.model.names import replica_name
from lbctl.model.options import HOST_NETWORK
from lbctl.model.readiness import ReadinessProbe
from lbctl.model.runtime import CreateRequest, EngineEvent, ImageFacts, NetworkSpec
from lbctl.settings import Settings

log = logging.getLogger("lbctl.controller")


class AppWorker:
    def __init__(
        self,
        name: str,
        *,
        engine: EnginePort,
        apps: AppsService,
        dataplane: AppDataplane,
        drains: Drains,
        probes: ReplicaProbes,
        metrics: Metrics,
        settings: Settings,
        own_network: NetworkSpec,
        activation: ActivationPort | None = None,
        guard: SourceGuard | None = None,
        now: Callable[[], float] = clock.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`settings`: the tree; a worker reads its `worker` section, the drains' `drain`
        (for its retirements) and the replicas' default pids limit. `own_network`: lbctl's
        network (template.network_spec of this host's subnet), for apps placed there.
        `activation`: the hand-over of activated apps' listeners (None: this host has no
        eBPF data plane, so no app is activated). `guard`: judges what a member's replica
        mounts again before it is created. `wall`: epoch seconds (start times, a hold's
        deadline; tests put the loop's)."""
        self.name = name
        self.engine = engine
        self.apps = apps
        self.dataplane = dataplane
        self.drains = drains
        self.probes = probes
        self.metrics = metrics
        self.settings = settings.worker
        self.default_pids_limit = settings.limits.default_pids_limit or None
        self.own_network = own_network
        self.activation = activation
        self.shim_timeout = settings.activation.shim_timeout
        self.guard = guard
        self.now = now
        self.wall = wall
        self.view = AppView(probes=probes.records)
        probes.on_change = self.wake  # a verdict changed: put the replica in, or take it out
        self.retirements = Retirements(engine, settings.drain, self.wake, now)
        self.doomed: dict[str, float] = {}
        self.reported: set[str] = set()  # containers whose crash was reported
        self.last_pass: float | None = None  # clock time the last pass ended (ok or not)
        self.last_step = -math.inf  # clock time of the last rollout step (never)
        self.create_failures = 0
        self.create_not_before = -math.inf
        self.holding: frozenset[str] = frozenset()  # hold containers the socket map holds
        self._hold_timer: tuple[float, asyncio.TimerHandle] | None = None
        self._wake = asyncio.Event()
        self._fast = False  # a replica is going away: take it out before asking the engine
        self._passed = asyncio.Condition()
        self._had_sandbox = False
        for counter in (metrics.pass_errors, metrics.sandbox_repairs, metrics.rollout_failures):
            counter.labels(app=name)  # at 0 from the start: a rate() works before the first
        for result in RELEASE_RESULTS:
            metrics.release_runs.labels(app=name, result=result)
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- feeding --------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def on_event(self, ev: EngineEvent) -> None:
        if ev.fatal and ev.container_id not in self.doomed:
            self._fast = True
            # `kill` is announced before the signal is delivered: taking the replica out now
            # closes most of the window in which new connections would still be sent to a
            # dying process. The mark expires, since the engine's list may never show the
            # change (a pause undone within a second, a signal the app survives).
            self.doomed[ev.container_id] = self.now() + self.settings.doom_grace
        elif ev.action in ("start", "unpause"):
            self.doomed.pop(ev.container_id, None)
        self.wake()

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Until the app is deleted and nothing of it is left."""
        probe = asyncio.create_task(self._probe_loop(), name=f"probe {self.name}")
        backoff = 0.2
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.resync_interval):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.settings.pass_timeout):
                        if self._fast:
                            self._fast = False
                            await self.fast_sync()
                        done = await self.pass_once()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._pass_failed(e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    self.wake()
                    continue
                backoff = 0.2
                self.view.pass_error = None
                self.last_pass = self.now()
                async with self._passed:
                    self._passed.notify_all()
                if done:
                    return
        finally:
            probe.cancel()
            if self._hold_timer is not None:
                self._hold_timer[1].cancel()
            for t in list(self._tasks):
                t.cancel()
            await self.retirements.cancel_all()
            await self.probes.cancel_all()
            await asyncio.gather(probe, *self._tasks, return_exceptions=True)

    def _pass_failed(self, e: Exception) -> None:
        self.last_pass = self.now()
        if isinstance(e, TimeoutError):
            msg = f"a pass took longer than {self.settings.pass_timeout:g}s"
        else:
            msg = _summary(e)
        if msg != self.view.pass_error:
            if isinstance(e, EngineError | EbpfError | TimeoutError) or "sync" in msg:
                log.warning("pass failed: %s; retrying", msg, extra={"app": self.name})
            else:
                log.error("pass failed: %s; retrying", msg, extra={"app": self.name},
                          exc_info=e)
        self.view.pass_error = msg
        self.metrics.pass_errors.labels(app=self.name).inc()

    async def wait_pass(self, timeout: float) -> None:
        async with asyncio.timeout(timeout), self._passed:
            await self._passed.wait()

    # ---- one pass ---------------------------------------------------------------------------

    async def pass_once(self) -> bool:
        """Observe, plan, apply. True once a deleted app is completely gone."""
        apps = self.apps
        generation = apps.generation(self.name)
        desired = apps.desired(self.name)
        spec = desired.spec
        if self.view.error is not None and self.view.error_generation != generation:
            self.view.error = None  # the spec changed: let it try again
        containers = await self.engine.list_containers(self.name)
        live = {c.id for c in containers}
        self.probes.forget_missing(live)
        self.retirements.forget_missing(live)
        self.dataplane.forget_missing(live)
        now = self.now()
        running = {c.id for c in containers if c.running and not c.paused}
        self.doomed = {cid: t for cid, t in self.doomed.items() if cid in running and now < t}
        blocked = self._blocked(desired)
        served = spec or desired.gone
        if served is not None and served.activated and self.activation is not None:
            # A replica's socket goes with its last container; the others are served again
            # (a restarted daemon binds theirs anew in the directories their mounts name).
            names = {c.name for c in containers if c.managed and c.role == ROLE_REPLICA}
            self.activation.keep(self.name, names)
            for c in containers:
                if c.name in names and c.running:
                    self.activation.serve(self.name, c.name, served.publishes)
        if spec is not None:
            # Never sync a fresh container set before its replicas were probed once: a
            # restarted daemon would otherwise publish an empty backend set for a moment.
            await self._probe(spec, containers, only_new=True)
        observed = Observed(
            containers=containers,
            probes=self.probes.verdicts(),
            retiring=self.retirements.ids(),
            reclaimable=self.retirements.reclaimable(),
            stopping=self.retirements.stopping(),
            doomed=frozenset(self.doomed),
            ever_ready=frozenset(self.probes.ever_ready),
            now=self.now(),
            wall=self.wall(),
            blocked=blocked,
            unhealthy_grace=self.settings.unhealthy_grace,
            last_step=self.last_step,
            holding=self.holding,
            release_timeout=self.settings.release_timeout,
        )
        p = plan_app(desired, observed)
        self.view.containers = containers
        for c in p.reclaim:
            # Back in service in the next pass; or too late (it is being stopped), and then
            # the next pass starts a successor.
            self.retirements.reclaim(c.id)
            self.wake()

        if p.create_sandbox and spec is not None:
            await self._create_sandbox(spec)
            self.wake()  # replicas join it in the next pass
        await self._sync(desired, p, containers)
        await self._after_sync(desired, p)
        self.view.plan = p
        self.view.planned_generation = generation
        self.view.synced = True

        # Before anything is removed: a crashed replica's last log line is its diagnosis.
        if spec is not None:
            await self._report(desired, p)
        pending = self.drains.pending_for(served) if served else None
        forget = self.drains.before_stop(served) if served else None
        for c in p.retire:
            replica = c.role == ROLE_REPLICA
            drain = pending if replica and c.id not in p.orphaned else None
            self.retirements.start(c, drain, surplus=c.id in p.surplus,
                                   before_stop=forget if replica else None)
            if (spec is not None and c.running and c.role == ROLE_REPLICA
                    and c.spec_hash not in (None, desired.hash)):
                self._step_log("draining", c)
        if spec is None:
            if p.done:
                # Its last containers are gone: so are its rules (the pass's sync may still
                # have seen a retirement finishing, and kept its bridges).
                await self.dataplane.remove()
                if self.activation is not None:
                    self.activation.remove(self.name)
                # lbctl's network goes with the last app on it (the engine refuses while
                # another app's container is attached; that app's removal tries again).
                net = self.own_network
                await self.engine.remove_network(net.name, net.labels)
                return True
            return False

        await self._release(spec, desired, p)
        if p.create_hold:
            await self._create_hold(spec, desired, p)
        if p.create:
            await self._create_replicas(spec, desired, p)
        if p.converged:
            self.create_failures = 0
        self.metrics.set_replica_states(self.name, _counts(p, containers))
        rec = self.apps.record(self.name)
        rolling = rec is not None and rec.rollout is not None and rec.rollout.active
        self.metrics.rollout_in_progress.labels(app=self.name).set(1 if rolling else 0)
        if desired.revision is not None:
            self.metrics.rollout_revision.labels(app=self.name).set(desired.revision)
        return False

    async def fast_sync(self) -> None:
        """The data plane only, from what the last pass saw plus the engine's announcement
        that a replica is going away: no engine call stands between a `kill` event and the
        replica leaving the data plane (an engine busy stopping 63 containers of another app
        answers a list in seconds). The full pass that follows confirms it."""
        desired = self.apps.desired(self.name)
        containers = self.view.containers
        if desired.spec is None or not containers:
            return
        now = self.now()
        self.doomed = {cid: t for cid, t in self.doomed.items() if now < t}
        observed = Observed(
            containers=containers,
            probes=self.probes.verdicts(),
            retiring=self.retirements.ids(),
            doomed=frozenset(self.doomed),
            ever_ready=frozenset(self.probes.ever_ready),
            now=now,
            wall=self.wall(),
            blocked=True,  # nothing is created from a stale view
            unhealthy_grace=self.settings.unhealthy_grace,
            last_step=self.last_step,
            holding=self.holding,
            release_timeout=self.settings.release_timeout,
        )
        await self._sync(desired, plan_app(desired, observed), containers)

    def _blocked(self, desired: Desired) -> bool:
        spec = desired.spec
        if spec is None:
            return True
        reason = self.dataplane.unavailable(spec.mode)
        if reason:
            self._fail(f"ebpf mode is not available on this host now ({reason}): "
                       "remove the app and run it again with --mode iptables")
            return True
        if spec.activated:
            why = ("no eBPF data plane" if self.activation is None
                   else self.activation.unavailable())
            if why:
                self._fail(f"socket activation is not available on this host now ({why}): "
                           "remove the app and run it again with --activation=false")
                return True
        return self.view.error is not None

    # ---- apply ------------------------------------------------------------------------------

    async def _sync(self, desired: Desired, p: AppPlan, containers: list[Container]) -> None:
        """The data planes to the plan (apply.AppDataplane); raises when either fails, so
        that no retirement starts on a half-synced app."""
        leaving = self.retirements.ids() | {c.id for c in p.retire}
        held = {c.id: c for c in p.retire}
        held.update({cid: r.container for cid, r in self.retirements.active.items()
                     if cid not in self.retirements.removed})
        in_dataplane = await self.dataplane.sync(desired, p, containers, leaving,
                                                 held.values(), self._fail)
        if in_dataplane is not None:
            self.view.in_dataplane = in_dataplane

    async def _after_sync(self, desired: Desired, p: AppPlan) -> None:
        """What the sync made of the traffic hold: whether the data plane holds (ebpf mode:
        which hold containers the socket map holds; iptables mode: the rules are in), how
        many connections wait, its metrics, and the pass at its deadline."""
        spec = desired.spec
        if spec is None:
            return
        if p.holds:
            self.holding = await self.dataplane.holding(p)
            self.view.holding = bool(self.holding)
            self.view.held = await self.dataplane.held(spec, p)
        else:
            self.holding = frozenset()
            self.view.holding = p.hold_until is not None and spec.mode is Mode.IPTABLES
            self.view.held = None
        self.metrics.paused.labels(app=self.name).set(1 if p.hold_until is not None else 0)
        self.metrics.held.labels(app=self.name).set(self.view.held or 0)
        until = desired.hold_until
        if until is None:
            return
        left = until - self.wall()
        if left <= 0:
            await self.apps.hold_ended(self.name, until)
            return
        loop = asyncio.get_running_loop()
        timer = self._hold_timer
        if timer is None or timer[0] != until or timer[1].when() <= loop.time():
            # The pass at the deadline ends the hold (the sync returns the tables before the
            # hold container stops), whatever else wakes this worker; again when it came a
            # hair early by the wall clock.
            if timer is not None:
                timer[1].cancel()
            self._hold_timer = (until, loop.call_later(left + 0.01, self.wake))

    async def _create_hold(self, spec: AppSpec, desired: Desired, p: AppPlan) -> None:
        """ebpf mode: a hold container that listens where the replicas do, as their user."""
        assert desired.hold_until is not None and p.sandbox is not None
        bound = await self.dataplane.hold_sockets(spec, p)
        if not bound:
            self._note("paused: no replica listens yet; the hold starts once one does")
            return
        join = HOST_NETWORK if spec.host_network else p.sandbox.id
        req = template.hold_request(self.name, join, bound, desired.hold_until,
                                    self.settings.hold_exit_margin, self.settings.sandbox_image)
        try:
            await self.engine.create_and_start(req)
        except EngineError as e:
            self._note(f"pause: {e}")
            raise
        log.info("hold started: new connections wait in %s", req.name,
                 extra={"app": self.name, "until": desired.hold_until})
        self.wake()  # the next sync steers new connections to it

    # ---- the release step -------------------------------------------------------------

    async def _release(self, spec: AppSpec, desired: Desired, p: AppPlan) -> None:
        """Start the target revision's release container, or record how it ended (a failed
        one fails the rollout, or the first `run`), then let it go: removed by a retirement,
        so a long stop never holds the pass."""
        revision = desired.revision
        if revision is None or desired.hash is None:
            return
        if p.start_release:
            await self._ensure_network(spec)
            req = template.release_request(spec, revision, desired.hash,
                                           self.default_pids_limit)
            try:
                await self.engine.create_and_start(req)
            except EngineError as e:
                self._note(f"release of revision {revision}: {e}")
                raise
            self.view.release = ReleaseReport(revision, "running", at=self.wall())
            log.info("release of revision %d started: %s", revision, " ".join(req.command),
                     extra={"app": self.name, "revision": revision})
        elif p.releasing is not None and self.view.release is None:
            # A daemon restarted while it runs: status says so again.
            self.view.release = ReleaseReport(revision, "running",
                                              at=p.releasing.started_at or self.wall())
        c = p.release_exited or p.release_overdue
        if c is None:
            return
        rev = c.revision or revision
        tail = await self.engine.logs_tail(c.id, 1)
        if c is p.release_overdue:
            result = "timed_out"
            reason = (f"release of revision {rev} did not finish within "
                      f"{self.settings.release_timeout:g}s")
        else:
            result = "succeeded" if c.exit_code == 0 else "failed"
            code = "exited" if c.exit_code is None else f"exited with code {c.exit_code}"
            reason = f"release of revision {rev} {code}" + (f": {tail}" if tail else "")
        self.metrics.release_runs.labels(app=self.name, result=result).inc()
        self.view.release = ReleaseReport(rev, "succeeded" if result == "succeeded"
                                          else "failed", c.exit_code, tail, self.wall(), reason)
        self._note(reason)
        if result == "succeeded":
            log.info("%s", reason, extra={"app": self.name, "revision": rev})
            await self.apps.release_passed(self.name, rev)
        else:
            log.warning("%s", reason, extra={"app": self.name, "revision": rev})
            rec = self.apps.record(self.name)
            ro = rec.rollout if rec is not None else None
            if ro is not None and ro.active and ro.target == rev:
                self.metrics.rollout_failures.labels(app=self.name).inc()
                await self.apps.rollout_failed(self.name, rev, reason, release=True)
            else:
                self._fail(reason)  # a first run: nothing to go back to
        # Recorded first: a daemon that dies now finds the container again and reads it again.
        self.retirements.start(c, None)
        self.wake()

    async def _ensure_network(self, spec: AppSpec) -> None:
        """lbctl's own network, before a container that template.attachment puts there."""
        if template.attachment(spec).own:
            try:
                await self.engine.ensure_network(self.own_network)
            except EngineError as e:
                self._note(str(e))
                raise

    async def _create_sandbox(self, spec: AppSpec) -> None:
        if self._had_sandbox:
            self.metrics.sandbox_repairs.labels(app=self.name).inc()
            log.warning("sandbox lost: recreating it and re-joining replicas",
                        extra={"app": self.name})
        await self._ensure_network(spec)
        req = template.sandbox_request(spec, self.settings.sandbox_image)
        try:
            await self.engine.create_and_start(req)
        except EngineError as e:
            self._note(f"creating sandbox: {e}")
            raise
        self._had_sandbox = True

    async def _create_replicas(self, spec: AppSpec, desired: Desired, p: AppPlan) -> None:
        now = self.now()
        # Within a millisecond is due: a wake-up scheduled for the remaining 1e-16 s can
        # come at the same clock reading, and would be scheduled again, forever.
        if self.create_not_before - now > 1e-3:
            asyncio.get_running_loop().call_later(self.create_not_before - now, self.wake)
            return
        rec = self.apps.record(self.name)
        owner = rec.owner if rec is not None else None
        pids, memory = self._defaults(owner)
        reqs: list[tuple[CreateRequest, int | None]] = []
        placed: dict[str, AppSpec] = {}  # the specs of replicas with networks of their own
        images: dict[str, ImageFacts | None] = {}
        refused: dict[str, str | None] = {}  # spec hash -> why its replicas may not be made
        for create in p.create:
            template_spec = spec
            revision = desired.revision
            if create.spec_hash != spec.spec_hash():
                found = self.apps.revision_spec(self.name, create.spec_hash)
                if found is None:
                    continue
                template_spec = found
                revision = None
            if owner is not None:
                if create.spec_hash not in refused:
                    refused[create.spec_hash] = await self._refusal(template_spec, owner)
                if refused[create.spec_hash] is not None:
                    continue
            join = p.sandbox.id if spec.mode is Mode.EBPF and p.sandbox else None
            if join is None:
                placed[create.spec_hash] = template_spec
            activation = None
            if template_spec.activated:
                activation = await self._activation(template_spec, create.index, images)
                if activation is None:
                    continue
            try:
                req = template.replica_request(template_spec, create.index, create.spec_hash,
                                               revision, join, pids, activation,
                                               default_memory=memory)
            except InvalidInput as e:
                self._fail(str(e))
                continue
            reqs.append((req, revision))
        reasons = sorted({r for r in refused.values() if r is not None})
        self._refused(reasons[0] if reasons else None)
        # Each revision's networks (another revision's --network may differ).
        for placed_spec in placed.values():
            await self._ensure_network(placed_spec)
        if p.rollout_step and reqs:
            self.last_step = now
            for c in p.create:
                log.info("rollout step: starting %s", replica_name(self.name, c.index),
                         extra={"app": self.name, "revision": desired.revision})
        if reqs:
            await asyncio.gather(*(self._create_one(req, rev) for req, rev in reqs))

    async def _activation(self, spec: AppSpec, index: int,
                          images: dict[str, ImageFacts | None]) -> template.Activation | None:
        """What an activated replica is created with: its socket, served before its container
        exists (its shim asks at once), and what its image runs (the shim's arguments), one
        inspect per image and pass. None: the image is gone (the next pass tries again)."""
        assert self.activation is not None  # _blocked() holds activated apps without it
        if spec.image not in images:
            images[spec.image] = await self.engine.image_facts(spec.image)
        facts = images[spec.image]
        if facts is None:
            self._note(f"image {spec.image} is not on the engine")
            return None
        name = replica_name(spec.name, index)
        socket_dir = self.activation.serve(spec.name, name, spec.publishes)
        return template.Activation(self.activation.shim, socket_dir, facts, self.shim_timeout)

    def _defaults(self, owner: int | None) -> tuple[int | None, int | None]:
        """(pids limit, memory bytes) of a replica whose app sets none: the daemon's pids
        default; a member's replica is never unlimited (limits.Defaults)."""
        d = self.apps.defaults
        if owner is None:
            return self.default_pids_limit, None
        return self.default_pids_limit or d.member_pids, d.member_memory

    async def _refusal(self, spec: AppSpec, owner: int) -> str | None:
        """Why a replica of a member's app may not be created now (its bind sources, its
        volumes, judged as its owner); None: it may. The check failing is a refusal."""
        if self.guard is None:
            return None
        try:
            return await self.guard.recheck(spec, owner)
        except EngineError as e:
            return f"cannot judge its volumes: {e}"

    def _refused(self, reason: str | None) -> None:
        """A create the policy refused: reported in `status` (the app's error) and the log
        once, retried with the crash loop's backoff (the path may be put right); the app
        keeps the replicas it has."""
        if reason is None:
            if self.view.refused is not None:
                log.info("replica creates allowed again", extra={"app": self.name})
            self.view.refused = None
            return
        line = f"replica create refused: policy: {reason}"
        if line != self.view.refused:
            log.error("%s", line, extra={"app": self.name})
        self.view.refused = line
        self._note(line)
        self._bump_backoff()

    async def _create_one(self, req: CreateRequest, revision: int | None) -> None:
        fields = {"app": self.name, "replica": req.name}
        try:
            await self.engine.create_and_start(req)
            log.info("replica started", extra={**fields, "revision": revision})
        except EngineError as e:
            self._note(str(e))
            log.warning("replica start failed: %s", e, extra=fields)
            self._bump_backoff()
            # A failed start leaves a created container behind; a later pass removes it.

    def _bump_backoff(self) -> None:
        """Crash-looping replicas are recreated with exponential backoff, not in a tight
        loop; a converged app starts afresh."""
        self.create_failures += 1
        backoff = min(self.settings.create_backoff_max, 0.5 * 2 ** (self.create_failures - 1))
        self.create_not_before = self.now() + backoff

    # ---- reports ------------------------------------------------------------------------------

    async def _report(self, desired: Desired, p: AppPlan) -> None:
        for c in p.crashed:
            if c.id in self.reported:
                continue
            self.reported.add(c.id)
            self._bump_backoff()
            await self._report_crash(c)
        apps = self.apps
        rec = apps.record(self.name)
        ro = rec.rollout if rec else None
        if ro is None or desired.revision is None or not ro.active:
            return
        if p.rollout_failure:
            self.metrics.rollout_failures.labels(app=self.name).inc()
            reason = p.rollout_failure
            culprit = p.rollout_culprit
            if culprit is not None:
                # What the replica said last is usually why: the operator sees it at once;
                # for one that runs but never got ready, so is its last probe.
                probed = self.probes.records.get(culprit.id)
                if culprit.running and probed is not None and probed.last_failure is not None:
                    reason = f"{reason} (last probe: {probed.last_failure.line})"
                tail = await self.engine.logs_tail(culprit.id, 1)
                if tail:
                    reason = f"{reason}: {tail}"
            await apps.rollout_failed(self.name, desired.revision, reason)
        elif p.rollout_complete and desired.canary is None:
            await apps.rollout_complete(self.name, desired.revision)

    async def _report_crash(self, c: Container) -> None:
        tail = await self.engine.logs_tail(c.id, 1)
        rep = CrashReport(c.name, c.exit_code, tail, time.time(), c.revision)
        self.view.crash = rep
        self._note(rep.line)
        log.warning("replica exited before it was ready: %s", rep.line,
                    extra={"app": self.name, "replica": c.name})

    def _step_log(self, what: str, c: Container) -> None:
        log.info("rollout step: %s %s", what, c.name,
                 extra={"app": self.name, "replica": c.name, "revision": c.revision})

    def _fail(self, message: str) -> None:
        if self.view.error != message:
            log.error("app failed: %s", message, extra={"app": self.name})
        self.view.error = message
        self.view.error_generation = self.apps.generation(self.name)

    def _note(self, message: str) -> None:
        self.view.last_event = message

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- probes -------------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        """Starts the replicas' probes as they fall due (the app's readiness interval); each
        wakes the worker when its verdict changes (rounds.ReplicaProbes)."""
        interval = ReadinessProbe().interval
        while True:
            await asyncio.sleep(interval)
            spec = self.apps.desired(self.name).spec
            if spec is None:
                continue
            interval = spec.readiness.interval
            try:
                await self._probe(spec, self.view.containers, only_new=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probe round failed", extra={"app": self.name})

    async def _probe(self, spec: AppSpec, containers: list[Container], only_new: bool) -> bool:
        """Probe running replicas that are due; with `only_new` (a pass), the never-probed
        ones, waiting for their answers: True when a verdict changed."""
        return await self.probes.round(spec, containers, self._fail, self.retirements.ids(),
                                       only_new)


def _counts(p: AppPlan, containers: list[Container]) -> dict[ReplicaState, int]:
    counts: dict[ReplicaState, int] = {}
    for c in containers:
        st = p.states.get(c.id)
        if st is not None:
            counts[st] = counts.get(st, 0) + 1
    return counts


def _summary(e: BaseException) -> str:
    if isinstance(e, EbpfError):
        return e.summary
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
