"""Compose's interpolation and env files, as docker-compose reads them."""

from __future__ import annotations

import pytest

from lbctl.compose.interpolate import (
    interpolate,
    interpolate_text,
    parse_docker_env_file,
    parse_dotenv,
)
from lbctl.model import InvalidInput

ENV = {"SET": "v", "EMPTY": ""}


@pytest.mark.parametrize(("text", "out"), [
    ("$SET", "v"), ("${SET}", "v"), ("x${SET}y", "xvy"), ("$UNSET", ""), ("${UNSET}", ""),
    ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${SET:-d}", "v"),
    ("${UNSET-d}", "d"), ("${EMPTY-d}", ""), ("${SET-d}", "v"),
    ("${SET:?must}", "v"), ("${EMPTY?must}", ""),
    ("$$", "$"), ("$${SET}", "${SET}"), ("a $$SET b", "a $SET b"), ("no vars", "no vars"),
    ("${UNSET:-a b:c}", "a b:c"), ("$SET$SET", "vv"),
])
def test_interpolation(text: str, out: str) -> None:
    assert interpolate_text(text, ENV) == out


@pytest.mark.parametrize(("text", "message"), [
    ("${UNSET:?set the port}", "UNSET is unset: set the port"),
    ("${EMPTY:?needed}", "EMPTY is empty: needed"),
    ("${UNSET?x}", "UNSET is unset"),
    ("$ x", "invalid interpolation"), ("${1}", "invalid interpolation"),
    ("${SET", "invalid interpolation"),
])
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        interpolate_text(text, ENV, "services.web.image")


def test_whole_document_values_not_keys() -> None:
    doc = {"services": {"$SET": {"image": "img:${SET}", "ports": ["${P:-80}:80"], "n": 3}}}
    assert interpolate(doc, ENV) == {
        "services": {"$SET": {"image": "img:v", "ports": ["80:80"], "n": 3}}}


def test_dotenv_format() -> None:
    text = ('# comment\n\nA=1\nexport B=two words\nC="quoted # not a comment"\n'
            "D='single'\nE=x # trailing comment\nF\nG=\n")
    assert parse_dotenv(text, {"F": "from-shell"}) == {
        "A": "1", "B": "two words", "C": "quoted # not a comment", "D": "single", "E": "x",
        "F": "from-shell", "G": ""}
    with pytest.raises(InvalidInput, match="line 1"):
        parse_dotenv("1BAD=x\n")


def test_docker_env_file_is_literal() -> None:
    text = '# c\nA="kept quotes"\nB=x # not a comment\nC\nD\n'
    assert parse_docker_env_file(text, {"C": "shell"}) == {
        "A": '"kept quotes"', "B": "x # not a comment", "C": "shell"}
    with pytest.raises(InvalidInput):
        parse_docker_env_file("BAD KEY=1\n", {})
