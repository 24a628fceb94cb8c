"""Every default and interval of the daemon, in one tree (kopf's OperatorSettings).

The command line sets it (`lbctl daemon --drain-timeout ...`), the daemon hands each part to
the part it configures (the engine its `engine` section, the iptables data plane its
`iptables` section, each app's worker the `worker`, `probes` and `drain` sections), and tests
build one with the values they need instead of patching module constants. A value lives here
once: no module keeps its own copy of a default.

What is not here is not a setting: sizes fixed by the kernel or by the eBPF program's maps
(bpf/lbctl_shared.h), syscall numbers, the state file's format version.

Pure data, importable by every layer (it sits beside lbctl.model at the bottom of the import
graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EngineSettings:
    # None: $DOCKER_HOST, else unix:///var/run/docker.sock.
    docker_host: str | None = None
    # A list, an inspect or a create answers in milliseconds on a healthy engine; 15 s is far
    # beyond that and still short enough that a wedged engine shows up in `status` and stops
    # the watchdog long before anyone would notice otherwise.
    call_timeout: float = 15.0
    # A removal waits for the container's own stop grace first, then this much more.
    remove_margin: float = 15.0
    # `lbctl logs`: a longer line is cut here (Docker's own log splits lines at 16 KiB), so
    # that what a stream holds in memory is bounded whatever a container writes.
    log_line_max: int = 16 * 1024
    # Podman: how long a stopped container's removal waits for `lbctl logs -f` to read its
    # last lines (Podman deletes the log with the container); a follow reads them in ms.
    log_remove_wait: float = 2.0


@dataclass(frozen=True)
class ProbeSettings:
    # How often, how long and how many: each app's readiness probe says (lbctl.model.
    # readiness, `--ready-interval` and the like), like its update policy.
    # ebpf mode, TCP kind: a ready replica's listener is re-read only this often (its socket
    # leaving the map is checked every round; reading the namespace's socket table 4 times a
    # second cost the daemon a core under a new-connection load).
    ebpf_ready_recheck: float = 5.0


@dataclass(frozen=True)
class DrainSettings:
    timeout: float = 10.0  # longest a replica's open connections are waited for
    poll: float = 0.1  # how often a drain asks whether the replica still serves
    flow_idle: float = 2.0  # UDP: a replica whose flows were quiet this long is drained
    handshake_settle: float = 0.3  # TCP: handshakes under way when it left the data plane
    stop_grace: int = 10  # seconds a replica gets to exit before SIGKILL (--stop-timeout wins)
    remove_attempts: int = 5  # a stop/remove the engine refuses is tried this often


@dataclass(frozen=True)
class WorkerSettings:
    resync_interval: float = 1.0  # a worker's full pass at least this often, events or not
    # Longer than any single engine call (they time out on their own), so a pass that hits
    # its limit means something beyond one slow call.
    pass_timeout: float = 60.0
    # A `kill`/`stop` event takes a replica out at once; the mark expires after this (longer
    # than `docker stop`'s default 10 s before its SIGKILL), since the engine's list may never
    # show the change (a pause undone, a signal the app survives).
    doom_grace: float = 15.0
    unhealthy_grace: float = 30.0  # an unhealthy replica is replaced after this
    # Replicas that exit before they are ready are recreated after 0.5 s, 1 s, 2 s, ...,
    # at most this long apart (a crash loop must not keep the engine busy).
    create_backoff_max: float = 30.0
    discovery_interval: float = 5.0  # the engine's full list, for apps nobody told us about
    # The sandbox's image; also the traffic hold's (its `pause hold` mode: images/pause).
    sandbox_image: str = "lbctl/pause:latest"
    # A release command (`--release`) running longer than this fails its rollout. Database
    # migrations are the usual release step and can take minutes; Heroku gives its release
    # phase an hour, but a hung one then holds a deploy that long: 10 minutes, and a flag.
    release_timeout: float = 600.0
    # A hold container (ebpf mode) ends by itself this long after its deadline, so that a
    # hold ends even while no daemon runs; with one, the daemon ends it at the deadline, the
    # tables first (its queue then migrates to the replicas in order, not by the kernel's
    # hash).
    hold_exit_margin: float = 5.0


@dataclass(frozen=True)
class HostRulesSettings:
    min_interval: float = 0.01  # between two iptables syncs (changes in between coalesce)
    # Someone may flush our chains (an admin, a firewall reload): a periodic full sync
    # repairs them, as kube-proxy's does. It writes nothing when the rules are as they were.
    resync_interval: float = 30.0
    wait_timeout: float = 30.0  # a worker waits this long for the sync that includes it


@dataclass(frozen=True)
class IptablesSettings:
    # One sync takes milliseconds; the bound only keeps a wedged xtables lock holder from
    # hanging the controller forever (it retries anyway).
    command_timeout: float = 30.0
    # The fast path trusts its memory of the kernel for at most this long without a full
    # pass, whatever the caller asks.
    full_resync_interval: float = 60.0
    # Backends per bucket chain: a service with more gets one DNAT chain per bucket, so one
    # changed backend rewrites one bucket, not the whole service.
    bucket: int = 64
    # Rewriting more DNAT chains than this in one fast pass: one `iptables-save -t nat` reads
    # their counters more cheaply than one `iptables -S` per chain.
    per_chain_counter_reads: int = 4
    # Apps one sync may leave out because the kernel refused their rules (quarantine.py);
    # more than that in one sync is the host's trouble, not the apps': the sync fails whole.
    max_quarantined: int = 4


@dataclass(frozen=True)
class EbpfSettings:
    pin_root: Path = Path("/sys/fs/bpf/lbctl")
    # How long after a replica's first listener shows up each sync looks for more of them
    # (a replica binds IPv4, then IPv6, or TCP then UDP, one after another).
    startup_rescan: float = 3.0
    loader_timeout: float = 120.0  # compiling and loading the program (LLVM, the verifier)
    # UDP flows (bpf/lbctl_shared.h: `flows` never evicts, so that no flood of new flows can
    # push out one that talks): the controller forgets a flow quiet for `flow_max_idle`
    # (longer than QUIC's usual idle timeouts, 30-60 s), and once the map is more than
    # `flow_crowded` full, one quiet for `flow_crowded_idle` (what a flood of spoofed sources
    # fills it with never talks again), every `flow_sweep_interval`. A forgotten flow is hashed
    # again at its next datagram: the same replica while the table does not change.
    flow_max_idle: float = 120.0
    flow_crowded: float = 0.5
    flow_crowded_idle: float = 10.0
    flow_sweep_interval: float = 5.0


@dataclass(frozen=True)
class ActivationSettings:
    # The static shim replicas of activated apps run as their entrypoint (None: the
    # package's /usr/lib/lbctl/activate, or this checkout's images/activate/out/activate).
    shim: Path | None = None
    # How long a replica's shim waits for the daemon to answer (a replica that starts while
    # no daemon runs), before it exits 111 and the worker replaces it.
    shim_timeout: int = 30


@dataclass(frozen=True)
class LimitSettings:
    # 0: no cap. Why these numbers: lbctl.controller.limits.
    max_apps: int = 64
    max_containers: int = 256
    # pids-limit of a replica whose app sets none (0: the engine's default). Without one,
    # Docker sets none, and a fork bomb or a thread leak in one replica takes every PID of the
    # host (kernel.pid_max is 32768 here). 2048 is Podman's own default (containers.conf
    # pids_limit), so Podman users see no change, and far above what a server replica uses
    # (the demo: 1; nginx: one per worker; a JVM: a few hundred threads). Not part of a spec
    # (nor of its hash): changing it rolls nothing, new replicas get the new one.
    default_pids_limit: int = 2048
    # Ceilings on what all apps hold together, at their peak (a rollout's surge and a
    # canary's extra replicas counted): the sum of the replicas' pids limits (the default
    # above included) and of their memory limits (a replica of root's without --memory is
    # not counted: root asked for none). They bind root too; 0: none (the default: the
    # members' policy has its own, max_pids_total and max_memory_total).
    max_pids_total: int = 0
    max_memory_total: int = 0
    # The shortest --health-interval anyone may ask for (members: the policy's, 1s): each
    # check is a process the engine starts; 1ms, which the engine takes, is a fork storm.
    min_health_interval: float = 0.1


@dataclass(frozen=True)
class ApiSettings:
    """The control socket and the metrics port (lbctl.api.listener says why each bound)."""

    max_body: int = 64 * 1024  # bytes of one request body
    # How long a status or a scrape may reuse the kernel's counters read by an earlier one:
    # 100 scrapes at once read them once, never under the sync lock.
    counters_max_age: float = 0.5
    # Connections to the control socket of callers other than root, in all and per caller
    # (uid); root's are not counted, so members cannot lock root out. The CLI holds one per
    # command; a watch (`status -w`) one for its life.
    max_connections: int = 128
    max_connections_per_uid: int = 32
    # Connections to the metrics port (any local user may connect): Prometheus holds one;
    # 100 scrapers at once (tests/e2e/test_faults.py) need no more than half of these.
    metrics_max_connections: int = 128
    # A connection's time from its accept (or its last answer) to its next request's first
    # byte; longer than the CLI's own keep-alive (aiohttp's 15 s), so it is the CLI that
    # closes its idle connections, not us under its feet.
    idle_timeout: float = 30.0
    # From a request's first byte to its whole head, and again from its head to its whole
    # body: a local client sends both in microseconds; a client sending a byte a second
    # (slowloris) is cut after this.
    header_timeout: float = 10.0
    # File descriptors the listeners never take: they stop accepting while the daemon's open
    # files are within this many of its limit. What a sync may need at once: engine calls
    # (aiohttp's pool: at most 100 connections), iptables-restore's pipes, eBPF map and
    # program fds, listeners borrowed with pidfd_getfd, readiness probes' sockets.
    fd_reserve: int = 256


@dataclass(frozen=True)
class LogSettings:
    """`lbctl logs` (lbctl.controller.app_logs, the API's /apps/NAME/logs)."""

    # Log streams one caller (uid) may have open at once, with -f or not; each holds an
    # engine connection per container of its app while it lasts. 0: no cap.
    max_streams_per_caller: int = 8
    # How long a followed line waits for lines of other containers stamped before it: the
    # engine stamps a line when it reads it, and its streams reach the daemon apart by
    # milliseconds, so 100 ms puts them in order at a delay nobody watching notices.
    reorder_window: float = 0.1
    # Lines read ahead per container: past that, reading pauses (the engine holds the rest)
    # until the caller has taken some, so a slow reader costs the daemon no memory.
    read_ahead: int = 64
    # How often a follow looks for new containers (in the app worker's view: no engine
    # call) and checks that its caller is still there.
    poll_interval: float = 0.25
    # A followed container whose stream ended while it runs on (the engine restarted, or
    # the container did) is read again after this, from its last line on.
    reopen_after: float = 1.0


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: Path = Path("/var/lib/lbctl")
    metrics_addr: str = "127.0.0.1:9477"
    trim_interval: float = 30.0  # seconds between malloc trims (lbctl.malloc)
    log_level: str = "info"
    # RLIMIT_NOFILE: the daemon raises its soft limit to the hard one, at most this (the unit
    # sets both to this; the kernel's default soft limit, 1024, is what idle connections
    # exhausted). Bounded: a child (iptables-restore) inherits it.
    max_open_files: int = 65536
    # Where the lock on the bpf pin root lives (bpffs holds no plain files; lbctl.
    # instance_lock); the state dir's lock is in the state dir.
    lock_dir: Path = Path("/run/lock")


@dataclass(frozen=True)
class Settings:
    """The whole tree; `Settings()` is every default."""

    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    drain: DrainSettings = field(default_factory=DrainSettings)
    hostrules: HostRulesSettings = field(default_factory=HostRulesSettings)
    iptables: IptablesSettings = field(default_factory=IptablesSettings)
    ebpf: EbpfSettings = field(default_factory=EbpfSettings)
    activation: ActivationSettings = field(default_factory=ActivationSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    logs: LogSettings = field(default_factory=LogSettings)
