"""Fakes at the controller's boundaries (lbctl.controller.interfaces): an engine, the eBPF data
plane and the host rules, all in memory, with knobs for the faults a real host has (a create
that fails, a remove that errors or hangs, an engine call that never answers). The lines at
the end have mypy check each fake against the Protocol it stands in for.

They stand in for the engine and kernel only in logic tests of the controller; every
capability is also tested end to end against the real ones in tests/e2e. The tests that use
them run on looptime's virtual clock (tests/controller/conftest.py): the controller's
intervals and timeouts pass at once, and the time the tests measure is the loop's.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lbctl.controller import template
from lbctl.controller.activation import ActivationQuestions, ListenerStates
from lbctl.controller.admission import Admission
from lbctl.controller.apply import AppDataplane
from lbctl.controller.apps import AppsService
from lbctl.controller.counters import KernelCounters
from lbctl.controller.draining import Drains
from lbctl.controller.hostrules import HostRules
from lbctl.controller.interfaces import (
    ActivationPort,
    Answers,
    AnswersFor,
    ConnectionCounter,
    EbpfPort,
    EnginePort,
    FlowForgetter,
    HostFiles,
    HostPortHolder,
    RulesPort,
)
from lbctl.controller.limits import Defaults, Limits
from lbctl.controller.metrics import Metrics
from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.controller.readiness.rounds import ReplicaProbes
from lbctl.controller.sources import SourceGuard
from lbctl.controller.status import Status
from lbctl.controller.store import StateStore
from lbctl.controller.supervisor import Controller
from lbctl.controller.worker import AppWorker
from lbctl.model import (
    LABEL_APP,
    LABEL_HOLD,
    LABEL_INDEX,
    LABEL_MANAGED,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SPEC_HASH,
    ROLE_REPLICA,
    AppSpec,
    Container,
    Publish,
)
from lbctl.model.dataplane import Bound, Member, Service
from lbctl.model.errors import EngineError
from lbctl.model.log_lines import LogLine
from lbctl.model.runtime import (
    CreateRequest,
    EngineEvent,
    ImageFacts,
    NetworkFacts,
    NetworkSpec,
    PathEntry,
    VolumeFacts,
)
from lbctl.model.spec import Mode
from lbctl.settings import DrainSettings, Settings, WorkerSettings


@dataclass
class FakeContainer:
    c: Container
    image: str
    env: dict[str, str] = field(default_factory=dict)


class FakeEngine:
    url = "fake://engine"

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall  # containers' start times
        self.containers: dict[str, FakeContainer] = {}
        self.ids = itertools.count(1)
        self.pids = itertools.count(1000)
        self.events_q: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self.images = {"img:1", "img:2", "lbctl/pause:latest"}
        self.image_labels: dict[str, dict[str, str]] = {}  # image -> its labels
        # knobs
        self.fail_create: Callable[[CreateRequest], str | None] = lambda req: None
        self.remove_error: Callable[[Container], str | None] = lambda c: None
        self.remove_delay: Callable[[Container], float] = lambda c: 0.0
        self.hang = False  # every call waits forever (a wedged engine)
        self.exit_on_start: Callable[[CreateRequest], int | None] = lambda req: None
        self.removed: list[str] = []
        self.created: list[str] = []
        self.requests: dict[str, CreateRequest] = {}  # the last create of each name
        self.log: list[CreateRequest] = []  # every create, in order
        self.output: dict[str, list[LogLine]] = {}  # container id -> what it wrote
        self.log_reads: list[tuple[str, bool, int | None, int | None]] = []
        self.log_error: Callable[[str], str | None] = lambda cid: None
        # What exists besides containers: volumes, and the networks ensure_network made
        # (tests add others by hand).
        self.volumes: dict[str, VolumeFacts] = {}
        self.networks: dict[str, NetworkSpec] = {}

    async def _maybe_hang(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)

    async def list_containers(self, app: str | None = None) -> list[Container]:
        await self._maybe_hang()
        return [f.c for f in self.containers.values() if app is None or f.c.app == app]

    async def create_and_start(self, req: CreateRequest) -> str:
        await self._maybe_hang()
        if any(f.c.name == req.name for f in self.containers.values()):
            raise EngineError(f"creating container {req.name}: Conflict. The container name "
                              f'"/{req.name}" is already in use')
        err = self.fail_create(req)
        if err:
            raise EngineError(err)
        cid = f"c{next(self.ids):04d}"
        labels = req.labels
        code = self.exit_on_start(req)
        index = labels.get(LABEL_INDEX)
        rev = labels.get(LABEL_REVISION)
        c = Container(
            id=cid, name=req.name, app=labels[LABEL_APP], role=labels.get(LABEL_ROLE, ROLE_REPLICA),
            managed=labels.get(LABEL_MANAGED) == "true", index=int(index) if index else None,
            running=code is None, health=None, ip=f"10.1.{len(self.containers) % 250}.{cid[-2:]}",
            pid=next(self.pids) if code is None else None,
            started_at=self.wall(), joined_to=req.join, bridge="docker0",
            spec_hash=labels.get(LABEL_SPEC_HASH), revision=int(rev) if rev else None,
            exit_code=code, hold=labels.get(LABEL_HOLD),
        )
        self.containers[cid] = FakeContainer(c, req.image, dict(req.env))
        self.created.append(req.name)
        self.requests[req.name] = req
        self.log.append(req)
        return cid

    async def stop_and_remove(self, container_id: str, grace: int) -> None:
        await self._maybe_hang()
        f = self.containers.get(container_id)
        if f is None:
            return
        delay = self.remove_delay(f.c)
        if delay:
            await asyncio.sleep(delay)
        err = self.remove_error(f.c)
        if err:
            raise EngineError(err)
        self.containers.pop(container_id, None)
        self.removed.append(f.c.name)
        self.events_q.put_nowait(EngineEvent("destroy", container_id, f.c.app))

    async def image_exists(self, image: str) -> bool:
        await self._maybe_hang()
        return image in self.images

    async def image_facts(self, image: str) -> ImageFacts | None:
        await self._maybe_hang()
        if image not in self.images:
            return None
        return ImageFacts(self.image_labels.get(image, {}), ("/httpd",), ("--serve",))

    async def cpu_count(self) -> int | None:
        return 2

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> bool:
        await self._maybe_hang()
        if name in self.volumes:
            return False
        self.volumes[name] = VolumeFacts("local", {}, dict(labels))
        return True

    async def volume(self, name: str) -> VolumeFacts | None:
        await self._maybe_hang()
        return self.volumes.get(name)

    async def remove_volume(self, name: str) -> bool:
        await self._maybe_hang()
        return self.volumes.pop(name, None) is not None

    async def count_labelled(self, kind: str, label: str, value: str) -> int:
        items: list[Mapping[str, str]] = (
            [n.labels for n in self.networks.values()] if kind == "network"
            else [v.labels for v in self.volumes.values()])
        return sum(1 for labels in items if labels.get(label) == value)

    async def ensure_network(self, spec: NetworkSpec) -> bool:
        await self._maybe_hang()
        if spec.name in self.networks:
            return False
        self.networks[spec.name] = spec
        return True

    async def network(self, name: str) -> NetworkFacts | None:
        await self._maybe_hang()
        spec = self.networks.get(name)
        if spec is None:
            return None
        return NetworkFacts("bridge", spec.ipv6_subnet is not None,
                            spec.labels.get(LABEL_MANAGED) == "true")

    async def remove_network(self, name: str, labels: Mapping[str, str]) -> bool:
        await self._maybe_hang()
        spec = self.networks.get(name)
        if spec is None or any(spec.labels.get(k) != v for k, v in labels.items()):
            return False
        del self.networks[name]
        return True

    async def logs_tail(self, container_id: str, lines: int = 3) -> str:
        return "exec: no such file"

    async def logs(self, container_id: str, *, follow: bool, since: int | None = None,
                   tail: int | None = None) -> AsyncIterator[LogLine]:
        """What `write` gave the container, as the engine's log API gives it: since/tail
        applied to what is there, then (follow) what comes, until the container stops."""
        await self._maybe_hang()
        self.log_reads.append((container_id, follow, since, tail))
        err = self.log_error(container_id)
        if err:
            raise EngineError(err)
        if container_id not in self.containers and container_id not in self.output:
            return
        lines = self.output.setdefault(container_id, [])
        backlog = [ln for ln in lines if since is None or ln.time >= since]
        if tail is not None:
            backlog = backlog[len(backlog) - tail:] if tail else []
        seen = len(lines)
        for ln in backlog:
            yield ln
        while follow:
            while seen < len(lines):
                seen += 1
                yield lines[seen - 1]
            f = self.containers.get(container_id)
            if f is None or not f.c.running:
                return
            await asyncio.sleep(0.01)

    async def events(self) -> AsyncIterator[EngineEvent | None]:
        yield None
        while True:
            ev = await self.events_q.get()
            if ev is None:
                return
            yield ev

    def forget(self, container_id: str) -> None:
        pass

    # ---- what tests do to the "host" --------------------------------------------------------

    def kill(self, name: str, code: int = 137) -> Container:
        f = next(f for f in self.containers.values() if f.c.name == name)
        f.c = replace(f.c, running=False, pid=None, exit_code=code)
        self.events_q.put_nowait(EngineEvent("die", f.c.id, f.c.app))
        return f.c

    def write(self, name: str, text: str, at: int, stream: str = "stdout") -> None:
        """The running container `name` writes a line, stamped `at` (ns)."""
        f = next(f for f in self.containers.values() if f.c.name == name and f.c.running)
        self.output.setdefault(f.c.id, []).append(LogLine(at, stream, text))

    def running(self, app: str) -> list[Container]:
        return sorted((f.c for f in self.containers.values()
                       if f.c.app == app and f.c.running and f.c.role == ROLE_REPLICA),
                      key=lambda c: c.name)


class FakeEbpf:
    def __init__(self) -> None:
        self.tables: dict[str, list[str]] = {}
        self.probing: dict[str, list[str]] = {}  # the socket map's members in no table
        self.pinned: set[str] = set()
        self.fail: dict[str, str] = {}
        self.lost: set[str] = set()  # replicas whose listeners are not in the map
        # app -> the members in its socket map (ready, draining, probing, holds): name -> pid
        self.members: dict[str, dict[str, int]] = {}
        self.queue = 0  # what a hold's accept queue holds (queued())
        # probe_socket() gives a socket (never connected here) for a replica whose listeners
        # are in the map, as the real one does; off by default: an HTTP probe would connect
        # it, to this machine's ports.
        self.probe_sockets = False

    async def sync(self, app: str, port: int, netns_pid: int, ready: Sequence[Member],
                   draining: Sequence[Member] = (), proto: str = "tcp",
                   probing: Sequence[Member] = (), holds: Sequence[Member] = ()) -> None:
        from lbctl.model.errors import EbpfError

        if app in self.fail:
            raise EbpfError(self.fail[app])
        self.pinned.add(app)
        # As the real one: while there is a hold, every group's table is its first hold.
        self.tables[app] = [holds[0].name] if holds else sorted(m.name for m in ready)
        self.probing[app] = sorted(m.name for m in probing)
        self.members[app] = {m.name: m.pid for m in (*ready, *draining, *probing, *holds)}

    async def probe_socket(self, app: str, replica: str, pid: int,
                           family: int) -> tuple[socket.socket, str] | None:
        if not self.probe_sockets or replica in self.lost:
            return None
        return socket.socket(), "127.0.0.1"

    async def bound(self, pid: int, port: int, proto: str = "tcp") -> list[Bound]:
        return [Bound(4, "0.0.0.0", port, False, 1000)]

    async def queued(self, pid: int, port: int) -> int:
        return self.queue

    async def has_listener(self, pid: int, port: int, name: str | None = None,
                           proto: str = "tcp") -> bool:
        return True

    async def active_flows(self, app: str, replica: str, within: float) -> int:
        return 0

    async def counters(self, app: str) -> dict[str, int]:
        return {}

    async def reasons(self, app: str) -> dict[str, int]:
        return {}

    async def holds(self, app: str, replica: str, pid: int) -> bool | None:
        if replica in self.lost:  # a test says it lost its listeners
            return None
        if "-hold-" in replica:  # a hold is in the map once a sync put it there
            return self.members.get(app, {}).get(replica) == pid or None
        return True  # what the hand-over put in the map (socket activation)

    async def remove(self, app: str) -> None:
        self.pinned.discard(app)
        self.tables.pop(app, None)

    def pinned_apps(self) -> list[str]:
        return sorted(self.pinned)


class FakeActivation:
    """The hand-over as the controller sees it (interfaces.ActivationPort): which replicas'
    sockets are served, which replicas listen on their own port (`not_taken`: pids), what was
    shut down."""

    shim = Path("/usr/lib/lbctl/activate")

    def __init__(self, root: Path = Path("/state/activation")) -> None:
        self.root = root
        self.served: dict[str, set[str]] = {}  # app -> replicas
        self.removed: list[str] = []
        self.not_taken: set[int] = set()
        self.accepting = True  # False: no replica accepts (connections stay in the queue)
        self.not_accepting: set[int] = set()  # pids whose connections stay in the queue
        self.accept_checks: list[int] = []
        self.shut: list[tuple[int, int, str]] = []
        self.why: str | None = None  # unavailable()

    def unavailable(self) -> str | None:
        return self.why

    def serve(self, app: str, replica: str, publishes: Sequence[Publish]) -> Path:
        self.served.setdefault(app, set()).add(replica)
        return self.root / app / replica

    def keep(self, app: str, replicas: Collection[str]) -> None:
        self.served[app] = self.served.get(app, set()) & set(replicas)

    def remove(self, app: str) -> None:
        self.served.pop(app, None)
        self.removed.append(app)

    async def own_listener(self, pid: int, port: int, proto: str) -> bool:
        return pid in self.not_taken

    async def accepts(self, sock: socket.socket, address: tuple[str, int], pid: int,
                      timeout: float) -> str | None:
        sock.close()
        self.accept_checks.append(pid)
        refused = not self.accepting or pid in self.not_accepting
        return "a connection was not accepted" if refused else None

    async def shut_down(self, pid: int, port: int, proto: str) -> int:
        self.shut.append((pid, port, proto))
        return 1


class FakeRules:
    def __init__(self) -> None:
        self.applied: list[Service] = []
        self.syncs = 0
        self.fail_next = 0
        self.fulls: list[bool] = []  # `full` of every sync asked for, failed ones included
        # The real rules port serializes syncs and counter reads on one lock
        # (lbctl.dataplane.iptables): so does this one, with a knob for how long a read takes.
        self.lock = asyncio.Lock()
        self.counter_delay = 0.0
        self.counter_reads = 0
        self.counts: dict[tuple[str, str], int] = {}
        self.refuse: dict[str, str] = {}  # app -> the error a sync answers for it

    async def sync(self, services: Sequence[Service], full: bool = False) -> dict[str, str]:
        async with self.lock:
            self.fulls.append(full)
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("iptables-restore: simulated failure")
            self.syncs += 1
            # As the real port does with a refused app: the others' rules go in, its own
            # stay what they were.
            kept = {s.app: s for s in self.applied if s.app in self.refuse}
            self.applied = [kept.get(s.app, s) if s.app in self.refuse else s
                            for s in services if s.app not in self.refuse or s.app in kept]
            return {app: why for app, why in self.refuse.items()
                    if any(s.app == app for s in services)}

    async def counters(self) -> dict[tuple[str, str], int]:
        async with self.lock:
            self.counter_reads += 1
            if self.counter_delay:
                await asyncio.sleep(self.counter_delay)
            return dict(self.counts)

    def backends(self, app: str) -> list[str]:
        for s in self.applied:
            if s.app == app:
                return sorted(b.name for b in s.backends)
        return []


class FakeHostFiles:
    """The host's files as a test lays them out: path -> (kind, uid, gid, mode); every
    parent of a listed path is a root-owned 0755 directory unless listed itself."""

    def __init__(self, entries: Mapping[str, tuple[str, int, int, int]] | None = None) -> None:
        self.entries: dict[str, tuple[str, int, int, int]] = dict(entries or {})
        self.walked: list[str] = []
        self.fail: str | None = None

    def _known(self, path: str) -> bool:
        return path == "/" or any(p == path or p.startswith(path + "/") for p in self.entries)

    async def walk(self, path: str) -> list[PathEntry]:
        if self.fail:
            raise OSError(self.fail)
        self.walked.append(path)
        out = [PathEntry("/", "dir", 0, 0, 0o755)]
        here = ""
        for part in [p for p in path.split("/") if p]:
            here += "/" + part
            if not self._known(here):
                out.append(PathEntry(here, "missing"))
                break
            kind, uid, gid, mode = self.entries.get(here, ("dir", 0, 0, 0o755))
            out.append(PathEntry(here, kind, uid, gid, mode))
            if kind != "dir":
                break
        return out


def always_ready(spec: AppSpec, fail: Callable[[str], None],
                 bridges: Mapping[str, str | None]) -> Answers:
    async def answers(c: Container) -> ProbeResult:
        return OK if c.running else failed(Failure.REFUSED)

    return answers


async def no_connections(pid: int, port: int, host: bool = False) -> int:
    return 0


class FakeConntrack:
    """Records which backend addresses had their conntrack entries forgotten, and whether the
    container holding the address still existed then (it must: before its stop)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.forgotten: list[tuple[str, int, str, bool]] = []

    async def __call__(self, ip: str, port: int, proto: str = "tcp") -> int:
        alive = any(ip in (f.c.ip, f.c.ip6) and f.c.running
                    for f in self.engine.containers.values())
        self.forgotten.append((ip, port, proto, alive))
        return 1


def spec(name: str, replicas: int = 2, image: str = "img:1", mode: Mode = Mode.IPTABLES,
         port: int = 18000, **extra: object) -> AppSpec:
    return AppSpec.from_json({"name": name, "image": image, "publish": f"127.0.0.1:{port}:80",
                              "replicas": replicas, "mode": str(mode), **extra})


# Intervals short enough that a test sees the controller act within its (virtual) seconds.
FAST = Settings(
    worker=WorkerSettings(resync_interval=0.05, pass_timeout=5.0, unhealthy_grace=30.0),
    drain=DrainSettings(timeout=1.0, stop_grace=1),
)


@dataclass
class Harness:
    engine: FakeEngine
    ebpf: FakeEbpf
    rules: FakeRules
    conntrack: FakeConntrack
    controller: Controller
    apps: AppsService
    hostrules: HostRules
    status: Status
    settings: Settings
    activation: FakeActivation
    metrics: Metrics
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.controller.run())
        await asyncio.wait_for(self.controller.first_sync.wait(), 5)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
        """Seconds on the loop's clock until `pred` holds (virtual under looptime)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not pred():
            if loop.time() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
            await asyncio.sleep(0.01)
        return loop.time() - t0


def loop_wall() -> float:
    """Epoch seconds on the loop's clock: what tests of deadlines give the apps service, the
    workers and the fake engine, so that a virtual 30 s passes for them all at once."""
    return 1.8e9 + asyncio.get_running_loop().time()


def harness(tmp: Path, engine: FakeEngine | None = None,
            host_ports: HostPortHolder | None = None, limits: Limits | None = None,
            settings: Settings = FAST, answers: AnswersFor = always_ready,
            open_connections: ConnectionCounter = no_connections,
            activation: FakeActivation | None = None,
            files: HostFiles | None = None,
            defaults: Defaults = Defaults(),  # noqa: B008 (frozen)
            wall: Callable[[], float] = time.time) -> Harness:
    """The controller on fakes, wired as lbctl.daemon.build wires it on the real adapters;
    `host_ports` (a HostPorts on a fake binder) and `limits` as the daemon wires them, for the
    tests of what holds host ports and what caps apps; `files` (a FakeHostFiles): members'
    bind sources and volumes are judged on them, and `defaults` what replicas get; `wall`:
    epoch seconds (loop_wall for tests of deadlines: then `engine` must use it too)."""
    engine = engine or FakeEngine(wall)
    ebpf, rules, conntrack = FakeEbpf(), FakeRules(), FakeConntrack(engine)
    metrics = Metrics()
    activation = activation or FakeActivation()
    guard = SourceGuard(engine, files) if files is not None else None
    apps = AppsService(StateStore(tmp),
                       Admission(engine, lambda: None, lambda: None, port_check=lambda s: None,
                                 activation_unavailable=activation.unavailable),
                       host_ports=host_ports, limits=limits, guard=guard, defaults=defaults,
                       clock=wall)
    listeners = ListenerStates()
    questions = ActivationQuestions(answers, ebpf, activation, listeners)
    hostrules = HostRules(rules, tmp, settings.hostrules)
    drains = Drains(ebpf, open_connections, conntrack, settings.drain)
    own_network = template.network_spec(template.ula_subnet("test"))

    def new_worker(app: str) -> AppWorker:
        return AppWorker(
            app, engine=engine, apps=apps,
            dataplane=AppDataplane(app, hostrules, ebpf, lambda: None, None, metrics),
            drains=drains, probes=ReplicaProbes(app, questions, ebpf, settings.probes),
            metrics=metrics, settings=settings, own_network=own_network, activation=activation,
            guard=guard, wall=wall,
        )

    controller = Controller(apps=apps, hostrules=hostrules, engine=engine, new_worker=new_worker,
                            metrics=metrics, settings=settings.worker,
                            pinned_apps=ebpf.pinned_apps)
    apps.on_change = controller.on_change
    apps.load()
    counters = KernelCounters(rules, ebpf, apps, metrics, settings.api.counters_max_age)
    status = Status(apps, counters, controller, listeners=listeners, wall=wall)
    return Harness(engine, ebpf, rules, conntrack, controller, apps, hostrules, status, settings,
                   activation, metrics)


# mypy checks each fake against the Protocol it stands in for (`make lint`).
_engine: EnginePort = FakeEngine()
_files: HostFiles = FakeHostFiles()
_ebpf: EbpfPort = FakeEbpf()
_rules: RulesPort = FakeRules()
_conntrack: FlowForgetter = FakeConntrack(FakeEngine())
_connections: ConnectionCounter = no_connections
_answers: AnswersFor = always_ready
_activation: ActivationPort = FakeActivation()
