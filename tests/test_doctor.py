"""`lbctl doctor`'s advice about engine restarts (the engine's /info, as Docker and Podman
report it; tests/e2e/test_engine_upgrade.py checks it against the real engine)."""

from __future__ import annotations

from lbctl.doctor import _keeps_containers


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
