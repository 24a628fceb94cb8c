"""Which apps and URLs the throughput paths set up (logic on a stand-in Env; the real run is
in test_bench_smoke.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import throughput
from bench.throughput import PATH_DEFS, Setup


class _Env:
    """Records `lbctl run`s instead of making them."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, str]] = []
        self.proxies: list[Any] = []

    def run_app(self, app: str, replicas: int, mode: str, address: str = "127.0.0.1",
                extra: tuple[str, ...] = ()) -> int:
        self.runs.append((app, mode, address))
        return 30000 + len(self.runs)


def test_ebpf_sandbox_never_shares_the_ebpf_apps_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 0.3x row: reached both through the DNAT and at its IP, one sandbox held the first
    run's TIME_WAIT sockets, whose PAWS check stalled the second run's SYNs for 1 s each."""
    monkeypatch.setattr(throughput, "container_ip", lambda ref: f"ip-of-{ref}")
    env = _Env()
    s = Setup(env, 2, "10.253.250.1")  # type: ignore[arg-type]
    ebpf = PATH_DEFS["ebpf"].start(s)
    sandbox = PATH_DEFS["ebpf-sandbox"].start(s)
    (a, _, addr), (b, mode, _) = env.runs
    assert a != b and mode == "ebpf" and addr == "0.0.0.0"
    assert sandbox.local == sandbox.remote == f"http://ip-of-{b}-sandbox:8080/"
    assert ebpf.local == "http://127.0.0.1:30001/"
    assert ebpf.remote == "http://10.253.250.1:30001/"
    assert sorted(s.apps) == sorted([a, b])  # both removed at the end


def test_every_path_has_a_label_and_a_known_kind() -> None:
    for p, d in PATH_DEFS.items():
        assert d.label and d.kind in {"lbctl", "proxy", "reference", "prototype"}, p
        assert d.baseline is None or d.baseline in PATH_DEFS, p


def test_issue_22_compares_the_isolated_ways_with_the_host_namespace() -> None:
    """The candidates are the ways lbctl serves (or could) with replicas in their own
    namespace; the host paths are the bound, not candidates; the isolation run has them all
    plus plain SO_REUSEPORT on the sandbox IP, each once."""
    assert set(throughput.ISOLATED_CANDIDATES) == {"ebpf", "iptables", "ebpf-activation"}
    assert not PATH_DEFS["reuseport-host"].isolated and not PATH_DEFS["ebpf-host"].isolated
    # lbctl's own path now (`lbctl run --activation`): it competes with the proxies too.
    assert "ebpf-activation" in throughput.LBCTL_PATHS
    paths = throughput.ISOLATION_PATHS
    assert len(set(paths)) == len(paths) and set(paths) <= set(PATH_DEFS)
    assert {throughput.HOST_BASELINE, throughput.DEFAULT_PATH, "ebpf-host",
            "reuseport"} <= set(paths)


def test_a_path_can_leave_cleanups_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a path made besides containers and apps (the activation path's eBPF pins and
    sockets) is undone after them, last made first, also when the run fails."""
    done: list[str] = []
    monkeypatch.setattr(throughput, "docker", lambda *a, **k: done.append("rm"))

    def start(s: Setup) -> throughput.Urls:
        s.made.append("c1")
        s.cleanups += [lambda: done.append("first"), lambda: done.append("second")]
        return throughput.Urls("http://x/", None)

    monkeypatch.setitem(PATH_DEFS, "direct", throughput.PathDef("x", start, "reference"))
    env = _Env()
    with pytest.raises(RuntimeError), \
            throughput._targets(env, ["direct"], 2, "h"):  # type: ignore[arg-type]
        raise RuntimeError("run failed")
    assert done == ["rm", "second", "first"]
