"""Hostile input on the control API, against a real daemon's unix socket: every bad request
gets a 4xx with a JSON {"error": ...}, the daemon stays up and nothing changes (state.json
bytes, the app list, the containers, the rules); and the property of any JSON to any route
(tests/api/test_api_properties.py) with the real engine: 2xx or a one-line 4xx that leaves
the state file, containers, networks, volumes and rules as they were."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import PREFIX
from harness.daemon import Daemon, UnixHTTPConnection
from harness.engine import app_containers, docker
from harness.host import free_port, iptables_save
from lbctl.model.options import FIELDS as OPTION_FIELDS
from lbctl.settings import ApiSettings

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"
MAX_BODY = ApiSettings().max_body  # the daemon runs with the default
VALID_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,19}")


@dataclass(frozen=True)
class Req:
    kind: str
    method: str
    path: str
    body: bytes | None = None
    chunked: bool = False

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) <= 120 else (
            self.body[:60] + b"..." + self.body[-20:])
        return f"Req({self.kind!r}, {self.method} {self.path[:120]!r}, body={body!r} " \
               f"({len(self.body or b'')} bytes), chunked={self.chunked})"


def send(d: Daemon, r: Req) -> tuple[int, str, bytes]:
    conn = UnixHTTPConnection(str(d.socket))
    conn.timeout = 30
    try:
        headers = {"Content-Type": "application/json"}
        if r.chunked:
            assert r.body is not None
            body: Any = _chunks(r.body)
            conn.request(r.method, r.path, body=body, headers=headers, encode_chunked=True)
        else:
            conn.request(r.method, r.path, body=r.body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def _chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# ---- strategies: every one of them yields a request that must be refused ----------------------

FIXED_HOSTILE_NAMES = [
    "../x", "..", ".", "a;rm -rf /", "a;rm -rf", "$(id)", "`id`", "a b", "A", "Web", "-x", ".x",
    "_x", "x/y", "x\\y", "ü", "名前", "a" * 21, "a" * 300, "", "x\x00y", "web\n", "%2e%2e",
    "a|b", "a&b", "a>b", "'x'", '"x"', "*", "x?y", "x#y",
]
hostile_names = st.one_of(
    st.sampled_from(FIXED_HOSTILE_NAMES),
    st.text(max_size=40).filter(lambda s: not VALID_NAME.fullmatch(s)),
)
# valid names of apps that do not exist
unknown_names = st.from_regex(r"\Azz[a-z0-9]{1,10}\Z")

wrong_types = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
bad_replicas = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=65, max_value=10**6),
    st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["3", "1", "", "-1", "1e3", True, False, None, [3], {"n": 3}]),
)
MALFORMED = [
    b"{", b"}", b"{'replicas': 1}", b"nul", b"[1,", b"\xff\xfe\xfd", b'{"replicas": }',
    b'{"replicas": 1,}', b"{replicas: 1}", b"\x00", b'{"a":1}{"b":2}', b"[" * 20000 + b"]" * 20000,
    b'{"a":' * 10000 + b"1" + b"}" * 10000,
]


def _is_json(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except (ValueError, RecursionError):
        return False


malformed = st.one_of(st.sampled_from(MALFORMED), st.binary(min_size=1, max_size=200).filter(
    lambda b: not _is_json(b)))


def huge(valid_prefix: bytes) -> st.SearchStrategy[bytes]:
    """Bodies over 64 KiB (valid JSON or not)."""
    return st.sampled_from([
        valid_prefix[:-1] + b', "pad": "' + b"x" * (MAX_BODY + 100) + b'"}',
        b"[" + b"1," * (MAX_BODY // 2 + 10) + b"1]",
        b"x" * (MAX_BODY + 1),
        b" " * (4 * MAX_BODY) + valid_prefix,
    ])


def requests(existing: str, port: int) -> st.SearchStrategy[Req]:
    scale = f"/apps/{existing}/scale"
    valid_spec = {"name": "zznew", "image": IMAGE, "publish": f"127.0.0.1:{port}:8080",
                  "replicas": 1, "mode": "iptables"}

    def spec_with(**change: Any) -> bytes:
        return json.dumps({**valid_spec, **change}).encode()

    bad_fields = st.one_of(
        hostile_names.map(lambda n: ("name", n)),
        st.sampled_from(["lbctl/demo;rm -rf /", "$(id)", "`id`", "a b", "", "../../x", "-x",
                         "x" * 300, "lbctl/nosuch:1"]).map(lambda i: ("image", i)),
        st.sampled_from(["", "abc", "99999:8080", "8080", "1:2:3:4", "127.0.0.1:0:80",
                         "::1:80:80", "1.2.3:80:80", "80:80/sctp", "80:80/", "$(id):80:80",
                         "a;b"]).map(lambda p: ("publish", p)),
        st.integers().map(lambda p: ("publish", p)),
        bad_replicas.map(lambda r: ("replicas", r)),
        st.one_of(st.sampled_from(["ipvs", "EBPF", "", "proxy", 0, False]), wrong_types.filter(
            lambda v: v is not None and v not in ("iptables", "ebpf"))).map(
            lambda m: ("mode", m)),  # absent or null is the default mode: anything else fails
        st.sampled_from([{"A B": "1"}, {"1X": "1"}, {"X": 1}, {"X": None}, ["NOEQUALS"], 5,
                         "A=1", {"$(id)": "x"}]).map(lambda e: ("env", e)),
        st.sampled_from(["sh -c id", [1, 2], {"a": 1}, 5, [None]]).map(lambda c: ("command", c)),
        st.just(("name", existing)),  # already exists
    )
    create_bad = bad_fields.map(lambda kv: Req("create: bad " + str(kv[0]), "POST", "/apps",
                                               spec_with(**{kv[0]: kv[1]})))
    create_unknown = st.text(min_size=1, max_size=20).filter(
        # docker run's options are fields now (`cpus: 1` is a valid spec)
        lambda k: k not in valid_spec and k not in ("env", "command") and k not in OPTION_FIELDS
    ).map(lambda k: Req("create: unknown field", "POST", "/apps", spec_with(**{k: 1})))
    create_wrong_top = wrong_types.map(
        lambda v: Req("create: not an object", "POST", "/apps", json.dumps(v).encode()))
    # A new image, env or command rolls the app (valid); a new mode or publish cannot be
    # applied in place, and an image the engine lacks cannot be rolled to.
    put_changed = st.sampled_from([("mode", "ebpf"), ("image", "lbctl/nosuch:1"),
                                   ("publish", f"127.0.0.1:{free_port()}:8080")]).map(
        lambda kv: Req("put: unchangeable spec", "PUT", f"/apps/{existing}",
                       spec_with(name=existing, **{kv[0]: kv[1]})))
    put_other_name = unknown_names.map(
        lambda n: Req("put: name differs from path", "PUT", f"/apps/{existing}",
                      spec_with(name=n)))
    scale_bad = bad_replicas.map(lambda v: Req(
        "scale: bad replicas", "POST", scale, json.dumps({"replicas": v}).encode()))
    scale_wrong_top = wrong_types.map(
        lambda v: Req("scale: not an object", "POST", scale, json.dumps(v).encode()))
    scale_unknown = st.text(max_size=10).filter(lambda k: k != "replicas").map(
        lambda k: Req("scale: unknown field", "POST", scale,
                      json.dumps({"replicas": 2, k: 1}).encode()))
    scale_name = hostile_names.map(lambda n: Req(
        "scale: hostile name", "POST", f"/apps/{_q(n)}/scale", b'{"replicas": 1}'))
    scale_unknown_app = unknown_names.map(lambda n: Req(
        "scale: unknown app", "POST", f"/apps/{n}/scale", b'{"replicas": 1}'))
    bad_json = st.tuples(
        st.sampled_from([("POST", "/apps"), ("PUT", f"/apps/{existing}"), ("POST", scale)]),
        malformed,
    ).map(lambda t: Req("malformed JSON", t[0][0], t[0][1], t[1]))
    huge_body = st.tuples(
        st.sampled_from([("POST", "/apps", spec_with()), ("PUT", f"/apps/{existing}",
                         spec_with(name=existing, replicas=1)),
                         ("POST", scale, b'{"replicas": 1}')]),
        st.booleans(), st.data(),
    ).map(lambda t: Req("huge body" + (" (chunked)" if t[1] else ""), t[0][0], t[0][1],
                        t[2].draw(huge(t[0][2])), chunked=t[1]))
    name_paths = st.tuples(st.sampled_from(["GET", "DELETE"]), hostile_names, st.sampled_from(
        ["", "/spec"])).filter(lambda t: not (t[0] == "DELETE" and t[2])).map(
        lambda t: Req(f"{t[0]} hostile name", t[0], f"/apps/{_q(t[1])}{t[2]}"))
    unknown_app = st.tuples(st.sampled_from(["GET", "DELETE"]), unknown_names).map(
        lambda t: Req(f"{t[0]} unknown app", t[0], f"/apps/{t[1]}"))
    bad_timeout = st.sampled_from(["abc", "-1", "0", "3601", "nan", "inf", "1e9", "", "%20"]).map(
        lambda t: Req("delete: bad timeout", "DELETE", f"/apps/{existing}?timeout={t}"))
    wrong_route = st.one_of(
        st.sampled_from([
            ("PATCH", "/apps"), ("DELETE", "/apps"), ("PUT", "/apps"), ("PUT", scale),
            ("GET", scale), ("DELETE", scale), ("POST", f"/apps/{existing}"),
            ("PATCH", f"/apps/{existing}"), ("POST", "/healthz"), ("GET", "/"),
            ("GET", "/nope"), ("GET", f"/apps/{existing}/spec/x"), ("GET", "/apps/a/b/c"),
            ("GET", f"/apps/{existing}/../../etc/passwd"), ("OPTIONS", "/apps"),
            ("TRACE", "/apps"), ("DELETE", "/healthz"), ("GET", "//apps"),
        ]),
        st.tuples(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).filter(
            lambda p: not p.startswith("apps") and p != "healthz").map(
            lambda p: "/x/" + urllib.parse.quote(p, safe="/"))),
    ).map(lambda t: Req("wrong method/path", t[0], t[1]))

    # docker run's options: bad values, a network that is missing or no bridge, a resource
    # to create under a bad name, an option both set and unset.
    good_app = json.loads(spec_with())
    bad_options: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/apps", {"memory": "1k"}), ("POST", "/apps", {"network": ["host"]}),
        ("POST", "/apps", {"network": [f"{PREFIX}-no-such-net"]}),
        ("POST", "/apps", {"label": {"lbctl.app": "x"}}), ("POST", "/apps", {"volume": "x:/y"}),
        ("POST", "/apps", {"env-file": "/etc/passwd"}), ("POST", "/apps", {"cpus": 1e9}),
        ("POST", "/apps", {"mount": ["type=bind,source=/etc,target=/x,bogus=1"]}),
        ("POST", "/apps", {"health-cmd": []}), ("POST", "/apps", {"stop-timeout": 10**9}),
        ("POST", "/apply", {"networks": {"bad name!": {}}}),
        ("POST", "/apply", {"volumes": {"v": {"k": 1}}}),
        ("POST", "/apply", {"volumes": [f"{PREFIX}-vol"]}),
        ("POST", "/apply", {"networks": {f"{PREFIX}-n": {}}, "bogus": 1}),
        ("POST", f"/apps/{existing}/update", {"unset": ["image"]}),
        ("POST", f"/apps/{existing}/update", {"unset": "memory"}),
        ("POST", f"/apps/{existing}/update", {"memory": "1g", "unset": ["memory"]}),
        ("POST", f"/apps/{existing}/update", {"memory": "lots"}),
    ]
    options_bad = st.sampled_from(bad_options).map(lambda t: Req(
        f"options: {sorted(t[2])[0]}", t[0], t[1],
        json.dumps({**good_app, **t[2]} if t[1] == "/apps" else
                   {"apps": [good_app], **t[2]} if t[1] == "/apply" else t[2]).encode()))

    return st.one_of(
        options_bad, create_bad, create_unknown, create_wrong_top, put_changed, put_other_name,
        scale_bad, scale_wrong_top, scale_unknown, scale_name, scale_unknown_app, bad_json,
        huge_body, name_paths, unknown_app, bad_timeout, wrong_route,
    )


def test_hostile_requests_get_4xx_json_and_change_nothing(daemon: Daemon) -> None:
    existing = f"{PREFIX}-hostile"
    port = free_port()
    daemon.ok("run", existing, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "1", "--mode", "iptables", timeout=90)
    state_file = daemon.state_dir / "state.json"
    state = state_file.read_bytes()

    def listing() -> list[tuple[str, int, str]]:
        return [(a["name"], a["desired"], a["publish"]) for a in daemon.api("GET", "/apps")["apps"]]

    apps = listing()
    rules = iptables_save()
    ids = sorted(c["Id"] for c in app_containers(existing))
    before_all = set(docker("ps", "-aq").split())
    kinds: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    t0 = time.monotonic()

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(r=requests(existing, free_port()))
    def check(r: Req) -> None:
        status, ctype, body = send(daemon, r)
        kinds[r.kind] += 1
        statuses[status] += 1
        what = f"{r.method} {r.path[:80]} ({r.kind}, body {len(r.body or b'')} bytes)"
        assert 400 <= status < 500, (what, status, body[:300])
        assert ctype.startswith("application/json"), (what, ctype, body[:200])
        data = json.loads(body)
        assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], (
            what, data)
        assert daemon.proc is not None and daemon.proc.poll() is None, f"daemon died on {what}"
        assert state_file.read_bytes() == state, f"state.json changed by {what}"
        assert listing() == apps, f"app list changed by {what}"

    check()
    took = time.monotonic() - t0
    print(f"\nhostile API: {sum(kinds.values())} requests in {took:.1f}s, statuses "
          f"{dict(sorted(statuses.items()))}; by kind {dict(sorted(kinds.items()))}")
    assert daemon.api("GET", "/healthz")["ok"]
    assert sorted(c["Id"] for c in app_containers(existing)) == ids
    # Only what appeared counts: a container that went meanwhile is an earlier test's, still
    # being drained and removed by its daemon when this one began.
    made = set(docker("ps", "-aq").split()) - before_all
    assert not made, f"a hostile request made a container: {made}"
    assert iptables_save() == rules
    assert state_file.read_bytes() == state


# ---- any JSON, any route: the property on the real daemon ---------------------------------


def _engine_view(daemon: Daemon) -> tuple[object, ...]:
    """What a refused request must leave as it was: the state file's bytes, every
    container, network and volume on the engine, and the host's rules."""
    state = daemon.state_dir / "state.json"
    return (state.read_bytes() if state.exists() else b"",
            sorted(docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}").split()),
            sorted(docker("network", "ls", "-q", "--no-trunc").split()),
            sorted(docker("volume", "ls", "-q").split()),
            iptables_save())


