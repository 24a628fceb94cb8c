"""`lbctl daemon`'s flags set the settings tree, and only what they name: a flag not given
leaves Settings()'s default, which is also what --help shows (no default of argparse's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbctl.cli.daemon_flags import FLAGS, settings_from
from lbctl.cli.parser import parse_args
from lbctl.model import InvalidInput
from lbctl.settings import Settings


def daemon(*flags: str) -> Settings:
    return settings_from(parse_args(["daemon", *flags]))


def test_no_flag_is_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert daemon() == Settings()


def test_each_flag_sets_its_field_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    s = daemon("--state-dir", "/srv/lbctl", "--metrics-addr", "127.0.0.1:1", "--log-level",
               "debug", "--docker-host", "unix:///x.sock", "--engine-timeout", "2",
               "--drain-timeout", "3", "--stop-grace", "4", "--unhealthy-grace", "5",
               "--bpf-pin-root", "/sys/fs/bpf/x", "--max-apps", "6", "--max-containers", "0",
               "--default-pids-limit", "0", "--activation-shim", "/opt/activate",
               "--max-log-streams", "2", "--max-pids-total", "20000",
               "--max-memory-total", "16g", "--min-health-interval", "1",
               "--release-timeout", "7", "--sandbox-image", "p:1")
    assert (s.daemon.state_dir, s.daemon.metrics_addr, s.daemon.log_level) == (
        Path("/srv/lbctl"), "127.0.0.1:1", "debug")
    assert (s.engine.docker_host, s.engine.call_timeout) == ("unix:///x.sock", 2.0)
    assert (s.drain.timeout, s.drain.stop_grace, s.worker.unhealthy_grace) == (3.0, 4, 5.0)
    assert s.ebpf.pin_root == Path("/sys/fs/bpf/x")
    assert s.activation.shim == Path("/opt/activate")
    assert s.activation.shim_timeout == Settings().activation.shim_timeout
    assert (s.limits.max_apps, s.limits.max_containers, s.limits.default_pids_limit) == (6, 0, 0)
    assert (s.worker.release_timeout, s.worker.sandbox_image) == (7.0, "p:1")
    assert (s.limits.max_pids_total, s.limits.max_memory_total,
            s.limits.min_health_interval) == (20000, 16 << 30, 1.0)
    assert s.logs.max_streams_per_caller == 2
    d = Settings()
    assert (s.worker.resync_interval, s.probes, s.hostrules, s.iptables, s.api) == (
        d.worker.resync_interval, d.probes, d.hostrules, d.iptables, d.api)
    assert (s.logs.reorder_window, s.logs.read_ahead) == (d.logs.reorder_window,
                                                          d.logs.read_ahead)
    assert len(FLAGS) == 19 + len(LISTENER_FLAGS)  # every flag above, and the listeners'


LISTENER_FLAGS = ("--api-max-connections", "--api-max-connections-per-uid",
                  "--metrics-max-connections", "--api-idle-timeout", "--api-header-timeout",
                  "--fd-reserve", "--max-open-files")


def test_the_listeners_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    s = daemon("--api-max-connections", "7", "--api-max-connections-per-uid", "2",
               "--metrics-max-connections", "0", "--api-idle-timeout", "3",
               "--api-header-timeout", "1.5", "--fd-reserve", "64", "--max-open-files", "4096")
    a = s.api
    assert (a.max_connections, a.max_connections_per_uid, a.metrics_max_connections) == (7, 2, 0)
    assert (a.idle_timeout, a.header_timeout, a.fd_reserve) == (3.0, 1.5, 64)
    assert s.daemon.max_open_files == 4096
    assert (a.max_body, a.counters_max_age) == (Settings().api.max_body,
                                                Settings().api.counters_max_age)
    with pytest.raises(InvalidInput, match="--api-header-timeout must be positive"):
        daemon("--api-header-timeout", "0")
    assert {f.name for f in FLAGS} >= set(LISTENER_FLAGS)


def test_the_state_directory_of_systemd_when_no_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/other")
    assert daemon().daemon.state_dir == Path("/var/lib/other")
    assert daemon("--state-dir", "/x").daemon.state_dir == Path("/x")


def test_help_shows_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["daemon", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = Settings()
    for flag, value in (("--drain-timeout", d.drain.timeout), ("--max-apps", d.limits.max_apps),
                        ("--unhealthy-grace", d.worker.unhealthy_grace),
                        ("--engine-timeout", d.engine.call_timeout)):
        after = text.split(f"{flag} ", 2)[-1].split(" --")[0]
        assert f"(default {value})" in after, (flag, after)


@pytest.mark.parametrize("flags, message", [
    (["--engine-timeout", "0"], "--engine-timeout must be positive"),
    (["--drain-timeout", "-1"], "--drain-timeout must not be negative"),
    (["--max-containers", "-3"], "--max-containers must not be negative"),
    (["--max-pids-total", "-1"], "--max-pids-total must not be negative"),
    (["--min-health-interval", "-0.5"], "--min-health-interval must not be negative"),
])
def test_out_of_range_is_one_line(flags: list[str], message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{message}$"):
        daemon(*flags)
