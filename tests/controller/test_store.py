"""The state store: what a restarted daemon trusts, so a crash must never leave it torn and a
damaged file must stop the daemon instead of being read as "no apps"."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lbctl.controller.store import StateError, StateStore
from lbctl.model import AppSpec


def _spec(name: str, replicas: int = 2) -> AppSpec:
    return AppSpec.from_json(
        {"name": name, "image": "lbctl/demo:latest", "publish": "127.0.0.1:18080:8080",
         "replicas": replicas, "mode": "iptables"}
    )


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_round_trip_and_mode(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load() == {}  # no file yet: a fresh host, not an error
    apps = {"web": _spec("web", 3), "api": _spec("api", 1)}
    store.save(apps)
    assert StateStore(tmp_path).load() == apps
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert _listing(tmp_path) == ["state.json"]


def test_crash_between_write_and_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save({"web": _spec("web", 2)})
    before = store.path.read_bytes()

    def crash(src: object, dst: object) -> None:
        # The temp file is written and fsynced at this point: the crash lands exactly between
        # the write and the rename.
        assert Path(str(src)).read_bytes() != before
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save({"web": _spec("web", 7), "new": _spec("new", 1)})
    monkeypatch.undo()

    assert store.path.read_bytes() == before
    assert _listing(tmp_path) == ["state.json"], "a temp file was left behind"
    assert store.load() == {"web": _spec("web", 2)}


def test_crash_while_writing_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    store.save({"web": _spec("web", 2)})
    before = store.path.read_bytes()
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.save({"web": _spec("web", 9)})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.path.read_bytes() == before
    assert _listing(tmp_path) == ["state.json"]


def test_first_write_that_fails_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)

    def crash(src: object, dst: object) -> None:
        raise OSError(5, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save({"web": _spec("web")})
    monkeypatch.undo()
    assert _listing(tmp_path) == []
    assert store.load() == {}


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "wrong_version", "not_an_object", "bad_app", "binary",
     "apps_not_a_list", "app_not_an_object"],
)
def test_damaged_file_is_an_error_not_an_empty_state(tmp_path: Path, damage: str) -> None:
    store = StateStore(tmp_path)
    store.save({"web": _spec("web", 3), "api": _spec("api", 1)})
    good = store.path.read_bytes()
    bad = {
        "truncated": good[: len(good) // 2],
        "garbage": b"{{{ not json",
        "empty": b"",
        "wrong_version": json.dumps({"version": 99, "apps": []}).encode(),
        "not_an_object": b"[1, 2, 3]",
        "bad_app": json.dumps(
            {"version": 1, "apps": [{"name": "../x", "image": "i", "publish": "1:2"}]}
        ).encode(),
        "binary": b"\xff\xfe\x00\x01",
        "apps_not_a_list": json.dumps({"version": 1, "apps": 5}).encode(),
        "app_not_an_object": json.dumps({"version": 1, "apps": ["web"]}).encode(),
    }[damage]
    store.path.write_bytes(bad)
    with pytest.raises(StateError) as info:
        store.load()
    message = str(info.value)
    print(f"{damage}: {message}")
    assert "\n" not in message
    assert str(store.path) in message
    assert "move it away" in message or "fix" in message
    assert store.path.read_bytes() == bad  # loading never rewrites what it cannot read
