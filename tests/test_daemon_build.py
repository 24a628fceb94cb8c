"""The daemon's wiring hands each part its section of the settings tree: a value set on the
command line reaches the part it configures (here the data planes', which tests of those parts
construct themselves)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lbctl.daemon import build
from lbctl.dataplane.iptables import DualStackRules
from lbctl.settings import DaemonSettings, EbpfSettings, IptablesSettings, LogSettings, Settings


def test_the_data_planes_get_their_sections(tmp_path: Path) -> None:
    settings = replace(
        Settings(),
        daemon=DaemonSettings(state_dir=tmp_path / "state"),
        iptables=IptablesSettings(bucket=7, full_resync_interval=5.0),
        ebpf=EbpfSettings(pin_root=tmp_path / "pins", startup_rescan=1.5),
    )
    d = build(settings)
    rules = d.counters.rules
    assert isinstance(rules, DualStackRules)
    assert rules.v4.settings is settings.iptables and rules.v6.settings is settings.iptables
    assert d.ebpf is not None, "the suite runs as root with bcc (make setup)"
    assert d.ebpf.settings is settings.ebpf and d.ebpf.pin_root == tmp_path / "pins"


def test_the_listeners_get_the_api_section(tmp_path: Path) -> None:
    from lbctl.settings import ApiSettings

    settings = replace(Settings(), daemon=DaemonSettings(state_dir=tmp_path / "state"),
                       api=ApiSettings(max_connections=5, max_connections_per_uid=2,
                                       idle_timeout=7.0, header_timeout=3.0, fd_reserve=99))
    d = build(settings)
    limits = d.api.listener.limits
    assert (limits.max_connections, limits.max_per_uid) == (5, 2)
    assert (limits.idle_timeout, limits.header_timeout) == (7.0, 3.0)
    assert d.api.listener.budget.reserve == 99


def test_the_open_files_limit_goes_up_to_the_hard_one_at_most_the_target() -> None:
    import resource

    from lbctl.daemon import raise_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_files(512) == (512, hard)  # up to the target
        assert raise_open_files(128) == (512, hard)  # never lowered
        top = hard if hard != resource.RLIM_INFINITY else 1 << 20
        assert raise_open_files(top + 1)[0] == top  # at most the hard limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # The unit sets both limits to what the daemon raises its soft one to.
    unit = (Path(__file__).parents[1] / "systemd" / "lbctl.service").read_text()
    assert f"LimitNOFILE={DaemonSettings().max_open_files}\n" in unit


def test_the_log_endpoint_gets_the_logs_section_and_the_engine(tmp_path: Path) -> None:
    settings = replace(Settings(), daemon=DaemonSettings(state_dir=tmp_path / "state"),
                       logs=LogSettings(max_streams_per_caller=3, reorder_window=0.5))
    d = build(settings)
    assert d.api.logs is not None
    assert d.api.logs.logs.settings is settings.logs
    assert d.api.logs.logs.engine is d.engine
    assert any(r.resource is not None and r.resource.canonical == "/apps/{name}/logs"
               for r in d.api.app.router.routes())
