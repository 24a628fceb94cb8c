"""The option table (lbctl.model.options): each docker run option declared once, and every
part of lbctl driven by it: the JSON contract and the spec hash, the command line, the
engine's create JSON, the README's list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lbctl.cli.inputs import spec_from_run, update_from_args
from lbctl.cli.parser import build_parser
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.option import Compose, Judge, NotExported, Refines
from lbctl.model.options import FIELDS, NAMESPACE_FIELDS, OPTIONS, RunOptions
from lbctl.runtime.options import create_config
from tests.model.test_spec_options import FULL

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "web", "image": "lbctl/demo", "publish": "8080:8080"}


def test_each_option_is_declared_once_with_every_part() -> None:
    keys = [o.key for o in OPTIONS]
    flags = [f for o in OPTIONS for f in o.flags]
    assert len(set(keys)) == len(keys) and len(set(flags)) == len(flags)
    assert list(FIELDS) == keys and set(FULL) == set(keys)
    for o in OPTIONS:
        assert o.flags[-1] == f"--{o.key}"
        assert isinstance(o.judge, Judge) and isinstance(o.compose, Compose)
        assert isinstance(o.kube, NotExported | Refines) or callable(o.kube)
        # Only networks are placed by the controller rather than the create body.
        assert (o.engine is None) == (o.key == "network"), o.key
    assert sorted(NAMESPACE_FIELDS) == ["add-host", "dns", "network"]


@pytest.mark.parametrize("key", sorted(FULL))
def test_every_entry_round_trips_json_to_options_to_json(key: str) -> None:
    opts = RunOptions.from_json({key: FULL[key]})
    assert opts.to_json() == {key: FULL[key]}
    assert opts != RunOptions() and RunOptions.from_json(opts.to_json()) == opts
    spec = AppSpec.from_json({**BASE, key: FULL[key]})
    assert AppSpec.from_json(spec.to_json()) == spec  # the state file's round trip
    assert spec.options.without(key) == RunOptions()  # `lbctl update --unset KEY`


# An app of several options as lbctl wrote it before the option table: its spec hash labels
# running replicas, so an upgrade that changed it would roll every one of them.
PINNED: dict[str, Any] = {
    **BASE, "image": "lbctl/demo:1.4", "publish": "127.0.0.1:8080:8080", "env": {"A": "1"},
    "command": ["--x"], "volume": ["data:/data", "/etc/app.conf:/etc/app.conf:ro", "/anon"],
    "mount": ["src=cache,dst=/cache,volume-nocopy"], "tmpfs": ["/run:size=1m"],
    "network": ["backend"], "add-host": ["db:10.0.0.5"], "dns": ["10.0.0.53"],
    "memory": "512m", "cpus": "0.5", "pids-limit": 100, "ulimit": ["nofile=1024:2048"],
    "user": "1000:1000", "workdir": "/data", "entrypoint": ["/httpd"],
    "label": {"team": "web", "a": "b"}, "health-cmd": ["/httpd", "--check"],
    "health-interval": "1s", "health-timeout": "2s", "health-retries": 3,
    "health-start-period": "5s", "read-only": True, "cap-add": ["NET_BIND_SERVICE"],
    "cap-drop": ["ALL"], "stop-signal": "SIGINT", "stop-timeout": 20,
    "log-driver": "json-file", "log-opt": {"max-size": "10m"}, "init": True,
}


def test_existing_apps_keep_their_spec_hash() -> None:
    assert AppSpec.from_json(PINNED).spec_hash() == "b2b4e857a4ea"
    assert AppSpec.from_json({**BASE, "memory": "64m", "volume": ["data:/data"]}
                             ).spec_hash() == "aa3085ae0e81"
    assert AppSpec.from_json(BASE).spec_hash() == "f40358dda9bb"
    # and the JSON the state file and `GET /apps/NAME/spec` carry
    assert AppSpec.from_json(PINNED).to_json()["mount"] == [
        "type=volume,source=cache,target=/cache,volume-nocopy"]
    assert AppSpec.from_json(PINNED).to_json()["cpus"] == 0.5


def _docker_run_group(cmd: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    parser = sub.choices[cmd]  # type: ignore[index]
    group = next(g for g in parser._action_groups
                 if (g.title or "").startswith("docker run options"))
    return [f for a in group._group_actions for f in a.option_strings]


@pytest.mark.parametrize("cmd", ["run", "update"])
def test_the_parsers_docker_run_flags_are_the_tables(cmd: str) -> None:
    extra = ["--env-file"] + (["--unset"] if cmd == "update" else [])
    assert _docker_run_group(cmd) == [f for o in OPTIONS for f in o.flags] + extra


def test_the_new_options_from_the_command_line(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["run", "web", "--image", "i", "-p", "8080:8080",
                                      "--shm-size", "96m", "--group-add", "1234",
                                      "--group-add", "audio"])
    data = spec_from_run(args, [])
    assert (data["shm-size"], data["group-add"]) == ("96m", ["1234", "audio"])
    spec = AppSpec.from_json(data)
    assert spec.options.shm_size == "96m" and spec.options.group_add == ("1234", "audio")
    up = build_parser().parse_args(["update", "web", "--shm-size", "1g", "--unset",
                                    "group-add"])
    assert update_from_args(up, []) == {"shm-size": "1g", "unset": ["group-add"]}
    with pytest.raises(InvalidInput, match="shm-size"):
        spec_from_run(build_parser().parse_args(["run", "web", "--image", "i", "-p", "1:1",
                                                 "--shm-size", "lots"]), [])


def test_create_config_of_the_new_options() -> None:
    opts = RunOptions.from_json({"shm-size": "96m", "group-add": ["1234", "audio"]})
    assert create_config(opts) == ({}, {"ShmSize": 96 << 20, "GroupAdd": ["1234", "audio"]})
    # a number of bytes, as TOML and YAML give it, is kept as its text
    opts = RunOptions.from_json({"shm-size": 1 << 30})
    assert opts.to_json() == {"shm-size": str(1 << 30)}
    assert create_config(opts)[1] == {"ShmSize": 1 << 30}


# ---- the README -------------------------------------------------------------------------


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{title}\n")
    end = text.index("\n#", start + len(title) + 2)
    return text[start:end]


def test_the_readme_lists_the_tables_flags() -> None:
    """`lbctl run` and `update` take these: the list in "Run your own service" is the
    table's (and --env-file, which the command line reads itself)."""
    section = _readme_section("## Run your own service")
    block = section.split("```")[1]
    listed = {f for word in block.split() for f in word.split("/")}
    assert listed == {f for o in OPTIONS for f in o.flags} | {"--env-file"}


def test_the_readme_names_every_compose_key_the_reader_takes() -> None:
    section = _readme_section("### From a compose file")
    named = set(re.findall(r"`([a-z_.]+)", section))
    keys = {o.compose.key.split(".")[0] for o in OPTIONS} - {"volumes"}  # "volumes in short
    assert keys <= named, keys - named  # and long syntax"
