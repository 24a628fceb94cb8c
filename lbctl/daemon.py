"""`lbctl daemon`: wires the engine, the state store, the data planes, the controller, the
control socket and the metrics endpoint together, and runs until SIGTERM.

Stopping the daemon leaves the data plane as it is: the rules and the attached eBPF program
keep serving the replicas that run, and a restarted daemon adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from lbctl import __version__, malloc, sdnotify
from lbctl.api.server import Api
from lbctl.controller import status as status_mod
from lbctl.controller import template
from lbctl.controller.admission import Admission
from lbctl.controller.apps import AppsService
from lbctl.controller.hostrules import HostRules
from lbctl.controller.limits import DEFAULT_MAX_APPS, DEFAULT_MAX_CONTAINERS, daemon_limits
from lbctl.controller.policy import Policy
from lbctl.controller.store import StateStore
from lbctl.controller.supervisor import Controller
from lbctl.controller.template import DEFAULT_PIDS_LIMIT
from lbctl.controller.worker import Settings, Shared
from lbctl.dataplane import hairpin
from lbctl.dataplane.conntrack import forget_backend
from lbctl.dataplane.ebpf import EbpfDataplane
from lbctl.dataplane.hostports import HostPorts
from lbctl.dataplane.iptables import DualStackRules
from lbctl.dataplane.sockets import established_connections
from lbctl.metrics import Metrics
from lbctl.model import InvalidInput, Mode
from lbctl.runtime.engine import CALL_TIMEOUT, Engine

log = logging.getLogger("lbctl.daemon")

DEFAULT_STATE_DIR = "/var/lib/lbctl"
DEFAULT_METRICS_ADDR = "127.0.0.1:9477"
TRIM_INTERVAL = 30.0  # seconds between malloc trims (lbctl.malloc)


@dataclass
class DaemonConfig:
    socket: Path
    state_dir: Path
    metrics_addr: str
    docker_host: str | None
    drain_timeout: float = 10.0
    stop_grace: int = 10
    bpf_pin_root: Path = Path("/sys/fs/bpf/lbctl")
    engine_timeout: float = CALL_TIMEOUT
    unhealthy_grace: float = 30.0
    policy: Policy = field(default_factory=Policy)  # for callers other than root
    max_apps: int = DEFAULT_MAX_APPS  # 0: no cap
    max_containers: int = DEFAULT_MAX_CONTAINERS  # 0: no cap
    default_pids_limit: int = DEFAULT_PIDS_LIMIT  # 0: the engine's default (none on Docker)


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


def build(cfg: DaemonConfig) -> tuple[Controller, Engine, EbpfDataplane | None, Settings]:
    """Every part, wired: the one place that knows the concrete classes."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics = Metrics()
    engine = Engine(cfg.docker_host, call_timeout=cfg.engine_timeout)
    ebpf: EbpfDataplane | None = None
    reason = EbpfDataplane.unavailable_reason()
    if reason is None:
        ebpf = EbpfDataplane(cfg.state_dir, cfg.bpf_pin_root)
    else:
        log.warning("ebpf mode unavailable: %s; apps default to iptables mode", reason)
    settings = Settings(
        drain_timeout=cfg.drain_timeout,
        stop_grace=cfg.stop_grace,
        default_mode=Mode.EBPF if ebpf else Mode.IPTABLES,
        unhealthy_grace=cfg.unhealthy_grace,
        ipv6_subnet=template.ula_subnet(_machine_id()),
        default_pids_limit=cfg.default_pids_limit or None,
    )

    def on_sync(seconds: float, ok: bool) -> None:
        metrics.sync_seconds.labels(dataplane="iptables").observe(seconds)
        if not ok:
            metrics.sync_errors.labels(dataplane="iptables").inc()

    hostrules = HostRules(DualStackRules(cfg.state_dir), cfg.state_dir, on_sync)
    unavailable = EbpfDataplane.unavailable_reason
    ports = HostPorts()
    apps = AppsService(StateStore(cfg.state_dir),
                       Admission(engine, unavailable, port_check=ports.check_spec),
                       ports=ports, limits=daemon_limits(cfg.max_apps, cfg.max_containers))
    shared = Shared(
        engine=engine, apps=apps, hostrules=hostrules, ebpf=ebpf, ebpf_unavailable=unavailable,
        open_connections=established_connections, forget_flows=forget_backend,
        metrics=metrics, settings=settings, hairpin=hairpin.enable_async,
    )
    controller = Controller(shared)
    apps.on_change = controller.on_change
    apps.load()  # a damaged state file stops us here, before anything is touched
    return controller, engine, ebpf, settings


async def serve(cfg: DaemonConfig) -> None:
    controller, engine, ebpf, settings = build(cfg)
    api = Api(controller, settings.default_mode, cfg.policy)
    await api.start(cfg.socket)
    metrics_runner = await _serve_metrics(cfg.metrics_addr, controller)
    log.info(
        "lbctl daemon started",
        extra={
            "version": __version__,
            "socket": str(cfg.socket),
            "engine": engine.url,
            "apps": len(controller.apps.state.apps),
            "default_mode": str(settings.default_mode),
            "policy": str(cfg.policy.path) if cfg.policy.from_file else "built-in",
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    run = asyncio.create_task(controller.run())
    ready = asyncio.create_task(_notify_ready(controller))
    watchdog = asyncio.create_task(_watchdog(controller))
    trimmer = asyncio.create_task(_trim_memory())
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
        await api.stop()
        await metrics_runner.cleanup()
        await engine.close()
        if controller.apps.ports is not None:
            controller.apps.ports.close()
        if ebpf is not None:
            ebpf.close()  # our fds only: the pins and the attached programs keep serving
        with contextlib.suppress(OSError):
            cfg.socket.unlink()


async def _notify_ready(controller: Controller) -> None:
    await controller.first_sync.wait()
    # Logged before READY, so that in the journal it precedes systemd's "Started".
    log.info("first sync done", extra={"apps": len(controller.apps.state.apps)})
    sdnotify.notify("READY=1")


async def _trim_memory() -> None:
    """What a burst freed (a scale storm's engine payloads, a large status) goes back to the
    kernel within TRIM_INTERVAL instead of staying in RSS for the daemon's life; a trim of
    the daemon's heap takes well under a millisecond, so the loop does it itself."""
    while True:
        await asyncio.sleep(TRIM_INTERVAL)
        malloc.trim()


async def _watchdog(controller: Controller) -> None:
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
    window = max(2 * interval, 15.0)
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


async def _serve_metrics(addr: str, controller: Controller) -> web.AppRunner:
    host, port = parse_addr(addr)
    metrics = controller.s.metrics

    async def handle(request: web.Request) -> web.Response:
        await status_mod.counters(controller)  # kernel counters are read at scrape time
        return web.Response(
            body=metrics.render(), content_type="text/plain", charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
