"""The controller: one worker task per app, created and retired as apps come and go, fed by the
engine's event watch; the shared host-rules loop; and the liveness that the systemd watchdog
is fed from.

The event watch never ends on its own: it reconnects with backoff and, after every
(re)connect, wakes every worker for a full pass, since events may have been missed while it
was away. A periodic discovery list (one engine call) finds apps nobody told us about
(containers of a deleted app left by a crashed daemon) and proves the engine answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from lbctl.controller import clock
from lbctl.controller.apps import AppsService
from lbctl.controller.hostrules import HostRules
from lbctl.controller.interfaces import EnginePort
from lbctl.controller.metrics import Metrics
from lbctl.controller.view import AppView
from lbctl.controller.worker import AppWorker
from lbctl.model.errors import EngineError
from lbctl.settings import WorkerSettings

log = logging.getLogger("lbctl.controller")


class Controller:
    def __init__(
        self,
        *,
        apps: AppsService,
        hostrules: HostRules,
        engine: EnginePort,
        new_worker: Callable[[str], AppWorker],
        metrics: Metrics,
        settings: WorkerSettings,
        pinned_apps: Callable[[], list[str]] = list,
        now: Callable[[], float] = clock.monotonic,
    ) -> None:
        """`new_worker`: one app's worker, with its collaborators (the daemon's wiring, or a
        test's on fakes); `pinned_apps`: apps the eBPF data plane holds objects of (a
        restarted daemon adopts them)."""
        self.apps = apps
        self.hostrules = hostrules
        self.engine = engine
        self.new_worker = new_worker
        self.metrics = metrics
        self.settings = settings
        self.pinned_apps = pinned_apps
        self.now = now
        self.workers: dict[str, AppWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.first_sync = asyncio.Event()
        self.last_discovery = -math.inf  # clock time the engine last answered a full list
        self._stopping = False
        self._connected_once = False
        self._discover_now = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------------

    def on_change(self, app: str) -> None:
        """The apps service changed `app`: make sure a worker exists and wake it."""
        self.ensure(app).wake()

    def ensure(self, app: str) -> AppWorker:
        w = self.workers.get(app)
        if w is None:
            w = self.new_worker(app)
            self.workers[app] = w
            self._tasks[app] = asyncio.create_task(self._run_worker(w), name=f"worker {app}")
        return w

    async def _run_worker(self, w: AppWorker) -> None:
        try:
            await w.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker ended unexpectedly; restarting it", extra={"app": w.name})
            self.workers.pop(w.name, None)
            self._tasks.pop(w.name, None)
            await asyncio.sleep(1.0)
            self.ensure(w.name)
            return
        # The app is deleted and gone.
        self.workers.pop(w.name, None)
        self._tasks.pop(w.name, None)
        self.metrics.forget_app(w.name)
        self.apps.finish_delete(w.name)
        log.info("app removed", extra={"app": w.name})
        if w.name in self.apps.names():  # created again meanwhile
            self.ensure(w.name)

    async def run(self) -> None:
        for app in self.apps.names() | self.hostrules.load() | set(self.pinned_apps()):
            self.ensure(app)
        tasks = [
            asyncio.create_task(self.hostrules.run(), name="host rules"),
            asyncio.create_task(self._watch(), name="watch"),
            asyncio.create_task(self._discovery(), name="discovery"),
            asyncio.create_task(self._first_sync(), name="first sync"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            self._stopping = True
            all_tasks = [*tasks, *self._tasks.values()]
            for t in all_tasks:
                t.cancel()
            await asyncio.gather(*all_tasks, return_exceptions=True)

    async def _first_sync(self) -> None:
        """Ready (systemd's READY=1, /healthz synced) once every app known at start went
        through one pass, well or not: the data plane then reflects what runs, and an app
        that cannot be synced (its error is in `status`) must not keep the daemon unready."""
        while True:
            if all(w.last_pass is not None for w in self.workers.values()):
                self.first_sync.set()
                return
            await asyncio.sleep(0.05)

    # ---- watch and discovery --------------------------------------------------------------

    async def _watch(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                async for ev in self.engine.events():
                    if ev is None:
                        if self._connected_once:
                            self.metrics.watch_restarts.inc()
                        self._connected_once = True
                        log.info("engine event stream connected",
                                 extra={"engine": self.engine.url})
                        backoff = 0.2
                        self._wake_all()
                        self._discover_now.set()
                        # A restarted dockerd put its FORWARD jumps back on top of ours.
                        self.hostrules.resync()
                        continue
                    if ev.kind == "network":
                        # Docker just put its jumps above lbctl's (runtime.events): until
                        # the next sync, its isolation drops cross-bridge clients.
                        self.hostrules.resync()
                        continue
                    self.metrics.events.labels(action=ev.action).inc()
                    if ev.app is None:
                        continue
                    w = self.workers.get(ev.app)
                    if w is not None:
                        w.on_event(ev)
                    elif ev.action in ("create", "start"):
                        self._discover_now.set()  # a managed container of an unknown app?
                log.warning("engine event stream ended; reconnecting")
            except EngineError as e:
                log.warning("engine event stream: %s; retrying in %.1fs", e, backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine event stream failed; retrying in %.1fs", backoff)
            self._wake_all()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _wake_all(self) -> None:
        for w in self.workers.values():
            w.wake()

    async def _discovery(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.discovery_interval):
                    await self._discover_now.wait()
            self._discover_now.clear()
            self.apps.retake_ports()  # a port in use at start, free now, is ours again
            try:
                containers = await self.engine.list_containers()
            except EngineError as e:
                log.warning("discovery: %s", e)
                continue
            self.last_discovery = self.now()
            known = self.apps.names()
            for c in containers:
                # Deleted apps' managed containers (left by a daemon that crashed mid-rm)
                # get a worker that drains and removes them. Adopted containers of an app
                # that does not exist are not ours to act on.
                if c.app and c.app not in self.workers and (c.managed or c.app in known):
                    self.ensure(c.app)

    # ---- liveness -------------------------------------------------------------------------

    def alive(self, window: float) -> bool:
        """For the watchdog: the engine answered a full list within `window` seconds, and
        every worker finished a pass (well or not: a failed pass still proves it is not hung)
        within its pass time limit and a margin."""
        now = self.now()
        if now - self.last_discovery > window:
            return False
        limit = max(window, self.settings.pass_timeout + 5.0)
        return all(now - w.last_pass <= limit for w in self.workers.values()
                   if w.last_pass is not None)

    def worker(self, app: str) -> AppWorker | None:
        return self.workers.get(app)

    def view(self, app: str) -> AppView | None:
        """What the app's worker last saw and did (None: no worker yet)."""
        w = self.workers.get(app)
        return w.view if w is not None else None

    def synced(self) -> bool:
        """Every app known at start went through one pass (/healthz, READY=1)."""
        return self.first_sync.is_set()

