"""Prometheus metrics, named as in the contract: what the controller observes (its passes,
syncs, events, replica states, and the kernel's counters it reads), so they live with it.
prometheus_client here is a registry of numbers in memory, not an adapter: rendering them is
pure, and serving them over HTTP is the daemon's (lbctl.daemon).

A registry of our own (not the process-global default) so that tests can run several
controllers in one process without "duplicated timeseries" errors. Every labelled counter
whose label values are known up front exists from the start at 0, so a rate() over it works
before the first error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from lbctl import __version__
from lbctl.model import ReplicaState

DATAPLANES = ("iptables", "ebpf")
RELEASE_RESULTS = ("succeeded", "failed", "timed_out")


class _KernelCounters(Collector):
    """Counters kept by the kernel (eBPF maps, rule counters), read at scrape time and exposed
    as they are: they never go backwards as long as the kernel's do not."""

    def __init__(self, name: str, doc: str, labels: tuple[str, str]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, v in sorted(self.values.items()):
            fam.add_metric(list(key), float(v))
        yield fam


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.replicas = Gauge(
            "lbctl_app_replicas", "Replicas of an app by state", ["app", "state"], registry=r
        )
        self.sync_seconds = Histogram(
            "lbctl_dataplane_sync_seconds",
            "Time to apply one data-plane sync",
            ["dataplane"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.sync_errors = Counter(
            "lbctl_dataplane_sync_errors", "Failed data-plane syncs", ["dataplane"], registry=r
        )
        for dp in DATAPLANES:
            self.sync_errors.labels(dataplane=dp)
        self.events = Counter(
            "lbctl_runtime_events", "Container engine events seen", ["action"], registry=r
        )
        self.watch_restarts = Counter(
            "lbctl_runtime_watch_reconnects",
            "Times the engine event stream was reconnected after it was lost",
            registry=r,
        )
        self.pass_errors = Counter(
            "lbctl_controller_pass_errors", "Failed controller passes, by app", ["app"],
            registry=r,
        )
        self.sandbox_repairs = Counter(
            "lbctl_sandbox_repairs", "Sandboxes recreated after they were lost", ["app"],
            registry=r,
        )
        self.rollout_in_progress = Gauge(
            "lbctl_rollout_in_progress", "1 while a rollout of the app is under way", ["app"],
            registry=r,
        )
        self.rollout_revision = Gauge(
            "lbctl_rollout_revision", "Revision the app's replicas run or move to", ["app"],
            registry=r,
        )
        self.rollout_failures = Counter(
            "lbctl_rollout_failures", "Rollouts that failed (rolled back or paused)", ["app"],
            registry=r,
        )
        self.listener_events = Counter(
            "lbctl_listener_events",
            "Connections a daemon listener refused (over a cap) or cut (idle, slow head or "
            "body), and the times it stopped accepting to keep its fd reserve",
            ["listener", "event"], registry=r,
        )
        self.listener_connections = Gauge(
            "lbctl_listener_connections", "Connections open on a daemon listener",
            ["listener"], registry=r,
        )
        self.probes = Counter(
            "lbctl_replica_probe",
            "Readiness probes of a replica, by result (ok, or how it failed)",
            ["app", "replica", "result"], registry=r,
        )
        self.probe_seconds = Histogram(
            "lbctl_replica_probe_seconds",
            "Time one readiness probe took (connect and answer)",
            ["app"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self._probe_labels: set[tuple[str, str, str]] = set()
        self.paused = Gauge(
            "lbctl_app_paused", "1 while the app's traffic hold is on (lbctl pause)", ["app"],
            registry=r,
        )
        self.held = Gauge(
            "lbctl_app_held_connections",
            "New connections waiting in the app's traffic hold (ebpf mode: its accept queue)",
            ["app"], registry=r,
        )
        self.release_runs = Counter(
            "lbctl_release_runs", "Release commands run, by how they ended", ["app", "result"],
            registry=r,
        )
        self.build_info = Gauge("lbctl_build_info", "lbctl version", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.connections = _KernelCounters(
            "lbctl_replica_connections",
            "New connections the data plane sent to a replica",
            ("app", "replica"),
        )
        r.register(self.connections)
        self.bpf_reasons = _KernelCounters(
            "lbctl_bpf_verdicts",
            "eBPF program verdicts other than a normal steer, by reason",
            ("app", "reason"),
        )
        r.register(self.bpf_reasons)

    def set_replica_states(self, app: str, counts: Mapping[ReplicaState, int]) -> None:
        for state in ReplicaState:
            self.replicas.labels(app=app, state=str(state)).set(counts.get(state, 0))

    def observe_probe(self, app: str, replica: str, failure: str | None,
                      seconds: float) -> None:
        result = "ok" if failure is None else str(failure).replace("-", "_")
        self.probes.labels(app=app, replica=replica, result=result).inc()
        self._probe_labels.add((app, replica, result))
        self.probe_seconds.labels(app=app).observe(seconds)

    def forget_replica_probes(self, app: str, replica: str | None = None) -> None:
        """A replica is gone (None: the whole app): so are its probe series. A successor
        under the same name starts at 0, as a new process's counters would."""
        for labels in [k for k in self._probe_labels
                       if k[0] == app and replica in (None, k[1])]:
            self._probe_labels.discard(labels)
            with contextlib.suppress(KeyError):
                self.probes.remove(*labels)

    def forget_app(self, app: str) -> None:
        self.forget_replica_probes(app)
        with contextlib.suppress(KeyError):
            self.probe_seconds.remove(app)
        for state in ReplicaState:
            with contextlib.suppress(KeyError):
                self.replicas.remove(app, str(state))
        for metric in (self.rollout_in_progress, self.rollout_revision, self.pass_errors,
                       self.sandbox_repairs, self.rollout_failures, self.paused, self.held):
            with contextlib.suppress(KeyError):
                metric.remove(app)
        for result in RELEASE_RESULTS:
            with contextlib.suppress(KeyError):
                self.release_runs.remove(app, result)
        for values in (self.connections.values, self.bpf_reasons.values):
            for key in [k for k in values if k[0] == app]:
                del values[key]

    def render(self) -> bytes:
        return generate_latest(self.registry)
