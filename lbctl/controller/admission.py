"""Admission: what must hold before an app is accepted, beyond valid input. Nothing here
changes anything; a refusal is one line for the user (InvalidInput: HTTP 400, exit code 2).

- the host port is not published by another app, nor served by anything else on the host
  (our DNAT would silently steal its traffic);
- the app's mode works on this host now (ebpf needs root, bcc, a header tree, bpffs);
- the image is on the engine (no registry is assumed reachable).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from lbctl.controller.ports import EnginePort
from lbctl.model import AppSpec, InvalidInput, Mode


class Admission:
    def __init__(
        self,
        engine: EnginePort,
        ebpf_unavailable: Callable[[], str | None],
        port_check: Callable[[AppSpec], None] | None = None,
    ) -> None:
        self.engine = engine
        self.ebpf_unavailable = ebpf_unavailable
        self.port_check = port_check or check_port_free

    async def check_new(
        self, new: Sequence[AppSpec], changed: Sequence[AppSpec], others: Sequence[AppSpec]
    ) -> None:
        """Everything for apps to create (`new`) and apps to change (`changed`)."""
        self.check_clashes([*new, *changed], others)
        for spec in new:
            self.port_check(spec)
        for spec in [*new, *changed]:
            if spec.mode is Mode.EBPF:
                reason = self.ebpf_unavailable()
                if reason:
                    raise InvalidInput(
                        f"ebpf mode is not available here ({reason}): use --mode iptables"
                    )
        for image in sorted({s.image for s in [*new, *changed]}):
            if not await self.engine.image_exists(image):
                raise InvalidInput(f"image {image} is not on this engine: build or pull it first")

    @staticmethod
    def check_clashes(specs: Sequence[AppSpec], others: Sequence[AppSpec]) -> None:
        for i, spec in enumerate(specs):
            for other in [*others, *specs[:i]]:
                if other.name != spec.name and other.publish.clashes_with(spec.publish):
                    raise InvalidInput(
                        f"port {spec.publish.host_port}/{spec.publish.proto} is already "
                        f"published by app {other.name}"
                    )


def check_port_free(spec: AppSpec) -> None:
    """Refuse a host port that something else on the host already serves (Docker's -p, a
    local server)."""
    kind = socket.SOCK_STREAM if spec.publish.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((spec.publish.host_ip, spec.publish.host_port))
        except OSError as e:
            raise InvalidInput(
                f"port {spec.publish.host_ip}:{spec.publish.host_port}/{spec.publish.proto} "
                f"is already in use on this host ({e.strerror})"
            ) from None
