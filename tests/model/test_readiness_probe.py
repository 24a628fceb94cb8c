"""The readiness probe as users give it: flags, TOML/API fields, an update's delta; bad input
is one line, and a probe is never part of a replica's template."""

from __future__ import annotations

import pytest

from lbctl.cli.inputs import spec_from_run, update_from_args
from lbctl.cli.parser import parse_args
from lbctl.cli.render import progress
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.changes import Update
from lbctl.model.readiness import ReadinessProbe
from lbctl.model.spec import shared_port_check

BASE = {"name": "web", "image": "lbctl/demo", "publish": "8080:8080"}


def test_the_flags_become_the_readiness_section() -> None:
    args = parse_args(["run", "web", "--image", "img", "-p", "8080:8080", "--ready-path",
                       "/ready", "--ready-status", "200-299", "--ready-host", "web.example",
                       "--ready-interval", "0.5", "--ready-probe-timeout", "2",
                       "--ready-threshold", "4", "--ready-success-threshold", "2",
                       "--ready-timeout", "90"])
    data = spec_from_run(args, [])
    spec = AppSpec.from_json(data)
    assert spec.readiness == ReadinessProbe("/ready", (200, 299), "web.example", 0.5, 2.0, 4, 2)
    # --ready-timeout keeps its meaning: the rollout's patience with a new replica
    assert spec.update.ready_timeout == 90


@pytest.mark.parametrize(("field", "value", "words"), [
    ("path", "ready", "must start with /"),
    ("path", "/a b", "must start with /"),
    ("status", "600", "a code or a range"),
    ("status", "399-200", "is empty"),
    ("interval", 0, "from 0.05 to 3600"),
    ("timeout", True, "seconds"),
    ("failure_threshold", 0, "from 1 to 100"),
    ("host", "a b", "host name"),
    ("nope", 1, "unknown readiness field"),
])
def test_bad_probe_fields_are_one_line(field: str, value: object, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        AppSpec.from_json({**BASE, "readiness": {field: value}})


def test_an_http_probe_needs_tcp() -> None:
    with pytest.raises(InvalidInput, match="needs a TCP publish"):
        AppSpec.from_json({**BASE, "publish": "53:53/udp", "readiness": {"path": "/"}})


def test_an_update_changes_the_fields_it_names_and_rolls_nothing() -> None:
    current = AppSpec.from_json({**BASE, "readiness": {"path": "/ready", "interval": 0.5}})
    args = parse_args(["update", "web", "--ready-threshold", "5"])
    change = Update.parse("web", update_from_args(args, []))
    after = change.target(current)
    assert after.readiness == ReadinessProbe("/ready", interval=0.5, failure_threshold=5)
    assert after.spec_hash() == current.spec_hash()
    # An empty path goes back to the TCP check.
    back = Update.parse("web", {"readiness": {"path": ""}}).target(after)
    assert back.readiness.kind == "tcp" and back.readiness.failure_threshold == 5
    with pytest.raises(InvalidInput, match="readiness interval"):
        Update.parse("web", {"readiness": {"interval": -1}})


@pytest.mark.parametrize(("mode", "cmd", "flagged"), [
    ("ebpf", "curl -fs localhost:8080/health", True),
    ("ebpf", "wget -q -O- http://127.0.0.1:8080/", True),
    ("ebpf", '["curl", "-f", "http://[::1]:8080/"]', True),
    ("ebpf", "curl -fs localhost:80801/health", False),  # another port
    ("ebpf", "curl -fs db:8080/health", False),  # another host
    ("ebpf", '["/httpd", "--check"]', False),  # the process's own check
    ("iptables", "curl -fs localhost:8080/health", False),  # a replica's own address
])
def test_a_health_check_of_the_shared_port_is_flagged_in_ebpf_mode(
    mode: str, cmd: str, flagged: bool
) -> None:
    """In ebpf mode every replica listens on one address and port, so a health check of
    localhost:PORT is answered by whichever replica the program picks: one line, with the fix."""
    spec = AppSpec.from_json({**BASE, "mode": mode, "health-cmd": cmd})
    warning = shared_port_check(spec)
    assert (warning is not None) == flagged
    if warning:
        assert "use --ready-path" in warning and "\n" not in warning


def test_the_progress_line_says_what_a_waiting_run_waits_for() -> None:
    """`run` waits for replicas that warm up: its progress line (and its timeout's) names the
    latest failed probe of the replicas not ready."""
    app = {"name": "web", "ready": 1, "desired": 3, "replicas": [
        {"state": "ready", "probe": {"last_failure": {"message": "timeout", "at": 9}}},
        {"state": "starting", "probe": {"last_failure": {"message": "status: 503 on /ready",
                                                         "at": 5}}},
        {"state": "starting", "probe": {"last_failure": {"message": "joining", "at": 3}}}]}
    assert progress(app) == "web: 1/3 ready (2 starting; last probe: status: 503 on /ready)"
