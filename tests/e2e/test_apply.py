"""`lbctl apply -f`: create, then converge a file of apps (all or nothing); roll a new template;
refuse what it cannot change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.daemon import Daemon
from harness.engine import app_containers
from harness.host import free_port
from harness.traffic import spread

pytestmark = pytest.mark.engine


def _toml(name: str, port: int, replicas: int, mode: str, image: str = "lbctl/demo") -> str:
    return (f'[[app]]\nname = "{name}"\nimage = "{image}"\n'
            f'publish = "127.0.0.1:{port}:8080"\nreplicas = {replicas}\nmode = "{mode}"\n'
            'env = { GREETING = "hi" }\n\n')


def test_apply_creates_scales_rolls_and_refuses_changes(
    daemon: Daemon, app_name: str, tmp_path: Path
) -> None:
    a, b = f"{app_name}-a", f"{app_name}-b"
    pa, pb = free_port(), free_port()
    f = tmp_path / "apps.toml"
    f.write_text(_toml(a, pa, 2, "iptables") + _toml(b, pb, 1, "ebpf"))
    daemon.ok("apply", "-f", str(f))
    assert len(spread(pa, 40)) == 2 and len(spread(pb, 10)) == 1

    # the same file again changes nothing; new counts scale both apps
    daemon.ok("apply", "-f", str(f))
    f.write_text(_toml(a, pa, 1, "iptables") + _toml(b, pb, 3, "ebpf"))
    daemon.ok("apply", "-f", str(f))
    apps = {x["name"]: x for x in json.loads(daemon.ok("status", "-o", "json"))["apps"]}
    assert (apps[a]["ready"], apps[b]["ready"]) == (1, 3)
    assert len(spread(pb, 30)) == 3

    # a changed publish cannot be applied in place: exit 2, one line, nothing changed
    state = (daemon.state_dir / "state.json").read_bytes()
    f.write_text(_toml(a, free_port(), 1, "iptables"))
    r = daemon.cli("apply", "-f", str(f))
    assert r.returncode == 2 and "rm" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (daemon.state_dir / "state.json").read_bytes() == state

    # all or nothing: a valid change of one app and a refused change of another in one file
    f.write_text(_toml(a, pa, 2, "iptables") + _toml(b, pb, 3, "iptables"))
    r = daemon.cli("apply", "-f", str(f))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (daemon.state_dir / "state.json").read_bytes() == state
    assert daemon.status(a)["desired"] == 1

    # a new image rolls the app: apply returns once every replica runs it
    f.write_text(_toml(a, pa, 2, "iptables", image="lbctl/demo-health"))
    out = daemon.ok("apply", "-f", str(f))
    assert f"{a}: rolling" in out, out
    images = {c["Config"]["Image"] for c in app_containers(a)}
    assert images == {"lbctl/demo-health"}, images
    st = daemon.status(a)
    assert st["ready"] == 2 and st["revision"] == 2 and st["rollout"]["state"] == "complete"
