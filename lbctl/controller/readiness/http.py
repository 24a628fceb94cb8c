"""One probe over one socket: a TCP connect, or an HTTP GET whose status line is the verdict.

Hand-written rather than through aiohttp's client (already a dependency): a probe connects
from a socket made for it elsewhere (in ebpf mode, inside the app's namespace, bound to the
slot's source port: lbctl.dataplane.ebpf.probe), reads one status line and closes
abortively, none of which a client session is built for; the HTTP it speaks is one request
line and three headers.

The request says `Connection: close`, and the rest of the answer is read until the server
closes (at most 64 KiB, within the probe's timeout; a slow body does not fail a probe whose
status is known), so the server is not cut off mid-answer. The socket is then closed with
SO_LINGER 0 (a reset rather than a FIN, set by whoever made it): no TIME_WAIT is left on
either side, which matters in ebpf mode where every probe of a slot reuses one 4-tuple
(measured in a namespace on a non-loopback address, 200 probes one after the other from one
source port: a normal close failed 141 of them with EADDRNOTAVAIL, the reset none).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct

from lbctl.controller.readiness.outcome import OK, Failure, ProbeResult, failed
from lbctl.model.readiness import ReadinessProbe

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r?$)")
_HEAD_MAX = 8192
_BODY_MAX = 65536
LINGER_0 = struct.pack("ii", 1, 0)


def new_socket(family: int, abortive: bool) -> socket.socket:
    """A socket of the daemon's own namespace for a probe of an address (iptables mode).
    `abortive` for an HTTP probe; a TCP probe closes as it always did (a FIN right after the
    handshake, which servers take as a client that changed its mind)."""
    s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    if abortive:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    return s


def request(probe: ReadinessProbe) -> bytes:
    assert probe.path is not None
    return (f"GET {probe.path} HTTP/1.1\r\nHost: {probe.host_header}\r\n"
            "User-Agent: lbctl-probe\r\nConnection: close\r\n\r\n").encode()


async def ask(sock: socket.socket, address: tuple[str, int], probe: ReadinessProbe) -> ProbeResult:
    """Probe through `sock` (non-blocking, not connected; closed here whatever happens): a
    connect for a TCP probe, else the GET of probe.path."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stage = "connect"
    try:
        async with asyncio.timeout(probe.timeout) as deadline:
            await loop.sock_connect(sock, address)
            if probe.path is None:
                return OK
            stage = "answer"
            await loop.sock_sendall(sock, request(probe))
            head = b""
            while b"\n" not in head and len(head) < _HEAD_MAX:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    break
                head += chunk
            result = _verdict(head, probe)
            # The verdict is known: read the rest of the answer for the server's sake, but
            # a slow or endless body is not the probe's failure.
            deadline.reschedule(None)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(max(0.0, t0 + probe.timeout - loop.time())):
                got = len(head)
                while got < _BODY_MAX:
                    chunk = await loop.sock_recv(sock, 16384)
                    if not chunk:
                        break
                    got += len(chunk)
        return result
    except TimeoutError:
        what = "no connection" if stage == "connect" else "no answer"
        return failed(Failure.TIMEOUT, f"{what} within {probe.timeout:g}s")
    except ConnectionRefusedError:
        return failed(Failure.REFUSED, "connection refused")
    except (ConnectionResetError, BrokenPipeError):
        return failed(Failure.RESET, f"connection reset before the {stage}")
    except OSError as e:
        return failed(Failure.ERROR, e.strerror or str(e))
    finally:
        sock.close()


def _verdict(head: bytes, probe: ReadinessProbe) -> ProbeResult:
    if not head:
        return failed(Failure.RESET, "closed without an answer")
    m = _STATUS_LINE.match(head.split(b"\n", 1)[0])
    if m is None:
        return failed(Failure.BAD_ANSWER, f"not an HTTP answer: {head[:40]!r}")
    code = int(m[1])
    if probe.accepts(code):
        return ProbeResult(True, status=code)
    return failed(Failure.STATUS, f"{code} on {probe.path}", code)
