"""Folding a partial run (`python -m bench --only ...`) into the results.json already there, so
that rerunning one scenario refreshes its section of RESULTS.md without dropping the others'.

The kept sections stay those of the run that made them (its `meta` heads the report); each
partial run is listed in meta["updates"] with its command, date and scenarios, so the report
says which figures are newer. Throughput is merged per path and client: a path that ran replaces
its samples from the clients it ran with (`--clients`, meta["clients"]), and only those.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

Results = dict[str, Any]

# Results keys of the scenarios that are not throughput paths (scenario id -> key).
SECTIONS = {"scale": "scale", "convergence": "convergence", "sync": "sync",
            "footprint": "footprint", "rollout": "rollout", "isolation": "isolation",
            "warmup": "warmup"}
# _phase() names -> the scenarios whose rerun replaces that phase's recorded error.
PHASES = {"scale under load": {"scale"}, "convergence": {"convergence"},
          "footprint": {"footprint"}, "sync cost: iptables": {"sync"},
          "sync cost: eBPF maps": {"sync"}, "rollout": {"rollout"},
          "warm-up rollout": {"warmup"},
          "isolation": {"isolation"}}


def _reran(phase: str, only: set[str], paths: set[str]) -> bool:
    if phase == "throughput":
        return bool(only & paths)
    return bool(PHASES.get(phase, set()) & only)


def merge(previous: Results, new: Results, only: list[str], paths: tuple[str, ...]) -> Results:
    """`previous` with what `new` (a run of the scenarios `only`) measured in place of its own
    figures for those scenarios."""
    ran = set(only)
    out = copy.deepcopy(previous)
    ran_paths = ran & set(paths)
    if ran_paths:
        # A path that ran replaces its samples of the clients it ran with (meta["clients"];
        # all of them in a run from before clients had a choice), and only those.
        clients = new["meta"].get("clients")
        kept = [s for s in previous.get("throughput", []) if s["path"] not in ran_paths
                or (clients is not None and s.get("client", "local") not in clients)]
        out["throughput"] = kept + list(new.get("throughput", []))
    for scenario, key in SECTIONS.items():
        if scenario in ran:
            out[key] = new.get(key)
    errors = {k: v for k, v in previous.get("errors", {}).items()
              if not _reran(k, ran, set(paths))}
    errors.update(new.get("errors", {}))
    if errors:
        out["errors"] = errors
    else:
        out.pop("errors", None)
    out["notes"] = list(new.get("notes") or previous.get("notes") or [])
    m = new["meta"]
    # An earlier partial run is listed only for the scenarios whose figures are still its own.
    updates = []
    for u in out.setdefault("meta", {}).get("updates", []):
        left = [s for s in u["scenarios"] if s not in ran]
        if left:
            updates.append({**u, "scenarios": left})
    out["meta"]["updates"] = updates
    updates.append({
        "command": m.get("command"),
        "date": m.get("date") or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scenarios": list(only),
        "runtime_s": m.get("runtime_s"),
        "rounds": m.get("rounds"),
        "quick": m.get("quick", False),
    })
    return out
