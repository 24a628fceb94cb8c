"""`lbctl daemon`: wires the engine, the state store, the data planes, the controller, the
control socket and the metrics endpoint together, and runs until SIGTERM.

Stopping the daemon leaves the data plane as it is: the rules and the attached eBPF program
keep serving the replicas that run, and a restarted daemon adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from aiohttp import web

from lbctl import __version__, instance_lock, malloc, sdnotify
from lbctl.api.listener import BACKLOG, EVENTS, FdBudget, GuardedListener, ListenerLimits
from lbctl.api.server import Api
from lbctl.controller import template
from lbctl.controller.activation import ActivationQuestions, ListenerStates
from lbctl.controller.admission import Admission
from lbctl.controller.app_logs import AppLogs
from lbctl.controller.apply import AppDataplane
from lbctl.controller.apps import AppsService
from lbctl.controller.counters import KernelCounters
from lbctl.controller.draining import Drains
from lbctl.controller.hostrules import HostRules
from lbctl.controller.limits import Defaults, daemon_limits
from lbctl.controller.metrics import Metrics
from lbctl.controller.policy import Policy
from lbctl.controller.readiness.answers import Questions
from lbctl.controller.readiness.rounds import ReplicaProbes
from lbctl.controller.sources import SourceGuard
from lbctl.controller.status import Status
from lbctl.controller.store import StateStore
from lbctl.controller.supervisor import Controller
from lbctl.controller.worker import AppWorker
from lbctl.dataplane import hairpin, hostnet
from lbctl.dataplane.activation import ActivationServer
from lbctl.dataplane.conntrack import forget_backend
from lbctl.dataplane.ebpf import EbpfDataplane
from lbctl.dataplane.hostports import HostPorts
from lbctl.dataplane.iptables import DualStackRules
from lbctl.dataplane.sockets import established_connections
from lbctl.model import Container, InvalidInput, Mode
from lbctl.model.host import HostFacts
from lbctl.runtime.engine import Engine
from lbctl.runtime.hostfiles import HostFiles, read_host_facts
from lbctl.settings import Settings

log = logging.getLogger("lbctl.daemon")


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(f"invalid address {text!r}: use HOST:PORT")
    return host, int(port)


def _machine_id() -> str:
    """What makes this host's ULA subnet its own (template.ula_subnet)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            text = Path(path).read_text().strip()
            if text:
                return text
    return socket.gethostname()


@dataclass
class Daemon:
    """Every part, wired: what `serve` runs, serves and closes."""

    controller: Controller
    api: Api
    metrics: Metrics
    counters: KernelCounters
    apps: AppsService
    engine: Engine
    ebpf: EbpfDataplane | None
    activation: ActivationServer | None
    host_ports: HostPorts
    default_mode: Mode


def lock(settings: Settings) -> list[int]:
    """The state dir's and the pin root's locks (lbctl.instance_lock), before anything is
    touched; raises AlreadyRunning naming the daemon that holds one."""
    d = settings.daemon
    fds = [instance_lock.hold(instance_lock.state_dir_lock(d.state_dir),
                              f"state dir {d.state_dir}", "--state-dir")]
    try:
        fds.append(instance_lock.hold(
            instance_lock.pin_root_lock(d.lock_dir, settings.ebpf.pin_root),
            f"bpf pin root {settings.ebpf.pin_root}", "--bpf-pin-root"))
    except BaseException:
        os.close(fds[0])
        raise
    return fds


