"""The typed changes (lbctl.model.changes): what each parser accepts and refuses (one line,
before anything is asked of the daemon's state), and what each change makes of an app. A
delta applies to whatever the app is, so two deltas applied in either order both land."""

from __future__ import annotations

from typing import Any

import pytest

from lbctl.model import AppSpec, InvalidInput, Mode
from lbctl.model.changes import (
    Apply,
    Create,
    Outcome,
    Pause,
    Replace,
    Resume,
    Scale,
    Undo,
    Update,
    parse_rollout,
)
from lbctl.model.errors import Conflict, NotFound

BASE: dict[str, Any] = {"name": "web", "image": "img:1", "publish": "127.0.0.1:8080:80",
                        "replicas": 2, "env": {"A": "1"}, "memory": "64m",
                        "volume": ["data:/data"], "update": {"monitor": 1}}


def app(**kw: Any) -> AppSpec:
    return AppSpec.from_json({**BASE, **kw})


def upd(body: dict[str, Any]) -> Update:
    return Update.parse("web", body)


@pytest.mark.parametrize(("body", "words"), [
    ({}, "body must be an object"),
    ([], "body must be an object"),
    ({"name": "api"}, "cannot be renamed"),
    ({"bogus": 1}, "unknown field(s): bogus"),
    ({"publish": "127.0.0.1:1:1"}, "publish and mode cannot be updated"),
    ({"mode": "ebpf"}, "publish and mode cannot be updated"),
    ({"env-file": "x"}, "env-file is read by the command line"),
    ({"unset": ["image"]}, "unset must be a list of options"),
    ({"unset": "memory"}, "unset must be a list of options"),
    ({"memory": "1g", "unset": ["memory"]}, "memory is both given and unset"),
    ({"memory": "lots"}, "memory"),
    ({"volume": ["vol:/x"], "tmpfs": ["/x"]}, "/x is mounted twice"),
    ({"image": "a b"}, "invalid image"),
    ({"env_add": 5}, "env_add must be"),
    ({"env_add": ["NOEQUALS"]}, "KEY=VALUE"),
    ({"env_rm": "A"}, "env_rm must be a list"),
    ({"command": "sh -c id"}, "command must be a list"),
    ({"replicas": -1}, "replicas"),
    ({"update": {"bogus": 1}}, "unknown update field(s): bogus"),
    ({"update": {"monitor": -1}}, "update monitor"),
    ({"update": 3}, "update must be an object"),
    ({"canary": 100, "image": "img:2"}, "canary must be a percentage"),
])
def test_an_update_is_refused_when_parsed(body: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as e:
        upd(body)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_an_update_changes_only_what_it_names() -> None:
    cur = app()
    new = upd({"image": "img:2"}).target(cur)
    assert new == AppSpec.from_json({**BASE, "image": "img:2"})
    new = upd({"env_add": ["B=2"], "env_rm": ["A"], "replicas": 3}).target(cur)
    assert (dict(new.env), new.replicas, new.image) == ({"B": "2"}, 3, "img:1")
    new = upd({"env": {"C": "3"}, "env_add": {"D": "4"}}).target(cur)
    assert dict(new.env) == {"C": "3", "D": "4"}
    # A list option given replaces the list; unset, null or the default value resets.
    new = upd({"volume": ["other:/other"], "unset": ["memory"]}).target(cur)
    assert (new.options.volume, new.options.memory) == (("other:/other",), None)
    assert upd({"memory": None}).target(cur).options.memory is None
    assert upd({"volume": []}).target(cur).options.volume == ()
    assert upd({"read-only": True}).target(cur).options.read_only
    assert not upd({"read-only": False}).target(app(**{"read-only": True})).options.read_only
    # The named policy fields only: the others stay what they were.
    new = upd({"update": {"parallelism": 3}}).target(cur)
    assert (new.update.parallelism, new.update.monitor) == (3, 1.0)
    assert upd({"command": ["x", "y"]}).target(cur).command == ("x", "y")


def test_two_deltas_land_in_either_order() -> None:
    a, b = upd({"env_add": ["K=1"], "memory": "128m"}), upd({"env_add": ["L=2"], "replicas": 5})
    one, two = b.target(a.target(app())), a.target(b.target(app()))
    assert one == two
    assert (dict(one.env), one.options.memory, one.replicas) == (
        {"A": "1", "K": "1", "L": "2"}, "128m", 5)


def test_an_update_is_checked_with_the_app_it_lands_on() -> None:
    with pytest.raises(InvalidInput, match="/data is mounted twice"):
        upd({"tmpfs": ["/data"]}).target(app())
    host = app(mode="ebpf", publish="127.0.0.1:8080:8080", volume=[], network=["host"])
    with pytest.raises(InvalidInput, match="--network host: dns cannot be set"):
        upd({"dns": ["10.0.0.1"]}).target(host)
    with pytest.raises(InvalidInput, match="nothing new to send traffic to"):
        upd({"replicas": 3, "canary": 25}).target(app())
    assert upd({"image": "img:2", "canary": 25}).target(app()).image == "img:2"
    with pytest.raises(NotFound, match="no app named web"):
        upd({"image": "img:2"}).target(None)


def test_create_replace_scale() -> None:
    assert Create.parse(BASE, Mode.EBPF).spec.mode is Mode.EBPF  # the daemon's default
    assert Create.parse({**BASE, "mode": "iptables"}, Mode.EBPF).spec == app(mode="iptables")
    assert Create(app()).target(None) == app()
    with pytest.raises(Conflict, match="app web already exists"):
        Create(app()).target(app())
    assert Replace.parse({**BASE, "image": "img:2"}, Mode.IPTABLES, "web").target(app()) \
        == app(image="img:2")
    assert Replace.parse({k: v for k, v in BASE.items() if k != "name"}, Mode.IPTABLES,
                         "web").name == "web"
    with pytest.raises(InvalidInput, match="differs from the one in the path"):
        Replace.parse(BASE, Mode.IPTABLES, "api")
    assert Scale.parse("web", {"replicas": 7}).target(app()) == app(replicas=7)
    bad: Any
    for bad in ({"replicas": 2, "x": 1}, {"replicas": "2"}, [], {"replicas": -1}):
        with pytest.raises(InvalidInput):
            Scale.parse("web", bad)
    with pytest.raises(NotFound):
        Scale("web", 1).target(None)


def test_apply_and_rollout_actions_parse() -> None:
    a = Apply.parse({"apps": [BASE], "networks": {"backend": {"k": "v"}}}, Mode.IPTABLES)
    assert [r.spec for r in a.apps] == [app()] and a.networks == {"backend": {"k": "v"}}
    bad: Any
    for bad in ({}, {"apps": []}, {"apps": [BASE], "bogus": 1},
                {"apps": [BASE], "volumes": {"v": {"k": 1}}},
                {"apps": [BASE], "networks": {"bad name!": {}}}):
        with pytest.raises(InvalidInput):
            Apply.parse(bad, Mode.IPTABLES)
    assert parse_rollout("web", "pause", None) == Pause("web")
    assert parse_rollout("web", "resume", {}) == Resume("web")
    assert parse_rollout("web", "undo", {"revision": 3}) == Undo("web", 3)
    assert parse_rollout("web", "undo", None) == Undo("web")
    with pytest.raises(InvalidInput, match="whole number"):
        parse_rollout("web", "undo", {"revision": True})
    with pytest.raises(InvalidInput, match="unknown rollout action"):
        parse_rollout("web", "explode", None)


def test_an_outcome_says_what_was_made() -> None:
    out = Outcome("web", "rolling", 3, 7, app())
    assert out.to_json() == {"app": app().to_json(), "result": "rolling", "revision": 3,
                             "generation": 7}


def test_socket_activation_is_the_apps_unless_a_change_says() -> None:
    """A spec that does not say (a TOML file, a `run` without --activation) keeps the app's
    path; one that says is what the apps service judges (a different path is refused)."""
    on = app(mode="ebpf", activation=True)
    silent = Replace(app(mode="ebpf", image="img:2"))
    assert silent.target(on).activation is True and silent.target(on).image == "img:2"
    assert silent.target(None).activation is None  # a new app: the image's label decides
    assert Replace(app(mode="ebpf", activation=False)).target(on).activation is False
    assert upd({"image": "img:2"}).target(on).activation is True
    with pytest.raises(InvalidInput, match="activation cannot be updated"):
        upd({"activation": False})
