"""Where an app answers on the host: docker's `-p` syntax, parsed and validated."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from lbctl.model.errors import InvalidInput


@dataclass(frozen=True)
class Publish:
    """Where an app answers on the host, and where its replicas listen."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: object) -> Publish:
        """Parse docker's `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]` (host IP defaults to
        127.0.0.1: publishing to every interface must be asked for, as 0.0.0.0)."""
        if not isinstance(text, str) or not text:
            raise InvalidInput(
                "publish must look like [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
            )
        spec, slash, proto = text.partition("/")
        proto = proto if slash else "tcp"  # "8080:80/" names no protocol: refused below
        if proto not in ("tcp", "udp"):
            raise InvalidInput(f"invalid protocol {proto!r} in publish {text!r}: use tcp or udp")
        parts = spec.rsplit(":", 2)
        if len(parts) == 2:
            host_ip, host_port, container_port = "127.0.0.1", parts[0], parts[1]
        elif len(parts) == 3:
            host_ip, host_port, container_port = parts
        else:
            raise InvalidInput(
                f"invalid publish {text!r}: use [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
            )
        try:
            ip = ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise InvalidInput(f"invalid host IP {host_ip!r} in publish {text!r}") from None
        return cls(str(ip), _port(host_port, text), _port(container_port, text), proto)

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.container_port}/{self.proto}"

    def clashes_with(self, other: Publish) -> bool:
        if self.proto != other.proto or self.host_port != other.host_port:
            return False
        return "0.0.0.0" in (self.host_ip, other.host_ip) or self.host_ip == other.host_ip


def _port(text: str, whole: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise InvalidInput(f"invalid port {text!r} in publish {whole!r}: use 1-65535")
    return int(text)
