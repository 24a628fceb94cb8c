"""Reading throughput samples (bench.throughput.Sample.to_json) out of results.json, and the
few number formats the report sections share: one place for both, so that bench.report and
its sections (bench.isolation_report) read figures the same way."""

from __future__ import annotations

import math
from typing import Any

from bench.throughput import CLIENTS

Results = dict[str, Any]


def client_of(s: dict[str, Any]) -> str:
    return str(s.get("client", "local"))  # results of runs before remote clients: local


def find(res: Results, path: str, n: int, mode: str,
         client: str = "local") -> dict[str, Any] | None:
    """The sample of (path, N, mode, client) in res["throughput"], or None."""
    for s in res.get("throughput", []):
        if (s["path"] == path and s["replicas"] == n and s["mode"] == mode
                and client_of(s) == client):
            return dict(s)
    return None


def counts(res: Results) -> list[int]:
    return sorted({int(s["replicas"]) for s in res.get("throughput", [])})


def clients(res: Results) -> list[str]:
    seen = {client_of(s) for s in res.get("throughput", [])}
    return [c for c in CLIENTS if c in seen]


def cpu_us(s: dict[str, Any] | None) -> float | None:
    """Whole-machine CPU per answer (us) of a sample: measured (cpu_us_per_req), or for runs
    before it was, the per-core busy figures added up over wrk's core and the others (the
    same quantity, from the medians instead of per round, other users' load included)."""
    if not s:
        return None
    if s.get("cpu_us_per_req") is not None:
        return float(s["cpu_us_per_req"])
    wrk_core, other = s.get("wrk_core_pct"), s.get("other_cores_pct")
    if wrk_core is None or other is None or not s.get("rps"):
        return None
    return (float(wrk_core) + float(other)) / 100 * 1e6 / float(s["rps"])


def ratio(res: Results, a: str, b: str, n: int, mode: str = "keepalive",
          key: str = "rps", client: str = "local") -> float | None:
    """a's figure / b's for (N, mode, client); key "cpu" is cpu_us()."""
    sa, sb = find(res, a, n, mode, client), find(res, b, n, mode, client)
    if key == "cpu":
        ca, cb = cpu_us(sa), cpu_us(sb)
        return ca / cb if ca is not None and cb else None
    if not sa or not sb or not sb[key]:
        return None
    return float(sa[key]) / float(sb[key])


def fmt_k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def fmt_x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def fmt_ms(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.1f} ms" if x >= 1 else f"{x * 1000:.0f} us"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}%"
