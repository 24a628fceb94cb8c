"""Issue 14's and issue 22's throughput targets, the client split of the report and its CPU
per answer (pure logic on made-up figures; the real run is in test_bench_smoke.py), and the
whole-run RSS sampler on a real process."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench import report, samples
from bench.rss import RssSampler
from bench.samples import cpu_us
from bench.throughput import LBCTL_PATHS, PATHS, PROXY_PATHS, SAME_PATH, Sample
from harness.wrk import WrkResult


def _s(path: str, mode: str, rps: float, p99: float, client: str | None = "local",
       n: int = 2) -> dict[str, Any]:
    s: dict[str, Any] = {"path": path, "replicas": n, "mode": mode, "rps": rps, "p50_ms": 1.0,
                         "p99_ms": p99, "failed": 0, "daemon_cpu_pct": 1.0, "rounds": []}
    if client is not None:
        s["client"] = client
    return s


def _res(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"meta": {"command": "x", "date": "d", "kernel": "k", "cpus": 2, "cpu_model": "c",
                     "duration": 1, "rounds": 1, "wrk": "wrk", "versions": "v",
                     "runtime_s": 60}, "throughput": samples}


def _row(res: dict[str, Any], start: str) -> tuple[str, str, bool | None, str]:
    return next(r for r in report.targets(res) if r[0].startswith(start))


def _both(path: str, ka: float, close: float, p99: float = 2.0) -> list[dict[str, Any]]:
    return [_s(path, m, r, p99, c) for c in ("local", "remote")
            for m, r in (("keepalive", ka), ("close", close))]


def test_the_path_list_knows_what_competes() -> None:
    assert {"ebpf", "iptables"} <= set(LBCTL_PATHS)
    assert set(PROXY_PATHS) == {"nginx", "haproxy"}
    assert ("ebpf-sandbox", "reuseport") in SAME_PATH
    assert "reuseport-host" in PATHS and "ebpf-sandbox" not in LBCTL_PATHS


def test_fastest_lbctl_path_against_the_better_proxy() -> None:
    res = _res([*_both("ebpf", 100_000, 20_000), *_both("iptables", 90_000, 25_000),
                *_both("nginx", 40_000, 19_000), *_both("haproxy", 35_000, 20_000, p99=4.0)])
    close = report.vs_proxy(res, "close")
    # iptables has more new-conn req/s than ebpf; haproxy more than nginx
    assert {(v.client, v.lbctl, v.proxy) for v in close} == {
        ("local", "iptables", "haproxy"), ("remote", "iptables", "haproxy")}
    assert all(v.rps == 1.25 and v.p99 == 0.5 for v in close)
    t, meas, ok, _ = _row(res, "new connection per request")
    assert ok is True and "1.2x" in t and "remote N=2: iptables / haproxy 1.25x" in meas
    t, meas, ok, _ = _row(res, "keep-alive")
    assert ok is True and "ebpf / nginx 2.50x" in meas


def test_one_client_or_p99_short_misses() -> None:
    slow_remote = _res([*_both("nginx", 40_000, 20_000),
                        _s("ebpf", "close", 24_000, 2.0, "local"),
                        _s("ebpf", "close", 19_000, 2.0, "remote")])
    _, meas, ok, _ = _row(slow_remote, "new connection per request")
    assert ok is False and "local N=2: ebpf / nginx 1.20x" in meas and "0.95x" in meas
    worse_tail = _res([*_both("ebpf", 100_000, 30_000, p99=9.0), *_both("nginx", 40_000, 20_000)])
    assert _row(worse_tail, "new connection per request")[2] is False


def test_a_client_not_measured_is_not_a_pass() -> None:
    res = _res([_s("ebpf", "close", 30_000, 1.0), _s("nginx", "close", 20_000, 2.0),
                _s("ebpf", "keepalive", 30_000, 1.0), _s("nginx", "keepalive", 2_000, 2.0)])
    _, meas, ok, _ = _row(res, "new connection per request")
    assert ok is False and "remote missing" in meas
    assert _row(_res([]), "new connection per request")[2] is None


def test_ebpf_against_reuseport_on_the_same_path_takes_the_worst() -> None:
    res = _res([*_both("ebpf-sandbox", 100_000, 15_000), *_both("reuseport", 100_000, 15_000)])
    assert _row(res, "ebpf >= 0.98x")[2] is True
    res["throughput"].append(_s("ebpf-sandbox", "close", 5_000, 2.0, "remote", n=4))
    res["throughput"].append(_s("reuseport", "close", 15_000, 2.0, "remote", n=4))
    _, meas, ok, _ = _row(res, "ebpf >= 0.98x")
    assert ok is False and "new N=4 0.33x" in meas


def test_results_before_remote_clients_read_as_local() -> None:
    res = _res([_s("ebpf", "close", 30_000, 1.0, client=None),
                _s("nginx", "close", 20_000, 2.0, client=None)])
    assert samples.ratio(res, "ebpf", "nginx", 2, mode="close") == 1.5
    md = report.markdown(res)
    assert "| lbctl ebpf mode (DNAT + program) | local | 2 |" not in md  # no keep-alive sample
    res["throughput"] += [_s("ebpf", "keepalive", 90_000, 1.0, client=None),
                          _s("nginx", "keepalive", 30_000, 2.0, client=None)]
    md = report.markdown(res)
    assert "| lbctl ebpf mode (DNAT + program) | local | 2 | 90.0k |" in md
    assert "| ebpf / nginx | local | 3.00x |" in md


def test_rss_target_takes_the_whole_run_and_the_kernel_peak() -> None:
    res = _res([])
    res["rss"] = {"samples": 100, "max_rss_mb": 60.0, "hwm_mb": 85.0, "daemons": 1,
                  "seconds": 600.0, "timeline": [[0.0, 50.0], [10.0, 60.0]]}
    _, meas, ok, _ = _row(res, "daemon RSS")
    assert ok is False and "VmHWM 85 MB" in meas
    res["rss"]["hwm_mb"] = 70.0
    assert _row(res, "daemon RSS")[2] is True
    res["footprint"] = {"apps_idle": 2, "idle_seconds": 10.0, "idle_rss_mb": 50.0,
                        "storm_rss_max_mb": 90.0, "hwm_mb": 90.0, "idle_cpu_pct": 1.0,
                        "storm_seconds": 30.0, "storm_cycles": 3, "storm_cpu_pct": 5.0}
    assert _row(res, "daemon RSS")[2] is False
    assert "## Daemon memory through the whole run" in report.markdown(res)


def test_sampler_follows_a_real_process_and_tolerates_none() -> None:
    pids: list[int | None] = [None, os.getpid()]
    sampler = RssSampler(lambda: pids[-1], interval=0.01).start()
    blob = bytearray(30 * 1024 * 1024)  # touched, so it is resident: 30 MB more RSS
    blob[::4096] = b"x" * len(blob[::4096])
    r = sampler.stop()
    assert r.samples >= 1 and r.daemons == 1
    assert r.hwm_mb >= r.max_rss_mb >= 30
    del blob
    assert RssSampler(lambda: None).start().stop().samples == 0


def test_a_rerun_from_one_client_keeps_the_other_clients_samples() -> None:
    from bench.merge import merge

    old = _res([*_both("ebpf", 100_000, 20_000), *_both("nginx", 40_000, 19_000)])
    new = _res([_s("ebpf", m, 1.0, 1.0, "remote") for m in ("keepalive", "close")])
    new["meta"]["clients"] = ["remote"]
    out = merge(old, new, ["ebpf"], PATHS)
    got = {(s["path"], s["client"], s["mode"]): s["rps"] for s in out["throughput"]}
    assert got[("ebpf", "remote", "close")] == 1.0 and got[("ebpf", "local", "close")] == 20_000
    assert len(got) == len(out["throughput"]) == 8
    # a run from before --clients replaced the path's samples whatever their client
    del new["meta"]["clients"]
    out = merge(old, new, ["ebpf"], PATHS)
    assert {s["client"] for s in out["throughput"] if s["path"] == "ebpf"} == {"remote"}


def test_the_baseline_noise_is_stated_next_to_the_ebpf_ratio() -> None:
    base = _s("reuseport", "keepalive", 100_000, 2.0)
    base["rounds"] = [{"rps": 90_000}, {"rps": 110_000}]
    res = _res([base, _s("ebpf-sandbox", "keepalive", 96_000, 2.0)])
    _, _, ok, why = _row(res, "ebpf >= 0.98x")
    assert ok is False and "differ by up to 20% of their median" in why
    base["rounds"] = [{"rps": 100_000}]
    assert "differ by" not in _row(res, "ebpf >= 0.98x")[3]


def test_per_core_load_names_the_client_as_the_bound() -> None:
    res = _res([*_both("ebpf-host", 100_000, 16_000), *_both("nginx", 40_000, 17_000)])
    for s in res["throughput"]:
        if s["mode"] == "close":
            lbctl = s["path"] == "ebpf-host"
            s.update(wrk_core_pct=100.0 if lbctl else 97.0,
                     other_cores_pct=48.0 if lbctl else 80.0,
                     cpu_us_per_req=90.0 if lbctl else 105.0)
    _, meas, ok, why = _row(res, "new connection per request")
    assert ok is False
    assert "CPU per answer (all cores) 0.86x, wrk's core 100% / 97% busy" in meas
    assert "wrk's core is 97-100% busy in every new-connection run" in why
    assert "48% busy under lbctl's paths and 80% under the proxies" in why
    assert "lbctl 90 us, the proxies 105 us" in why
    md = report.markdown(res)
    assert "| 90 | 1% / 1% | 100% / 48% |" in md
    for s in res["throughput"]:
        if s["mode"] == "keepalive":
            lbctl = s["path"] == "ebpf-host"
            s.update(wrk_core_pct=100.0 if lbctl else 70.0,
                     other_cores_pct=85.0 if lbctl else 95.0)
    why = _row(res, "keep-alive")[3]
    assert "under lbctl's paths wrk's core 100%, the other 85% busy" in why
    assert "under the proxies wrk's core 70%, the other 95%" in why
    # results from before the per-core sampler say nothing about cores
    for s in res["throughput"]:
        for k in ("wrk_core_pct", "other_cores_pct", "cpu_us_per_req"):
            s.pop(k, None)
    _, meas, _, why = _row(res, "new connection per request")
    assert "CPU per answer" not in meas and "Per-core" not in why
    assert "Per-core" not in _row(res, "keep-alive")[3]


def test_cpu_per_answer_is_the_whole_machines() -> None:
    """Measured: taken as it is. From a run before it was measured: wrk's core and the
    others added up (the issue-22 table's arithmetic), never the other cores alone, which
    leave out the kernel's work on wrk's core."""
    s = _s("ebpf", "close", 16_000, 2.0)
    assert cpu_us(s) is None
    s.update(wrk_core_pct=100.0, other_cores_pct=48.0, other_us_per_req=30.0)
    assert cpu_us(s) == pytest.approx(92.5)
    s["cpu_us_per_req"] = 80.0
    assert cpu_us(s) == 80.0


def test_sample_cpu_leaves_other_users_out() -> None:
    """CPU per answer of a round: every core's busy seconds minus other users' processes',
    over the requests of that round; the raw machine figure and their share are kept."""
    s = Sample("ebpf-activation", 2, "close")
    s.rounds = [WrkResult(requests=30_000, seconds=3.0, rps=10_000.0),
                WrkResult(requests=20_000, seconds=2.0, rps=10_000.0)]
    s.wrk_core, s.other_cores = [100.0, 100.0], [90.0, 90.0]
    s.busy_s = [3.0, 2.4]
    s.foreign_s = [0.3, 0.4]
    j = s.to_json()
    assert [r["cpu_us_per_req"] for r in j["rounds"]] == [90.0, 100.0]
    assert j["cpu_us_per_req"] == 95.0  # the median of the rounds
    assert j["machine_us_per_req"] == 110.0 and j["foreign_pct"] == 15.0
    s.foreign_s = []  # a run without the foreign sampler: no CPU figure rather than a wrong one
    assert s.to_json()["cpu_us_per_req"] is None


def _iso(path: str, n: int, client: str, new_cpu: float, ka_cpu: float,
         ka_rps: float = 100_000) -> list[dict[str, Any]]:
    out = []
    for mode, cpu, rps in (("close", new_cpu, 15_000), ("keepalive", ka_cpu, ka_rps)):
        s = _s(path, mode, rps, 2.0, client, n)
        s["cpu_us_per_req"] = cpu
        out.append(s)
    return out


def _iso_res(act_new: float, act_ka: float = 15.0, act_ka_rps: float = 110_000,
             ns: tuple[int, ...] = (2, 4), clients: tuple[str, ...] = ("local", "remote"),
             key: str = "isolation") -> dict[str, Any]:
    samples = []
    for n in ns:
        for c in clients:
            samples += _iso("reuseport-host", n, c, 70.0, 14.0)
            samples += _iso("ebpf", n, c, 85.0, 18.0)
            samples += _iso("iptables", n, c, 84.0, 18.0)
            samples += _iso("ebpf-activation", n, c, act_new, act_ka, act_ka_rps)
    res = _res([])
    res[key] = samples
    return res


def test_an_isolated_path_within_105_of_host_reuseport_meets_issue_22() -> None:
    t, meas, ok, why = _row(_iso_res(73.0), "isolated path")
    assert ok is True and "1.05x" in t and "`reuseport-host`" in t
    assert ("`ebpf-activation`: local N=2 new 1.04x, ka 0.83x CPU / 1.10x req/s of `ebpf`"
            in meas)
    assert "`ebpf`: local N=2 new 1.21x" in meas and "the `isolation` run" in why
    # 1.06x somewhere, keep-alive dearer than today's default, or slower: missed
    assert _row(_iso_res(74.2), "isolated path")[2] is False
    assert _row(_iso_res(70.0, act_ka=19.0), "isolated path")[2] is False
    assert _row(_iso_res(70.0, act_ka_rps=90_000), "isolated path")[2] is False
    # one client or one N not measured is not a pass
    assert _row(_iso_res(70.0, clients=("local",)), "isolated path")[2] is False
    assert _row(_res([]), "isolated path")[2] is None


def test_isolation_figures_come_from_their_own_run_or_the_throughput_table() -> None:
    own = _iso_res(73.0)
    own["throughput"] = _iso_res(95.0, key="throughput")["throughput"]
    assert _row(own, "isolated path")[2] is True  # the isolation run wins
    table = _iso_res(73.0, key="throughput")
    _, _, ok, why = _row(table, "isolated path")
    assert ok is True and "from the throughput table" in why
    md = report.markdown(own)
    assert "## Isolation at host-network cost (issue 22)" in md
    section = md.split("## Isolation at host-network cost")[1]
    row = next(ln for ln in section.splitlines() if ln.startswith("| lbctl ebpf mode, --activ")
               and "| remote | 4 |" in ln)
    assert "| 73 us | 1.04x |" in row and "| 0.83x |" in row
    assert "## Isolation at host-network cost" not in report.markdown(_res([]))
