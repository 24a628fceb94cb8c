"""Prometheus metrics, named as in the contract.

A registry of our own (not the process-global default) so that tests can run several
controllers in one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from lbctl import __version__
from lbctl.model import ReplicaState


class _ConnectionsCollector(Collector):
    """Connection counters come from the kernel (eBPF maps, rule counters); they are read at
    each sync and exposed as they are, so a counter never goes backwards in Prometheus'
    eyes as long as the kernel's does not."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}

    def collect(self):  # type: ignore[no-untyped-def]
        fam = CounterMetricFamily(
            "lbctl_replica_connections",
            "New connections the data plane sent to a replica",
            labels=["app", "replica"],
        )
        for (app, replica), v in sorted(self.values.items()):
            fam.add_metric([app, replica], float(v))
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
        self.events = Counter(
            "lbctl_runtime_events", "Container engine events seen", ["action"], registry=r
        )
        self.watch_restarts = Counter(
            "lbctl_runtime_watch_reconnects",
            "Times the engine event stream was (re)connected",
            registry=r,
        )
        self.bpf_reasons = Gauge(
            "lbctl_bpf_verdicts",
            "eBPF program verdicts other than a normal steer, by reason",
            ["app", "reason"],
            registry=r,
        )
        self.sandbox_repairs = Counter(
            "lbctl_sandbox_repairs", "Sandboxes recreated after they were lost", ["app"],
            registry=r,
        )
        self.build_info = Gauge(
            "lbctl_build_info", "lbctl version", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.connections = _ConnectionsCollector()
        r.register(self.connections)

    def set_replica_states(self, app: str, counts: Mapping[ReplicaState, int]) -> None:
        for state in ReplicaState:
            self.replicas.labels(app=app, state=str(state)).set(counts.get(state, 0))

    def forget_app(self, app: str) -> None:
        for state in ReplicaState:
            with contextlib.suppress(KeyError):
                self.replicas.remove(app, str(state))
        for key in [k for k in self.connections.values if k[0] == app]:
            del self.connections.values[key]

    def render(self) -> bytes:
        return generate_latest(self.registry)
