"""Admission of publishes: clashes across every address an app publishes, IPv6 where the host
has none, and host ports taken per family (real sockets on loopback, no daemon)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from lbctl.controller.admission import Admission, check_port_free
from lbctl.model import AppSpec, InvalidInput


class _Images:
    async def image_exists(self, image: str) -> bool:
        return True


def spec(name: str, *publish: str) -> AppSpec:
    return AppSpec.from_json({"name": name, "image": "x", "publish": list(publish)})


def admission(ipv6: str | None = None) -> Admission:
    engine: Any = _Images()
    return Admission(engine, lambda: None, port_check=lambda s: None,
                     ipv6_unavailable=lambda: ipv6)


def test_a_clash_on_any_publish_is_refused() -> None:
    web = spec("web", "127.0.0.1:8080:80", "[::]:8080:80")
    Admission.check_clashes([spec("api", "0.0.0.0:8081:80", "[::]:8081:80")], [web])
    with pytest.raises(InvalidInput, match=r"port \[::1\]:8080/tcp is already published by"):
        Admission.check_clashes([spec("api", "0.0.0.0:9000:80", "[::1]:8080:80")], [web])
    with pytest.raises(InvalidInput, match=r"0\.0\.0\.0:8080/tcp is already published by app"):
        Admission.check_clashes([spec("api", "0.0.0.0:8080:80")], [web])


async def test_ipv6_refused_where_the_host_has_none_and_loopback_always() -> None:
    with pytest.raises(InvalidInput, match="cannot publish IPv6 on this host: no IPv6 here"):
        await admission("no IPv6 here").check_new([spec("web", "[::]:80:8080")], [], [])
    await admission("no IPv6 here").check_new([spec("web", "0.0.0.0:80:8080")], [], [])
    with pytest.raises(InvalidInput, match=r"does not NAT IPv6 loopback"):
        await admission().check_new([spec("web", "[::1]:80:8080")], [], [])


def test_port_taken_per_family() -> None:
    with socket.socket(socket.AF_INET6) as held:
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        held.bind(("::1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(InvalidInput, match=rf"port \[::1\]:{port}/tcp is already in use"):
            check_port_free(spec("web", f"[::1]:{port}:80"))
        with pytest.raises(InvalidInput, match="already in use"):
            check_port_free(spec("web", f"127.0.0.1:{port + 1}:80", f"[::]:{port}:80"))
        # The IPv4 side of the same port number is free: an IPv6 listener does not take it.
        check_port_free(spec("web", f"127.0.0.1:{port}:80"))
    with pytest.raises(InvalidInput, match=r"2001:db8::7 in publish .* is not an address of"):
        check_port_free(spec("web", "[2001:db8::7]:8080:80"))
