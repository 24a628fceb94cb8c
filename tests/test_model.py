"""Validation of user input: one rule for names, publish specs and counts."""

from __future__ import annotations

import re

import pytest

from lbctl.model import AppSpec, InvalidInput, Mode, Publish, parse_replicas, validate_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", Publish("127.0.0.1", 8080, 80, "tcp")),
        ("0.0.0.0:8080:80/udp", Publish("0.0.0.0", 8080, 80, "udp")),
        ("127.0.0.2:1:65535/tcp", Publish("127.0.0.2", 1, 65535, "tcp")),
    ],
)
def test_publish_parses(text: str, expected: Publish) -> None:
    assert Publish.parse(text) == expected


@pytest.mark.parametrize(
    "text", ["", "8080", "a:b", "0:80", "8080:70000", "1.2.3:80:80", "80:80/sctp", "1:2:3:4"]
)
def test_publish_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        Publish.parse(text)


@pytest.mark.parametrize("name", ["", "Web", "-x", "a/b", "a b", "a;rm", "x" * 21, "../x",
                                  "web\n", "web\r", "web\x00"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_name(name)


@pytest.mark.parametrize("text", ["-1", "abc", "", "1.5", "65", " 3x"])
def test_bad_replica_counts(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_replicas(text)


def test_spec_round_trip() -> None:
    spec = AppSpec("web", "lbctl/demo:latest", Publish.parse("8080:8080"), 3, Mode.EBPF,
                   {"A": "1"}, ("/httpd",))
    assert AppSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"name": "web"},
        {"name": "web", "image": "x", "publish": "8080:80", "replicas": True},
        {"name": "web", "image": "x", "publish": "8080:80", "replicas": "3"},
        {"name": "web", "image": "x y", "publish": "8080:80"},
        {"name": "web", "image": "x", "publish": "8080:80", "mode": "ipvs"},
        {"name": "web", "image": "x", "publish": "8080:80", "extra": 1},
        {"name": "web", "image": "x", "publish": "8080:80", "env": {"1A": "x"}},
        {"name": "web", "image": "x", "publish": "8080:80", "command": "sh"},
        # "$" matches before a trailing newline: every anchored pattern must refuse one
        {"name": "web", "image": "x\n", "publish": "8080:80"},
        {"name": "web", "image": "x", "publish": "8080:80", "env": {"A\n": "x"}},
    ],
)
def test_spec_rejects(body: object) -> None:
    with pytest.raises(InvalidInput):
        AppSpec.from_json(body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:8080:80", Publish("::1", 8080, 80, "tcp")),
        ("[::]:80:8080/udp", Publish("::", 80, 8080, "udp")),
        ("[2001:db8::1]:80:8080", Publish("2001:db8::1", 80, 8080, "tcp")),
        ("[2001:DB8:0::0:1]:80:8080", Publish("2001:db8::1", 80, 8080, "tcp")),
    ],
)
def test_publish_parses_ipv6(text: str, expected: Publish) -> None:
    pub = Publish.parse(text)
    assert pub == expected and pub.family == 6
    assert Publish.parse(str(pub)) == pub  # str() writes it back in brackets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:8080:80", "brackets"),
        ("[::1]8080:80", "[IPV6]"),
        ("[::1:8080:80", "[IPV6]"),
        ("[::1]:80", "[IPV6]"),
        ("[1.2.3.4]:80:80", "IPv6"),
        ("[fe80::1]:80:80", "cannot be published"),
        ("[::ffff:1.2.3.4]:80:80", "cannot be published"),
        ("[ff02::1]:80:80", "cannot be published"),
        ("[::1]:0:80", "invalid port"),
    ],
)
def test_publish_rejects_bad_ipv6(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        Publish.parse(text)


def test_publish_families_and_clashes() -> None:
    v4, v6 = Publish.parse("0.0.0.0:80:8080"), Publish.parse("[::]:80:8080")
    assert (v4.family, v6.family) == (4, 6) and v4.wildcard and v6.wildcard
    assert not v4.clashes_with(v6)  # one family's rules never see the other's packets
    assert v6.clashes_with(Publish.parse("[::1]:80:8080"))
    assert not v6.clashes_with(Publish.parse("[::]:81:8080"))
    assert not v6.clashes_with(Publish.parse("[::]:80:8080/udp"))
    assert str(v6) == "[::]:80:8080/tcp" and v6.host_addr == "[::]:80"


def test_several_publishes_round_trip_and_keep_the_first_as_publish() -> None:
    body = {"name": "web", "image": "x", "publish": ["0.0.0.0:80:8080", "[::]:80:8080"]}
    spec = AppSpec.from_json(body)
    assert spec.publish == Publish("0.0.0.0", 80, 8080)
    assert spec.publishes == (spec.publish, Publish("::", 80, 8080)) and spec.wants_ipv6
    assert spec.to_json()["publish"] == ["0.0.0.0:80:8080/tcp", "[::]:80:8080/tcp"]
    assert AppSpec.from_json(spec.to_json()) == spec
    # One publish stays a plain string in JSON (state files, API bodies), as before.
    one = AppSpec.from_json({"name": "web", "image": "x", "publish": "8080:80"})
    assert one.to_json()["publish"] == "127.0.0.1:8080:80/tcp" and not one.wants_ipv6
    assert AppSpec.from_json({**body, "publish": ["8080:80"]}) == one


@pytest.mark.parametrize(
    ("publish", "message"),
    [
        ([], "publish"),
        (["0.0.0.0:80:8080", "[::]:80:9090"], "CONTAINER_PORT"),
        (["0.0.0.0:80:8080", "[::]:80:8080/udp"], "protocol"),
        (["0.0.0.0:80:8080", "127.0.0.1:80:8080"], "overlaps"),
        (["[::]:80:8080", "[::]:80:8080"], "overlaps"),
        ([f"127.0.0.1:{p}:80" for p in range(1, 10)], "at most 8"),
        (["0.0.0.0:80:8080", 5], "publish must look like"),
    ],
)
def test_several_publishes_rejected(publish: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        AppSpec.from_json({"name": "web", "image": "x", "publish": publish})


def _act(**kw: object) -> dict[str, object]:
    return {"name": "web", "image": "x", "publish": "0.0.0.0:80:8080", "mode": "ebpf", **kw}


def test_activation_round_trips_and_is_not_part_of_the_template() -> None:
    on, off, left = (AppSpec.from_json(_act(activation=v)) for v in (True, False, None))
    assert (on.activation, off.activation, left.activation) == (True, False, None)
    assert [s.path for s in (on, off, left)] == ["activation", "sandbox", "sandbox"]
    assert on.activated and on.host_listeners and not off.activated and not off.host_listeners
    assert AppSpec.from_json(on.to_json()) == on and on.to_json()["activation"] is True
    assert "activation" not in left.to_json()  # a spec from before activation: as it was
    # It picks the data plane, not what a replica runs: never a new revision by itself.
    assert on.spec_hash() == off.spec_hash() == left.spec_hash()
    assert AppSpec.from_json({**_act(), "mode": "iptables"}).path == "dnat"
    host = AppSpec.from_json({**_act(), "publish": "80:80", "network": ["host"]})
    assert (host.path, host.host_listeners) == ("host", True)


@pytest.mark.parametrize(("body", "message"), [
    (_act(activation="yes"), "activation must be true or false"),
    (_act(activation=1), "activation must be true or false"),
    (_act(activation=True, mode="iptables"), "--activation needs mode ebpf"),
    (_act(activation=True, publish="80:80", network=["host"]), "two paths"),
    (_act(activation=True, publish=["0.0.0.0:80:8080", "[::]:81:8080"]), "same HOST_PORT"),
])
def test_activation_rejected(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        AppSpec.from_json(body)
