"""`lbctl doctor`'s advice about engine restarts (the engine's /info, as Docker and Podman
report it; tests/e2e/test_engine_upgrade.py checks it against the real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbctl.doctor import _keeps_containers, _probe_ports


def test_docker_without_live_restore_is_a_warning_with_the_fix() -> None:
    c = _keeps_containers("docker", {"LiveRestoreEnabled": False})
    assert not c.ok and c.advice and c.problem == "WARN"
    assert '"live-restore": true' in c.fix and "/etc/docker/daemon.json" in c.fix
    assert "reload" in c.fix


def test_docker_with_live_restore_is_ok() -> None:
    assert _keeps_containers("docker", {"LiveRestoreEnabled": True}).ok


def test_podman_has_no_daemon_to_restart() -> None:
    # Podman's /info says LiveRestoreEnabled false: it has no such option to turn on.
    c = _keeps_containers("podman", {"LiveRestoreEnabled": False})
    assert c.ok and "Podman" in c.detail


def test_a_missing_shim_is_advice_with_its_fix(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the shim apps take the sandbox path: lbctl works, so WARN, not MISSING."""
    from lbctl import doctor

    shim = tmp_path / "activate"
    monkeypatch.setattr(doctor, "shim_path", lambda: shim)
    c = doctor._activation()
    assert (c.ok, c.problem, c.advice) == (False, "WARN", True)
    assert "is missing" in c.detail and "make setup" in c.fix
    shim.write_bytes(b"\x7fELF")
    shim.chmod(0o755)
    assert doctor._activation().ok


def test_an_ephemeral_range_over_the_probe_ports_is_a_warning_with_the_fix() -> None:
    assert _probe_ports("32768\t60999\n").ok  # Linux's default
    c = _probe_ports("1024\t65535\n")  # a tuned host's
    assert not c.ok and c.advice and c.problem == "WARN"
    assert "61000-62023" in c.detail and "ip_local_port_range" in c.fix
