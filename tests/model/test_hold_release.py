"""The release command and the traffic hold as input: what the spec, the typed changes, the
state file, the command line, compose files and the exports make of them (no daemon)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbctl.cli.inputs import read_apps_file, spec_from_run, update_from_args
from lbctl.cli.parser import build_parser
from lbctl.cli.render import render_table
from lbctl.controller.store import AppRecord, State, StateStore
from lbctl.export import export
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.changes import HoldTraffic, ResumeTraffic, Update
from lbctl.model.hold import DEFAULT_MAX, Hold, parse_max
from lbctl.model.rollout import Revision

BASE: dict[str, Any] = {"name": "web", "image": "img:1", "publish": "127.0.0.1:8080:80"}


def app(**kw: Any) -> AppSpec:
    return AppSpec.from_json({**BASE, **kw})


def test_the_release_command_is_not_part_of_the_template() -> None:
    plain = app()
    with_release = app(release="bin/rails db:migrate")
    assert with_release.spec_hash() == plain.spec_hash()  # changing it alone rolls nothing
    assert with_release.release_argv() == ("bin/rails", "db:migrate")
    assert app(release=["sh", "-c", "a && b"]).release_argv() == ("sh", "-c", "a && b")
    assert app(release="sh -c 'a && b'").release_argv() == ("sh", "-c", "a && b")
    # As written, and only when given (an app without one keeps the JSON it had).
    assert with_release.to_json()["release"] == "bin/rails db:migrate"
    assert "release" not in plain.to_json()
    assert AppSpec.from_json(with_release.to_json()) == with_release
    assert app(release="").release is None and app(release=[]).release is None


@pytest.mark.parametrize(("value", "words"), [
    ("'unclosed", "invalid release command"), ("   ", "must name a command"),
    (["", "x"], "list of strings"), ([1], "list of strings"), (5, "list of strings"),
])
def test_a_bad_release_command_is_one_line(value: object, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        app(release=value)


def test_update_sets_or_removes_the_release_command() -> None:
    current = app(release="old")
    assert Update.parse("web", {"release": "new"}).target(current).release == "new"
    assert Update.parse("web", {"release": ["a", "b"]}).target(current).release == ("a", "b")
    assert Update.parse("web", {"release": ""}).target(current).release is None
    assert Update.parse("web", {"image": "img:2"}).target(current).release == "old"
    with pytest.raises(InvalidInput):
        Update.parse("web", {"release": "'x"})


def test_hold_changes_parse_their_body() -> None:
    assert HoldTraffic.parse("web", None) == HoldTraffic("web", DEFAULT_MAX)
    assert HoldTraffic.parse("web", {"max": 12}) == HoldTraffic("web", 12.0)
    assert ResumeTraffic.parse("web", {}) == ResumeTraffic("web")
    for body in ({"max": 0}, {"max": -1}, {"max": 3601}, {"max": "5"}, {"max": True},
                 {"until": 5}, [5]):
        with pytest.raises(InvalidInput):
            HoldTraffic.parse("web", body)
    with pytest.raises(InvalidInput):
        ResumeTraffic.parse("web", {"max": 1})
    assert parse_max(3600) == 3600.0


def test_the_state_file_keeps_the_hold_and_the_released_revisions(tmp_path: Path) -> None:
    spec = app()
    rec = AppRecord(spec, 2, (Revision(1, spec, 1.0), Revision(2, spec, 2.0)), None,
                    hold=Hold(100.0, 130.0), released=(1, 2))
    store = StateStore(tmp_path)
    store.save_state(State({"web": rec}))
    assert store.load_state().apps["web"] == rec
    # A record without either writes neither: a file an older lbctl reads stays the same.
    store.save_state(State({"web": AppRecord(spec, 1, (Revision(1, spec, 1.0),))}))
    text = (tmp_path / "state.json").read_text()
    assert '"hold"' not in text and '"released"' not in text
    assert rec.with_released(3) == (1, 2)  # 3 is not in the history


def test_the_command_line_takes_release_pause_and_resume(tmp_path: Path) -> None:
    p = build_parser()
    run = p.parse_args(["run", "web", "--image", "img:1", "-p", "8080:80", "--release",
                        "migrate --all"])
    assert spec_from_run(run, [])["release"] == "migrate --all"
    upd = p.parse_args(["update", "web", "--release", ""])
    assert update_from_args(upd, []) == {"release": ""}
    assert p.parse_args(["pause", "web", "--max", "12"]).max == 12.0
    assert p.parse_args(["resume", "web"]).name == "web"
    for args in (["pause", "web", "--max", "0"], ["pause", "web", "--max", "x"],
                 ["pause", "Web!"], ["resume"]):
        r = subprocess.run([sys.executable, "-m", "lbctl", *args], capture_output=True,
                           text=True, check=False,
                           env={"LBCTL_SOCKET": str(tmp_path / "x.sock"), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_compose_and_toml_carry_the_release_command(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  web:\n    image: img:1\n"
                       "    x-lbctl: {publish: '127.0.0.1:8080:80', release: [migrate, 5]}\n")
    [data] = read_apps_file(compose).apps
    assert data["release"] == ["migrate", "5"]
    spec = AppSpec.from_json(data)
    out = export(spec, "compose")
    assert yaml.safe_load(out.split("\n", 1)[1] if out.startswith("#") else out)
    back = tmp_path / "back.yaml"
    back.write_text(out)
    assert AppSpec.from_json(read_apps_file(back).apps[0]).release == ("migrate", "5")
    toml = tmp_path / "apps.toml"
    toml.write_text('[[app]]\nname = "web"\nimage = "img:1"\npublish = "8080:80"\n'
                    'release = "bin/migrate"\n')
    assert read_apps_file(toml).apps[0]["release"] == "bin/migrate"
    assert "Release command (migrate 5)" in export(spec, "kubernetes")
    assert "the release command" in export(spec, "swarm")


def test_status_table_shows_the_hold_and_a_running_release() -> None:
    a: dict[str, Any] = {
        "name": "web", "mode": "ebpf", "publish": "127.0.0.1:8080:80/tcp", "desired": 1,
        "ready": 1, "error": None, "converged": False, "replicas": [],
        "hold": {"paused": True, "since": 1.0, "until": 2e9, "holding": True, "held": 12},
        "release": {"revision": 3, "state": "running", "message": ""},
    }
    out = render_table([a])
    assert "paused until" in out and "12 connection(s) waiting" in out
    assert "release: revision 3 running" in out
    assert all(len(line) <= 80 for line in out.splitlines())