def build(settings: Settings, policy: Policy | None = None,
          socket_path: Path | None = None) -> Daemon:
    """Every part, wired: the one place that knows the concrete classes and gives each part
    the collaborators it works with."""
    state_dir = settings.daemon.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics = Metrics()
    engine = Engine(settings.engine)
    host = read_host_facts()
    policy = member_policy(policy or Policy(), host, state_dir, socket_path, engine.url)
    ebpf: EbpfDataplane | None = None
    reason = EbpfDataplane.unavailable_reason()
    if reason is None:
        ebpf = EbpfDataplane(state_dir, settings=settings.ebpf)
    else:
        log.warning("ebpf mode unavailable: %s; apps default to iptables mode", reason)
    default_mode = Mode.EBPF if ebpf else Mode.IPTABLES
    # Socket activation hands out listeners that the eBPF program steers: none without it.
    activation = (ActivationServer(state_dir, settings.activation, insert=ebpf.insert)
                  if ebpf is not None else None)
    if activation is not None and (why := activation.unavailable()):
        log.warning("socket activation unavailable: %s; apps use the sandbox path", why)

    def on_sync(seconds: float, ok: bool) -> None:
        metrics.sync_seconds.labels(dataplane="iptables").observe(seconds)
        if not ok:
            metrics.sync_errors.labels(dataplane="iptables").inc()

    rules = DualStackRules(state_dir, settings=settings.iptables)
    hostrules = HostRules(rules, state_dir, settings.hostrules, on_sync)
    unavailable = EbpfDataplane.unavailable_reason
    host_ports = HostPorts()
    guard = SourceGuard(engine, HostFiles(engine.url, settings.engine.call_timeout))
    defaults = Defaults(settings.limits.default_pids_limit or None, policy.max_pids_limit,
                        policy.default_memory_bytes)
    apps = AppsService(StateStore(state_dir),
                       Admission(engine, unavailable, hostnet.ipv6_unavailable_reason,
                                  port_check=host_ports.check_spec, host=host,
                                  min_health_interval=settings.limits.min_health_interval,
                                  activation_unavailable=(
                                      activation.unavailable if activation is not None
                                      else lambda: "ebpf mode is not available here")),
                       host_ports=host_ports, limits=daemon_limits(settings.limits),
                       guard=guard, defaults=defaults)
    listeners = ListenerStates()
    questions = ActivationQuestions(Questions(ebpf, hostnet.ipv6_settled), ebpf, activation,
                                    listeners)
    drains = Drains(ebpf, established_connections, forget_backend, settings.drain)
    own_network = template.network_spec(template.ula_subnet(_machine_id()))

    def new_worker(app: str) -> AppWorker:
        return AppWorker(
            app, engine=engine, apps=apps,
            dataplane=AppDataplane(app, hostrules, ebpf, unavailable, hairpin.enable_async,
                                   metrics),
            drains=drains, probes=ReplicaProbes(app, questions, ebpf, settings.probes,
                                                metrics=metrics),
            metrics=metrics, settings=settings, own_network=own_network,
            activation=activation, guard=guard,
        )

    controller = Controller(apps=apps, hostrules=hostrules, engine=engine,
                            new_worker=new_worker, metrics=metrics, settings=settings.worker,
                            pinned_apps=ebpf.pinned_apps if ebpf is not None else list)
    apps.on_change = controller.on_change
    apps.load()  # a damaged state file stops us here, before anything is touched
    counters = KernelCounters(rules, ebpf, apps, metrics, settings.api.counters_max_age)
    def containers(app: str) -> list[Container] | None:
        view = controller.view(app)
        return view.containers if view is not None else None

    logs = AppLogs(engine, lambda app: apps.record(app) is not None, containers, settings.logs)
    for listener in ("control", "metrics"):
        for event in EVENTS:
            metrics.listener_events.labels(listener=listener, event=event)
    api = Api(apps, Status(apps, counters, controller, listeners=listeners), default_mode,
              policy, settings=settings.api, report=_reporter(metrics), logs=logs)
    metrics.listener_connections.labels(listener="control").set_function(api.listener.count)
    return Daemon(controller, api, metrics, counters, apps, engine, ebpf, activation,
                  host_ports, default_mode)


def _reporter(metrics: Metrics) -> Callable[[str, str], None]:
    def report(listener: str, event: str) -> None:
        metrics.listener_events.labels(listener=listener, event=event).inc()
    return report


def raise_open_files(target: int) -> tuple[int, int]:
    """RLIMIT_NOFILE's soft limit up to its hard one, at most `target` (never lowered):
    the kernel's default soft limit, 1024, is what idle connections took from syncs.
    Returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft, hard


async def serve(settings: Settings, sock: Path, policy: Policy | None = None) -> None:
    soft, hard = raise_open_files(settings.daemon.max_open_files)
    if soft < 4 * settings.api.fd_reserve:
        log.warning("open files limited to %d (hard limit %d): the listeners keep %d of them "
                    "for syncs; raise LimitNOFILE=", soft, hard, settings.api.fd_reserve)
    locks = lock(settings)
    try:
        await _serve(settings, sock, policy or Policy())
    finally:
        for fd in locks:
            os.close(fd)


def member_policy(policy: Policy, host: HostFacts, state_dir: Path, socket_path: Path | None,
                  engine_url: str) -> Policy:
    """The policy with this host's numbers (its ceilings' shares) and this daemon's paths
    that no member may bind-mount: the control socket's directory, the state dir, the
    engine's socket (as given and as resolved)."""
    paths = [str(state_dir)]
    if socket_path is not None:
        paths.append(str(socket_path.parent))
    url = urlparse(engine_url)
    if url.scheme == "unix" and url.path:
        paths += [url.path, os.path.realpath(url.path)]
    own = tuple(os.path.normpath(os.path.abspath(p)) for p in paths)
    return replace(policy, host=host,
                   protected=tuple(dict.fromkeys((*policy.protected, *own))))


