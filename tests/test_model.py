"""Validation of user input: one rule for names, publish specs and counts."""

from __future__ import annotations

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
