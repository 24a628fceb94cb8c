"""Racing changes against a real daemon, over its real socket: concurrent `lbctl update`
processes all land (each one's env key is in the app at the end, one revision each), a
`lbctl scale` during a `lbctl update` keeps both, and racing `POST /apps` of one name give
exactly one 201 (the others a 409, nothing of theirs committed)."""

from __future__ import annotations

import subprocess
import threading
from typing import Any

import pytest

from harness.daemon import LBCTL, ApiFailure, Daemon
from harness.host import free_port

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"
N = 8


def _run(d: Daemon, app: str, replicas: int = 1) -> None:
    d.ok("run", app, "--image", IMAGE, "-p", f"127.0.0.1:{free_port()}:8080", "--replicas",
         str(replicas), "--mode", "iptables", "--monitor", "0", timeout=120)


def _together(d: Daemon, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Start every `lbctl` command at once, then wait for all of them."""
    procs = [subprocess.Popen([*LBCTL, *cmd], env=d.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for cmd in commands]
    done = []
    for cmd, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    return done


def test_concurrent_updates_all_land(daemon: Daemon, app_name: str) -> None:
    _run(daemon, app_name)
    runs = _together(daemon, *[["update", app_name, "-e", f"K{i}={i}"] for i in range(N)])
    for r in runs:
        assert r.returncode == 0, (r.args, r.stderr)
        assert "is live" in r.stdout, r.stdout
    spec = daemon.api("GET", f"/apps/{app_name}/spec")
    assert spec["env"] == {f"K{i}": str(i) for i in range(N)}, spec["env"]
    ro = daemon.api("GET", f"/apps/{app_name}/rollout")
    # Each update added a key: a new template each, so one revision each after the first.
    assert ro["revision"] == N + 1, ro
    assert [h["revision"] for h in ro["history"]] == list(range(1, N + 2)), ro["history"]
    st = daemon.status(app_name)
    assert st["ready"] == 1 and st["rollout"]["state"] == "complete", st


def test_a_scale_during_an_update_keeps_both(daemon: Daemon, app_name: str) -> None:
    _run(daemon, app_name)
    env: dict[str, str] = {}
    for round_, n in enumerate((3, 2)):
        # Several updates beside the scale, so that it lands in the middle of one.
        keys = [f"R{round_}K{i}" for i in range(4)]
        runs = _together(daemon, *[["update", app_name, "-e", f"{k}=x"] for k in keys],
                         ["scale", f"{app_name}={n}"])
        for r in runs:
            assert r.returncode == 0, (r.args, r.stderr)
        env.update(dict.fromkeys(keys, "x"))
        spec = daemon.api("GET", f"/apps/{app_name}/spec")
        assert spec["replicas"] == n, (round_, spec)
        assert spec["env"] == env, (round_, spec)
    daemon.wait(lambda: daemon.status(app_name)["ready"] == 2, what="2 ready replicas")


def test_racing_creates_give_one_201(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    start = threading.Barrier(N)
    answers: list[tuple[int, Any, int]] = []

    def create(i: int) -> None:
        body = {"name": app_name, "image": IMAGE, "publish": f"127.0.0.1:{port}:8080",
                "replicas": 1, "mode": "iptables", "env": {"WHO": str(i)}}
        start.wait()
        try:
            answers.append((201, daemon.api("POST", "/apps", body), i))
        except ApiFailure as e:
            answers.append((e.status, e.data, i))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(s for s, _, _ in answers)
    assert statuses == [201] + [409] * (N - 1), answers
    winner = next(i for s, _, i in answers if s == 201)
    for s, data, _ in answers:
        if s == 409:
            assert "already exists" in data["error"] and "\n" not in data["error"], data
    spec = daemon.api("GET", f"/apps/{app_name}/spec")
    assert spec["env"] == {"WHO": str(winner)}, (winner, spec)
    ro = daemon.api("GET", f"/apps/{app_name}/rollout")
    assert ro["revision"] == 1 and len(ro["history"]) == 1, ro
    daemon.wait(lambda: daemon.status(app_name)["ready"] == 1, what="the winner's replica")