async def _serve(settings: Settings, sock: Path, policy: Policy) -> None:
    d = build(settings, policy, sock)
    controller = d.controller
    await d.api.start(sock)
    metrics_runner, metrics_listener = await _serve_metrics(settings, d.metrics, d.counters)
    log.info(
        "lbctl daemon started",
        extra={
            "version": __version__,
            "socket": str(sock),
            "engine": d.engine.url,
            "apps": len(d.apps.state.apps),
            "default_mode": str(d.default_mode),
            "policy": str(policy.path) if policy.from_file else "built-in",
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    run = asyncio.create_task(controller.run())
    ready = asyncio.create_task(_notify_ready(controller, d.apps))
    # Stalled: no full list for one discovery period plus an engine call's whole timeout.
    watchdog = asyncio.create_task(_watchdog(
        controller, settings.worker.discovery_interval + settings.engine.call_timeout))
    trimmer = asyncio.create_task(_trim_memory(settings.daemon.trim_interval))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if run in done:
            run.result()
    finally:
        sdnotify.notify("STOPPING=1")
        log.info("lbctl daemon stopping; the data plane keeps serving")
        for t in (run, ready, watchdog, trimmer, stopper):
            t.cancel()
        await asyncio.gather(run, ready, watchdog, trimmer, stopper, return_exceptions=True)
        await d.api.stop()
        metrics_listener.close()
        await metrics_runner.cleanup()
        await d.engine.close()
        d.host_ports.close()
        if d.activation is not None:
            d.activation.close()  # the sockets' files stay: a waiting shim retries
        if d.ebpf is not None:
            d.ebpf.close()  # our fds only: the pins and the attached programs keep serving
        with contextlib.suppress(OSError):
            sock.unlink()


async def _notify_ready(controller: Controller, apps: AppsService) -> None:
    await controller.first_sync.wait()
    # Logged before READY, so that in the journal it precedes systemd's "Started".
    log.info("first sync done", extra={"apps": len(apps.state.apps)})
    sdnotify.notify("READY=1")


async def _trim_memory(interval: float) -> None:
    """What a burst freed (a scale storm's engine payloads, a large status) goes back to the
    kernel within `interval` instead of staying in RSS for the daemon's life; a trim of
    the daemon's heap takes well under a millisecond, so the loop does it itself."""
    while True:
        await asyncio.sleep(interval)
        malloc.trim()


async def _watchdog(controller: Controller, stall: float) -> None:
    """Fed only while the controller works: the engine answered a full list and every
    worker finished a pass recently. A wedged engine stops the feeding, and systemd restarts
    the daemon (the data plane keeps serving meanwhile)."""
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return
    # systemd arms the watchdog once READY=1 arrives, and the first feed is due within
    # WatchdogSec: checking first one interval later gives the engine's first full list
    # (which READY does not wait for when there is no app) the time to arrive, instead of
    # reporting a stall that is only a start.
    await controller.first_sync.wait()
    window = max(2 * interval, stall)
    stalled = False
    while True:
        await asyncio.sleep(interval)
        if controller.alive(window):
            sdnotify.notify("WATCHDOG=1")
            stalled = False
        elif not stalled:
            log.error("controller stalled (the engine does not answer): not feeding the "
                      "watchdog")
            stalled = True


async def _serve_metrics(settings: Settings, metrics: Metrics, counters: KernelCounters,
                         ) -> tuple[web.AppRunner, GuardedListener]:
    """The metrics port: no authentication (any local user may connect), so guarded like
    the control socket (lbctl.api.listener), with no caller to count by."""
    host, port = parse_addr(settings.daemon.metrics_addr)
    api = settings.api
    guard = GuardedListener(
        ListenerLimits("metrics", "metrics port", api.metrics_max_connections,
                       api.idle_timeout, api.header_timeout),
        FdBudget(api.fd_reserve), _reporter(metrics))
    metrics.listener_connections.labels(listener="metrics").set_function(guard.count)

    async def handle(request: web.Request) -> web.Response:
        # The kernel's counters, shared with status and other scrapes (controller.counters)
        await counters.read()
        return web.Response(
            body=metrics.render(), content_type="text/plain", charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await guard.start(runner, _tcp_listeners(host, port))
    return runner, guard


def _tcp_listeners(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` names (as aiohttp's TCPSite binds)."""
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(BACKLOG)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks
