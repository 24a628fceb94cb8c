"""Requests for the API's property tests (tests/api/test_api_properties.py on fakes,
tests/api/test_hostile.py on a real daemon): any JSON, and each route's valid body with
fields set to any JSON or to a plausible value (one that passes the parser and is for the
policy, admission or the caps to judge), with values chosen where bugs were found:
400-digit numbers, NUL, int64's edge, scoped addresses, unknown signals, `/` as a target.

`Target` names what the requests are about. On a real engine, shared with other runs, a
request must not make an engine object the test cannot name: with `engine_safe`, volume,
mount and network fields and the names of networks and volumes to create are only the
target's (prefixed) ones or values no parser takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from lbctl.model.docker_syntax import NAME_RE
from lbctl.model.options import OPTIONS

HUGE = "9" * 400
EDGE = [2 ** 63 - 1, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 10 ** 400, -1, 0, 1, 65, 4097]
TEXT = ["\0", "a\0b", HUGE, "/", "//", "/.", "..", "fe80::1%eth0", "SIGFOO", "1e400", "nan",
        "-1", "9" * 30 + "g", "lbctl", "lbctl.managed", "/:/host", "/run/lbctl:/x",
        "type=bind,source=/,target=/x", "nofile=-1", "memlock=-1", "rtprio=99",
        "/x:size=" + HUGE, "host", "container:x", "127.0.0.1:22:80", "1ms", "\n", "\u202e"]

json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from(EDGE) | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from(TEXT),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(["lbctl.x", "\0"]), inner,
                      max_size=4),
    max_leaves=10,
)
# JSON no parser takes as a volume, mount or network list (not a list of strings).
not_string_lists = st.none() | st.booleans() | st.integers() | st.lists(
    st.integers() | st.none(), min_size=1, max_size=3)
APP_FIELDS = ["name", "image", "publish", "replicas", "mode", "env", "command", "update",
              *(o.key for o in OPTIONS)]
UPDATE_FIELDS = ["image", "env", "env_add", "env_rm", "command", "replicas", "update",
                 "unset", "canary", *(o.key for o in OPTIONS)]
_ENGINE_OBJECTS = ("volume", "mount", "network")


@dataclass(frozen=True)
class Target:
    app: str  # an app that exists
    new: str  # a name for apps the requests create
    image: str  # on the engine
    other_image: str  # on the engine too (a valid update)
    ports: tuple[int, int, int]  # free host ports
    volume: str  # a named volume a request may make
    network: str  # a network a request may make
    bind: str  # an allowed bind prefix
    protected: str = "/run/lbctl"  # a path no member may bind (it exists on a real host)
    engine_safe: bool = False
    max_replicas: int = 64

    def plausible(self) -> dict[str, list[Any]]:
        p1, p2, p3 = self.ports
        v, n, b = self.volume, self.network, self.bind
        return {
            "name": [self.new, self.app, f"{self.new}2"],
            "publish": [f"127.0.0.1:{p1}:8080", f"0.0.0.0:{p2}:8080", "127.0.0.1:80:8080",
                        [f"127.0.0.1:{p3}:8080", f"127.0.0.2:{p3}:8080"]],
            "replicas": sorted({0, 1, min(2, self.max_replicas), min(17, self.max_replicas),
                                self.max_replicas}),
            "mode": ["ebpf", "iptables"],
            "image": [self.other_image, "lbctl/nosuch:1"],
            "volume": [[f"{v}:/d"], [f"{b}:/x:ro"], ["/:/h:ro"], [f"{self.protected}:/x:ro"],
                       [f"{b}/../../etc:/x"], ["/cache"]],
            "mount": [[f"type=bind,source={b},target=/m"], [f"type=volume,source={v},target=/m"],
                      ["type=tmpfs,target=/t,tmpfs-size=8g"]],
            "tmpfs": [["/t:size=8g"], ["/t:size=1m"], ["/t"]],
            "memory": ["64m", "8g", "100t"],
            "shm-size": ["8g", "64m"],
            "pids-limit": [100, 5000, -1, 0],
            "ulimit": [["nofile=1024:2048"], ["memlock=-1"], ["rtprio=1"],
                       ["nofile=1024:99999999"]],
            "health-interval": ["1s", "1ms", "0"],
            "cap-add": [["SYS_ADMIN"], ["NET_BIND_SERVICE"]],
            "network": [["host"], [n], ["bridge"]],
            "log-driver": ["syslog", "local"],
            "group-add": [["0"], ["docker"], ["1234"]],
            "label": [{"a": "b"}, {"lbctl.app": "x"}],
            "env": [{"A": "1"}], "env_add": [{"B": "2"}], "env_rm": [["A"]],
            "unset": [["memory"], ["volume"]], "canary": [1, 50, 99],
            "update": [{"parallelism": 3}, {"order": "stop-first"}],
        }


def _value(t: Target, field: str) -> st.SearchStrategy[Any]:
    known = t.plausible().get(field)
    if t.engine_safe and field in _ENGINE_OBJECTS:
        return st.sampled_from(known or [None]) | not_string_lists
    if field == "replicas" and t.max_replicas < 64:
        return st.sampled_from(known or [0]) | st.integers(max_value=-1) | st.integers(
            min_value=65) | st.none() | st.text(max_size=4)
    return st.sampled_from(known) | json_values if known else json_values


def mutated(t: Target, base: dict[str, Any], fields: list[str],
            ) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with up to three fields set to a plausible value or any JSON."""
    pairs = st.lists(st.sampled_from(fields).flatmap(
        lambda f: st.tuples(st.just(f), _value(t, f))), max_size=3)
    return pairs.map(lambda kv: {**base, **dict(kv)})


def _resource_names(t: Target, own: str, extra: list[str]) -> st.SearchStrategy[str]:
    if t.engine_safe:  # ours, or names Docker refuses (a create fails before the engine)
        return st.sampled_from([own, *extra]) | st.text(max_size=8).filter(
            lambda s: not NAME_RE.match(s) or len(s) < 2)
    return st.sampled_from([own, *extra]) | st.text(max_size=8)


def requests(t: Target) -> st.SearchStrategy[tuple[str, str, Any]]:
    """(method, path, body) to every route the API has, and some it has not."""
    app_base = {"name": t.new, "image": t.image, "publish": f"127.0.0.1:{t.ports[0]}:8080",
                "replicas": min(1, t.max_replicas)}
    apps = mutated(t, app_base, APP_FIELDS)
    anything = json_values.filter(lambda v: not isinstance(v, dict)) if t.engine_safe \
        else json_values
    bodies: dict[str, st.SearchStrategy[Any]] = {
        "app": apps | anything,
        "apply": st.fixed_dictionaries(
            {"apps": st.lists(apps, min_size=1, max_size=2)},
            optional={
                "networks": st.dictionaries(_resource_names(t, t.network, ["lbctl", "bridge"]),
                                            st.just({}) | json_values, max_size=3),
                "volumes": st.dictionaries(_resource_names(t, t.volume, []),
                                           st.just({}) | json_values, max_size=3)})
        | anything,
        "update": mutated(t, {}, UPDATE_FIELDS) | anything,
        "scale": st.fixed_dictionaries({"replicas": _value(t, "replicas")}) | anything,
        "undo": st.fixed_dictionaries({"revision": json_values}) | json_values,
        "any": json_values,
    }
    names = st.sampled_from([t.app, t.new, f"{t.new}x"]) | st.text(max_size=8).filter(
        lambda s: not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", s))
    quoted = names.map(lambda n: re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"%{ord(m[0]):02X}"
                                        if ord(m[0]) < 128 else "x", n) or "x")
    routes = st.one_of(
        st.tuples(st.just("POST"), st.just("/apps"), st.just("app")),
        st.tuples(st.just("PUT"), quoted.map(lambda n: f"/apps/{n}"), st.just("app")),
        st.tuples(st.just("POST"), st.just("/apply"), st.just("apply")),
        st.tuples(st.just("POST"), quoted.map(lambda n: f"/apps/{n}/update"),
                  st.just("update")),
        st.tuples(st.just("POST"), quoted.map(lambda n: f"/apps/{n}/scale"), st.just("scale")),
        st.tuples(st.just("POST"), quoted.map(lambda n: f"/apps/{n}/rollout/undo"),
                  st.just("undo")),
        st.tuples(st.just("DELETE"), quoted.filter(lambda n: n != t.app).map(
            lambda n: f"/apps/{n}?timeout=30"), st.just("any")),
        st.tuples(st.sampled_from(["POST", "PUT", "GET", "PATCH"]),
                  st.sampled_from(["/apps", f"/apps/{t.app}/rollout/pause", "/healthz",
                                   f"/apps/{t.app}/rollout/resume", f"/apps/{t.app}/spec",
                                   "/x"]), st.just("any")),
    )
    return routes.flatmap(lambda r: st.tuples(st.just(r[0]), st.just(r[1]), bodies[r[2]]))
