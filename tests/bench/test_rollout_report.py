"""The rollout benchmark's arithmetic and report, and the merge of a partial run into the
results.json already there (pure logic on made-up figures; the real run is in
test_bench_smoke.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report, rollout_report
from bench.__main__ import dumps
from bench.merge import merge
from bench.rollout import parse_buckets, rate
from bench.throughput import PATHS


def test_buckets_are_read_back_from_the_lua_line() -> None:
    out = "  10 requests in 1.00s\nlbctl-buckets 0.1 100:5 101:7 103:1\nRequests/sec: 10\n"
    assert parse_buckets(out) == (0.1, {100: 5, 101: 7, 103: 1})
    assert parse_buckets("lbctl-buckets 0.1 \n") == (0.1, {})
    with pytest.raises(RuntimeError, match="no buckets"):
        parse_buckets("Requests/sec: 10\n")


def test_rate_uses_only_whole_buckets_and_counts_empty_ones() -> None:
    b = {100: 50, 101: 10, 102: 0, 103: 40, 104: 99}
    # [10.05, 10.45): wholly inside are buckets 101..103 (10.1-10.4); 102 never answered
    mean, lowest = rate(b, 0.1, 10.05, 10.45)
    assert mean == pytest.approx((10 + 0 + 40) / 0.3)
    assert lowest == 0
    assert rate(b, 0.1, 10.05, 10.15) == (None, None)  # no whole bucket


def _round(failed: int, rollout_s: float, **kinds: int) -> dict[str, Any]:
    return {"rollout_s": rollout_s, "requests": 100_000, "failed": failed,
            **{k: kinds.get(k, 0) for k in rollout_report.KINDS},
            "before_rps": 10_000.0, "during_rps": 9_000.0, "lowest_rps": 4_000.0,
            "daemon_cpu_pct": None, "timeline": {"start": -1.0, "step": 0.1, "rps": [9000, 8000]}}


def _sample(id: str, label: str, lbctl: bool, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": id, "label": label, "lbctl": lbctl, "replicas": 4,
            "rollout_s": rounds[0]["rollout_s"], "during_rps": 9_000.0, "before_rps": 10_000.0,
            "requests": sum(r["requests"] for r in rounds),
            "failed": sum(r["failed"] for r in rounds), "rounds": rounds}


ROLLOUT = [
    _sample("ebpf", "lbctl ebpf, start-first, default policy (--monitor 5)", True,
            [_round(0, 24.0), _round(0, 26.0)]),
    _sample("ebpf-monitor1", "lbctl ebpf, start-first, --monitor 1", True,
            [_round(0, 9.0), _round(0, 8.0)]),
    _sample("swarm-stop-first", "Swarm-like stop-first", False,
            [_round(17, 1.1, read=17), _round(21, 1.0, read=20, timeout=1)]),
    _sample("swarm-stop-first-migrate", "Swarm-like stop-first, tcp_migrate_req=1", False,
            [_round(18, 1.1, read=18), _round(16, 1.2, read=16)]),
]


def test_the_section_gives_every_round_and_the_comparison() -> None:
    md = "\n".join(rollout_report.markdown({"rollout": ROLLOUT}))
    row = next(ln for ln in md.splitlines() if ln.startswith("| Swarm-like stop-first |"))
    assert "1.1 s / 1.0 s" in row and "**17** (read 17) / **21** (read 20, timeout 1)" in row
    ours = next(ln for ln in md.splitlines() if ln.startswith("| lbctl ebpf, start-first, --"))
    assert "| 0 / 0 |" in ours
    assert "0 failed of 200,000 over 2 rollout(s)" in md
    assert "38 failed of 200,000 (read 37, timeout 1) over 2 rollout(s)" in md
    assert "i.e. 4.8 per replica replaced" in md  # 38 / 2 rollouts / 4 replicas
    assert "lbctl 0.00 failed requests (0 in 4 rollouts), Swarm-like 18.0 (72 in 4)" in md
    assert "38 failed without it, 34 with it" in md  # all rounds, not one
    assert "took 24.0 s for 4 replicas (median), `--monitor 1` 9.0 s: 15.0 s less" in md
    assert "lbctl's default policy took 22x as long, `--monitor 1` 8x" in md


def test_the_target_is_met_only_without_a_failed_lbctl_request() -> None:
    _, meas, ok, why = rollout_report.target({"rollout": ROLLOUT})
    assert ok is True and "ebpf: 0 of 200,000" in meas and "swarm" not in meas
    assert "lost" not in why
    broken = json.loads(json.dumps(ROLLOUT))
    broken[1]["failed"] = 1
    broken[1]["rounds"][0].update(failed=1, timeout=1)
    _, _, ok, why = rollout_report.target({"rollout": broken})
    assert ok is False
    assert "Where lbctl lost requests here: ebpf-monitor1 1 failed of 200,000 (timeout 1)" in why
    assert rollout_report.target({})[2] is None


def _results(**sections: Any) -> dict[str, Any]:
    meta = {"command": "python -m bench", "date": "2026-01-01 00:00 UTC", "kernel": "6.18",
            "cpus": 2, "cpu_model": "x", "duration": 6.0, "rounds": 2, "quick": False,
            "wrk": "wrk", "versions": "v", "runtime_s": 600.0}
    return {"meta": meta, "notes": ["old note"], **sections}


def tp(path: str, rps: float) -> dict[str, Any]:
    return {"path": path, "replicas": 2, "mode": "keepalive", "rps": rps, "p50_ms": 1.0,
            "p99_ms": 2.0, "failed": 0, "daemon_cpu_pct": None, "rounds": []}


def test_a_partial_run_replaces_only_its_own_sections() -> None:
    old = _results(throughput=[tp("direct", 1.0), tp("ebpf", 2.0)], scale=[{"x": 1}],
                   rollout=[{"old": True}], errors={"rollout": "boom", "footprint": "bad"})
    new = _results(rollout=ROLLOUT, throughput=[])
    new["meta"].update(command="python -m bench --only rollout", date="2026-02-02 00:00 UTC",
                       runtime_s=300.0)
    new["notes"] = ["new note"]
    out = merge(old, new, ["rollout"], PATHS)
    assert out["rollout"] == ROLLOUT and out["scale"] == [{"x": 1}]
    assert out["throughput"] == old["throughput"]
    assert out["errors"] == {"footprint": "bad"}  # rollout's error went with its rerun
    assert out["meta"]["date"] == "2026-01-01 00:00 UTC"  # the kept sections' run
    assert out["meta"]["updates"] == [{"command": "python -m bench --only rollout",
                                       "date": "2026-02-02 00:00 UTC", "scenarios": ["rollout"],
                                       "runtime_s": 300.0, "rounds": 2, "quick": False}]
    assert out["notes"] == ["new note"]
    assert old["rollout"] == [{"old": True}]  # the input is left alone

    # a path reruns: its samples go, the other paths' stay
    again = _results(throughput=[tp("ebpf", 3.0)])
    out2 = merge(out, again, ["ebpf", "rollout"], PATHS)
    assert sorted((s["path"], s["rps"]) for s in out2["throughput"]) == [
        ("direct", 1.0), ("ebpf", 3.0)]
    # the earlier update is superseded: nothing of it is left on show
    assert [u["scenarios"] for u in out2["meta"]["updates"]] == [["ebpf", "rollout"]]


def test_the_report_names_newer_figures_and_renders_the_merged_sections(
    tmp_path: Path,
) -> None:
    old = _results(throughput=[tp("direct", 1000.0)])
    new = _results(rollout=ROLLOUT)
    new["meta"].update(command="python -m bench --only rollout", date="2026-02-02 00:00 UTC")
    md = report.markdown(merge(old, new, ["rollout"], PATHS))
    assert ("| newer figures | rollout: `python -m bench --only rollout`, "
            "2026-02-02 00:00 UTC, 10.0 min |") in md
    assert "## Rolling update under load" in md
    assert "| zero failed requests in a rolling update under load" in md
    assert "| date | 2026-01-01 00:00 UTC |" in md


def test_results_json_keeps_number_lists_on_one_line() -> None:
    res = {"timeline": {"rps": [1, 2.5, -3e-05]}, "note": "[1,\n2]", "rows": [[1, 2], ["a"]]}
    text = dumps(res)
    assert json.loads(text) == res
    assert '"rps": [1, 2.5, -3e-05]' in text and '"note": "[1,\\n2]"' in text
    assert "[1, 2]" in text and '"a"' in text
