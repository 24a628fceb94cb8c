"""The Grafana dashboard only queries metrics the daemon exposes."""

from __future__ import annotations

import json
import re

from harness import ROOT
from lbctl.controller.metrics import Metrics


def test_dashboard_queries_known_metrics() -> None:
    dash = json.loads((ROOT / "grafana" / "lbctl-dashboard.json").read_text())
    exposed = Metrics().render().decode()
    names = set(re.findall(r"^# TYPE (\S+)", exposed, re.M))
    # Counters are exposed as name_total, histograms as name_bucket/_count/_sum
    known = names | {f"{n}_total" for n in names} | {f"{n}_bucket" for n in names}
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\blbctl_[a-z_]+", target["expr"]))
    assert used, "the dashboard has no queries"
    unknown = used - known
    assert not unknown, unknown
    for required in ("lbctl_app_replicas", "lbctl_replica_connections_total",
                     "lbctl_dataplane_sync_seconds_bucket", "lbctl_runtime_events_total"):
        assert required in used
