"""What a drain waits for (sockets.count_open), against real sockets of this process."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from lbctl.dataplane import sockets

pytestmark = pytest.mark.kernel

TIME_WAIT = 6


def test_counts_accepted_connections_and_never_asks_for_time_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []
    real_rows = sockets._rows

    def rows(*args: Any, **kw: Any) -> Any:
        got = real_rows(*args, **kw)
        seen.extend(r.state for r in got)
        return got

    monkeypatch.setattr(sockets, "_rows", rows)
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = lst.accept()
        assert sockets.count_open(os.getpid(), port) == 1  # the accepted one, in ESTABLISHED
        conn.close()  # the replica's side closes first: its socket ends in TIME_WAIT
        assert client.recv(1) == b""
        client.close()
        assert sockets.count_open(os.getpid(), port) == 0
    # TIME_WAIT sockets have no owner, so they never counted; dumping them made every drain
    # poll parse tens of thousands after a burst of short connections.
    assert TIME_WAIT not in seen, seen
