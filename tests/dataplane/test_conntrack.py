"""Conntrack clean-up against the real kernel's table, with entries this test inserts for
addresses nobody uses (198.18.0.0/15 and 2001:db8::/32 are reserved for tests and
documentation), so that no real connection is touched."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import NFCTSocket
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from lbctl.dataplane.conntrack import forget_backend, forget_unnated

pytestmark = [pytest.mark.kernel]

CLIENT, FRONT, BACKEND, OTHER = "198.18.7.1", "198.18.7.2", "198.18.7.10", "198.18.7.11"


def insert(src: str, dst: str, sport: int, dport: int, rsrc: str, rport: int,
           state: str = "TIME_WAIT") -> None:
    """One NATed entry: src:sport -> dst:dport, answered by rsrc:rport."""
    subprocess.run(
        ["conntrack", "-I", "-p", "tcp", "-s", src, "-d", dst, "--sport", str(sport),
         "--dport", str(dport), "-r", rsrc, "-q", src, "--reply-port-src", str(rport),
         "--reply-port-dst", str(sport), "--state", state, "-t", "60", "-u", "ASSURED"],
        check=True, capture_output=True,
    )


def entries(reply_src: str) -> list[tuple[int, str]]:
    out = subprocess.run(["conntrack", "-L", "-p", "tcp", "--reply-src", reply_src],
                         capture_output=True, text=True).stdout
    return sorted((int(line.split("sport=")[1].split()[0]), line.split()[3])
                  for line in out.splitlines() if "sport=" in line)


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    yield
    for ip in (BACKEND, OTHER, FRONT):
        subprocess.run(["conntrack", "-D", "-p", "tcp", "--reply-src", ip], capture_output=True)


def test_forget_backend_deletes_only_the_backends_entries() -> None:
    insert(CLIENT, FRONT, 40001, 80, BACKEND, 8080)
    insert(CLIENT, FRONT, 40002, 80, BACKEND, 8080, "FIN_WAIT")
    insert(CLIENT, FRONT, 40003, 80, BACKEND, 9090)  # another port of that address
    insert(CLIENT, FRONT, 40004, 80, OTHER, 8080)  # another replica
    # still open past the drain's timeout (keep-alive): left for the replica's graceful stop
    insert(CLIENT, FRONT, 40005, 80, BACKEND, 8080, "ESTABLISHED")
    assert asyncio.run(forget_backend(BACKEND, 8080)) == 2
    assert [p for p, _ in entries(BACKEND)] == [40003, 40005]
    assert [p for p, _ in entries(OTHER)] == [40004]
    assert asyncio.run(forget_backend(BACKEND, 8080)) == 0  # nothing left: not an error


def test_forget_backend_speaks_ipv6() -> None:
    client, front, backend = "2001:db8:7::1", "2001:db8:7::2", "2001:db8:7::10"
    insert(client, front, 40020, 80, backend, 8080)
    try:
        assert asyncio.run(forget_backend(backend, 8080)) == 1
        assert entries(backend) == []
    finally:
        subprocess.run(["conntrack", "-D", "-f", "ipv6", "-p", "tcp", "--reply-src", backend],
                       capture_output=True)


def test_a_delete_by_reply_tuple_spares_a_new_entry_with_the_same_original_tuple() -> None:
    """What forget_backend relies on (and dockerd's and `conntrack -D`'s deletes by the
    original tuple lack): an entry that replaced the dumped one in between (a client port
    reused for a new connection to another replica) has the same original tuple, and usually
    the same id (it hashes the entry's memory, often reused, and the original tuple), but
    another reply tuple: a delete by the dumped reply tuple does not find it."""
    insert(CLIENT, FRONT, 40010, 80, BACKEND, 8080)
    with NFCTSocket() as ct:
        (old,) = list(ct.dump(tuple_reply=NFCTAttrTuple(saddr=BACKEND, proto=6, sport=8080)))
        orig = NFCTAttrTuple(saddr=CLIENT, daddr=FRONT, proto=socket.IPPROTO_TCP, sport=40010,
                             dport=80)
        reply = NFCTAttrTuple(saddr=BACKEND, daddr=CLIENT, proto=socket.IPPROTO_TCP,
                              sport=8080, dport=40010)
        ct.entry("del", tuple_orig=orig)
        insert(CLIENT, FRONT, 40010, 80, OTHER, 8080, "SYN_RECV")  # the new connection
        with pytest.raises(NetlinkError):
            ct.entry("del", tuple_reply=reply, id=old.get_attr("CTA_ID"))
        with pytest.raises(NetlinkError):
            ct.entry("del", tuple_reply=reply)
    assert [p for p, _ in entries(OTHER)] == [40010]


def test_forget_unnated_deletes_the_refused_connections_of_a_port_not_the_natted_ones() -> None:
    """Connections refused while an app had no backend (no NAT: the reply comes from the
    address the client asked) would refuse a new connection from the same client port again
    for 10 s; established ones NATed to a backend must go on."""
    port = 18999  # a port of these test addresses only
    insert(CLIENT, FRONT, 40031, port, FRONT, port, "CLOSE")  # refused, un-NATed
    insert(CLIENT, FRONT, 40032, port, FRONT, port, "CLOSE")
    insert(CLIENT, FRONT, 40033, port, BACKEND, port)  # NATed to a backend on the same port
    insert(CLIENT, FRONT, 40034, port + 1, FRONT, port + 1, "CLOSE")  # another port
    assert asyncio.run(forget_unnated(port)) == 2
    assert [p for p, _ in entries(FRONT)] == [40034]
    assert [p for p, _ in entries(BACKEND)] == [40033]