def _settle(daemon: Daemon, base: str, spec: dict[str, Any]) -> None:
    """Back to the base app alone, converged: after a request that changed something, the
    workers converge it, which moves containers and the state file; the next request is
    judged from a still world."""
    for a in daemon.api("GET", "/apps")["apps"]:
        if a["name"] != base:
            daemon.api("DELETE", f"/apps/{a['name']}?timeout=60")
    daemon.api("PUT", f"/apps/{base}", spec)

    def still() -> bool:
        apps = daemon.api("GET", "/apps")["apps"]
        return len(apps) == 1 and apps[0]["converged"] and apps[0]["ready"] == 1

    daemon.wait(still, 90, "the base app alone and converged")
    time.sleep(0.5)  # the last pass's state write


def test_any_json_to_any_route_is_2xx_or_one_line_4xx_that_changes_nothing(
    daemon: Daemon,
) -> None:
    """tests/api/test_api_properties.py's property, with the real engine and kernel: the
    requests (tests/api/bodies.py) name only this test's apps, volumes and networks, and
    after a 2xx the world is put back before the next request."""
    from tests.api.bodies import Target, requests

    base = f"{PREFIX}-prop"
    port = free_port()
    daemon.ok("run", base, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080", "--replicas",
              "1", "--mode", "iptables", timeout=90)
    spec = daemon.api("GET", f"/apps/{base}/spec")
    bind = Path(f"/srv/lbctl-{PREFIX}")
    bind.mkdir(parents=True, exist_ok=True)
    t = Target(app=base, new=f"{PREFIX}-pn", image=IMAGE, other_image=IMAGE,
               ports=(free_port(), free_port(), free_port()), volume=f"{PREFIX}-pvol",
               network=f"{PREFIX}-pnet", bind=str(bind), protected=str(daemon.state_dir),
               engine_safe=True, max_replicas=2)
    statuses: Counter[int] = Counter()
    changed = [0]
    view = [_engine_view(daemon)]
    t0 = time.monotonic()

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(request=requests(t))
    def check(request: tuple[str, str, Any]) -> None:
        method, path, body = request
        r = Req("any JSON", method, path, json.dumps(body).encode())
        status, ctype, raw = send(daemon, r)
        statuses[status] += 1
        what = f"{method} {path} {raw[:200]!r} for {json.dumps(body)[:300]}"
        assert status < 500, what
        assert daemon.proc is not None and daemon.proc.poll() is None, f"daemon died: {what}"
        if status < 300:
            if method != "GET":
                changed[0] += 1
                _settle(daemon, base, spec)
                view[0] = _engine_view(daemon)
            return
        assert 400 <= status < 500 and ctype.startswith("application/json"), what
        data = json.loads(raw)
        assert set(data) == {"error"} and isinstance(data["error"], str), what
        assert data["error"] and "\n" not in data["error"], what
        assert _engine_view(daemon) == view[0], f"a {status} changed something: {what}"

    try:
        check()
    finally:
        with contextlib.suppress(Exception):
            _settle(daemon, base, spec)
        for name in (t.volume,):
            docker("volume", "rm", name, check=False)
        for name in (t.network,):
            docker("network", "rm", name, check=False)
        with contextlib.suppress(OSError):
            bind.rmdir()
    print(f"\nany JSON: {sum(statuses.values())} requests in {time.monotonic() - t0:.0f}s, "
          f"statuses {dict(sorted(statuses.items()))}, {changed[0]} changes put back")
    daemon.ok("rm", base)
