"""lbctl's own ctnetlink client against the real kernel's conntrack table.

Why: lbctl.dataplane.conntrack deletes a drained replica's entries through CtSocket, whose
messages are built by hand; a wrong attribute there either deletes nothing (the replica's
TIME_WAIT entries stay for dockerd to delete by the original tuple, which is the race the
module doc describes) or deletes the wrong connections. So every request is checked here
against what the kernel (and `conntrack -L`, which reads the table through libnetfilter)
says, with entries this test inserts for addresses nobody uses: 198.18.0.0/15 and
2001:db8::/32 are reserved for tests and documentation, so no real connection is touched.
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
from collections.abc import Iterator

import pytest

from lbctl.dataplane import ctnetlink
from lbctl.dataplane.ctnetlink import CtnetlinkError, CtSocket, Entry, Match, Tuple

pytestmark = [pytest.mark.kernel]

CLIENT, FRONT, BACKEND, OTHER = "198.18.8.1", "198.18.8.2", "198.18.8.10", "198.18.8.11"
CLIENT6, FRONT6 = "2001:db8:8::1", "2001:db8:8::2"
BACKEND6, OTHER6 = "2001:db8:8::10", "2001:db8:8::11"
V4, V6, TCP = socket.AF_INET, socket.AF_INET6, socket.IPPROTO_TCP
SYN_RECV, TIME_WAIT = 2, 7  # enum tcp_conntrack
SEEN_REPLY_ASSURED = (1 << 1) | (1 << 2)  # IPS_SEEN_REPLY | IPS_ASSURED: a finished connection
TIMEOUT = 120  # seconds: long enough for a test, short enough if a run is killed mid-way


def nated(client: str, front: str, backend: str, ports: range,
          bport: int = 8080, fport: int = 80) -> list[tuple[Tuple, Tuple]]:
    """The (orig, reply) tuples of connections from `client`'s `ports` to front:fport that
    were DNATed to backend:bport."""
    return [(Tuple(client, front, p, fport), Tuple(backend, client, bport, p)) for p in ports]


def create(ct: CtSocket, family: int, entries: list[tuple[Tuple, Tuple]],
           state: int = TIME_WAIT) -> int:
    return ct.create(family, TCP, entries, tcp_state=state, timeout=TIMEOUT,
                     status=SEEN_REPLY_ASSURED)


_FIELD = re.compile(r"(src|dst|sport|dport|id)=(\S+)")


def listed(reply_src: str, family: int = V4) -> dict[int, tuple[str, Tuple, Tuple, int]]:
    """`conntrack -L`'s entries answered by `reply_src`, by original source port: (state,
    orig, reply, id). A second reader of the table, to hold the dump's parsing against."""
    out = subprocess.run(
        ["conntrack", "-L", "-f", "ipv6" if family == V6 else "ipv4", "-p", "tcp",
         "--reply-src", reply_src, "-o", "id"],
        capture_output=True, text=True, check=True).stdout  # fmt: skip
    found: dict[int, tuple[str, Tuple, Tuple, int]] = {}
    for line in out.splitlines():
        fields = _FIELD.findall(line)
        if len(fields) != 9:
            continue
        v = [value for _, value in fields]
        orig = Tuple(v[0], v[1], int(v[2]), int(v[3]))
        reply = Tuple(v[4], v[5], int(v[6]), int(v[7]))
        found[orig.sport] = (line.split()[3], orig, reply, int(v[8]))
    return found


def drop(reply_src: str, family: int = V4) -> None:
    subprocess.run(["conntrack", "-D", "-f", "ipv6" if family == V6 else "ipv4", "-p", "tcp",
                    "--reply-src", reply_src], capture_output=True, check=False)


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    """Every entry these tests make is answered by one of their backends: deleting by those
    reply sources removes all of them (before too, in case a killed run left some)."""
    def sweep() -> None:
        for ip in (BACKEND, OTHER):
            drop(ip)
        for ip in (BACKEND6, OTHER6):
            drop(ip, V6)

    sweep()
    yield
    sweep()


def backend_entries(ct: CtSocket, family: int, ip: str, port: int) -> list[Entry]:
    return sorted(ct.dump(family, TCP, reply=Match(src=ip, sport=port)),
                  key=lambda e: e.orig.sport)


def test_a_dump_filtered_on_the_reply_tuple_returns_the_backends_entries_only() -> None:
    """forget_backend's dump: the kernel filters a busy host's table down to one replica's
    entries (address and port), and each comes back with the tuples, state and id that
    `conntrack -L` shows for it, since the delete that follows needs all of them exact."""
    mine = nated(CLIENT, FRONT, BACKEND, range(20000, 25000))
    with CtSocket() as ct:
        assert create(ct, V4, mine) == 5000
        assert create(ct, V4, nated(CLIENT, FRONT, OTHER, range(30000, 30005))) == 5
        # the same address on another port: another app's replica
        assert create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(31000, 31003), 9090)) == 3
        got = backend_entries(ct, V4, BACKEND, 8080)
    assert [(e.orig, e.reply) for e in got] == mine
    assert {(e.proto, e.tcp_state) for e in got} == {(TCP, TIME_WAIT)}
    assert len({e.id for e in got}) == 5000
    table = listed(BACKEND)
    assert len(table) == 5003
    for e in got:
        assert table[e.orig.sport] == ("TIME_WAIT", e.orig, e.reply, e.id)


def test_delete_by_reply_deletes_them_all_and_a_second_time_nothing() -> None:
    """The deletes go 128 to a sendmsg: every one must be counted, an entry already gone
    (ENOENT: timed out, or deleted by dockerd in between) is no error, and another replica's
    entries stay."""
    with CtSocket() as ct:
        create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20000, 25000)))
        create(ct, V4, nated(CLIENT, FRONT, OTHER, range(30000, 30005)))
        found = [(e.reply, e.id) for e in backend_entries(ct, V4, BACKEND, 8080)]
        assert len(found) == 5000
        assert ct.delete_by_reply(V4, TCP, found) == 5000
        assert ct.delete_by_reply(V4, TCP, found) == 0
        assert backend_entries(ct, V4, BACKEND, 8080) == []
    assert listed(BACKEND) == {}
    assert sorted(listed(OTHER)) == list(range(30000, 30005))


def test_a_wrong_id_spares_the_entry() -> None:
    """The id is what spares an entry that replaced the dumped one with the same reply tuple
    (the same client port back to the same replica): the kernel must refuse a delete whose
    id is not the entry's, and the refusal (ENOENT) is no error."""
    with CtSocket() as ct:
        create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20100, 20101)))
        (e,) = backend_entries(ct, V4, BACKEND, 8080)
        assert ct.delete_by_reply(V4, TCP, [(e.reply, (e.id + 1) & 0xFFFFFFFF)]) == 0
        assert listed(BACKEND)[20100][3] == e.id
        assert ct.delete_by_reply(V4, TCP, [(e.reply, e.id)]) == 1
    assert listed(BACKEND) == {}


def test_a_delete_by_reply_tuple_spares_a_new_entry_with_the_same_original_tuple() -> None:
    """What forget_backend relies on (tests/dataplane/test_conntrack.py has the same with
    pyroute2): a new connection that took the dumped entry's original tuple in between (a
    client port reused) went to another replica, so its reply tuple differs, and a delete by
    the dumped reply tuple, with or without the dumped id, does not find it."""
    with CtSocket() as ct:
        create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20200, 20201)))
        (old,) = backend_entries(ct, V4, BACKEND, 8080)
        subprocess.run(["conntrack", "-D", "-p", "tcp", "-s", CLIENT, "-d", FRONT, "--sport",
                        "20200", "--dport", "80"], capture_output=True, check=True)
        # the new connection, NATed to the other replica
        create(ct, V4, nated(CLIENT, FRONT, OTHER, range(20200, 20201)), SYN_RECV)
        assert ct.delete_by_reply(V4, TCP, [(old.reply, old.id)]) == 0
        assert ct.delete_by_reply(V4, TCP, [(old.reply, None)]) == 0
    ((state, orig, _, _),) = listed(OTHER).values()
    assert (state, orig) == ("SYN_RECV", old.orig)


def test_a_dump_filtered_on_the_original_tuple() -> None:
    """forget_unnated's dump: the entries of connections to one port of the host. The host's
    own connections to that port may be listed too, so only this test's are compared; every
    entry the kernel sent must have the port."""
    port = 18998  # a port of these test addresses only
    with CtSocket() as ct:
        create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20300, 20310), fport=port))
        create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20400, 20410), fport=port + 1))
        got = list(ct.dump(V4, TCP, orig=Match(dport=port)))
        assert got and {e.orig.dport for e in got} == {port}
        assert sorted(e.orig.sport for e in got if e.orig.src == CLIENT) == list(
            range(20300, 20310))
        both = ct.dump(V4, TCP, orig=Match(src=CLIENT, dport=port + 1))
        assert sorted(e.orig.sport for e in both) == list(range(20400, 20410))


def test_ipv6_create_dump_and_delete() -> None:
    """IPv6 entries, more than one batch of them. The dump filters on the port only: the
    kernel's IPv6 address filter compares the wrong way round (6.18: it returns the entries
    whose address differs), which is why forget_backend checks the address itself."""
    mine = nated(CLIENT6, FRONT6, BACKEND6, range(20000, 20300))
    with CtSocket() as ct:
        assert create(ct, V6, mine) == 300
        assert create(ct, V6, nated(CLIENT6, FRONT6, OTHER6, range(30000, 30003))) == 3
        got = sorted((e for e in ct.dump(V6, TCP, reply=Match(sport=8080))
                      if e.reply.src == BACKEND6), key=lambda e: e.orig.sport)
        assert [(e.orig, e.reply) for e in got] == mine
        assert {(e.proto, e.tcp_state) for e in got} == {(TCP, TIME_WAIT)}
        table = listed(BACKEND6, V6)
        for e in (got[0], got[-1]):
            assert table[e.orig.sport] == ("TIME_WAIT", e.orig, e.reply, e.id)
        assert ct.delete_by_reply(V6, TCP, [(e.reply, e.id) for e in got]) == 300
        assert ct.delete_by_reply(V6, TCP, [(e.reply, e.id) for e in got]) == 0
    assert listed(BACKEND6, V6) == {}
    assert sorted(listed(OTHER6, V6)) == [30000, 30001, 30002]


def test_a_refused_request_raises_a_one_line_error_and_the_socket_goes_on() -> None:
    """An error other than ENOENT is the caller's (forget_backend turns it into a
    ConntrackError for the log): one line naming the request and the errno. The answers to
    the rest of the refused batch are still on their way; later requests on the same socket
    must not mistake them for their own."""
    with CtSocket() as ct:
        create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20500, 20501)))
        batch = nated(CLIENT, FRONT, BACKEND, range(20499, 20502))  # 20500 exists
        with pytest.raises(CtnetlinkError) as refused:
            create(ct, V4, batch)
        assert refused.value.errno == errno.EEXIST
        assert "\n" not in str(refused.value)
        assert "ctnetlink create: EEXIST" in str(refused.value)
        # the kernel went on with the batch's other messages after the refused one
        assert [e.orig.sport for e in backend_entries(ct, V4, BACKEND, 8080)] == [
            20499, 20500, 20501]
        assert create(ct, V4, nated(CLIENT, FRONT, BACKEND, range(20502, 20503))) == 1
        found = [(e.reply, e.id) for e in backend_entries(ct, V4, BACKEND, 8080)]
        assert ct.delete_by_reply(V4, TCP, found) == 4


def test_the_receive_buffer_holds_a_whole_batchs_answers() -> None:
    """The kernel handles a batch's messages before the socket reads any answer, and each
    answer counts as its buffer's true size (832 bytes on 6.18, more on kernels with bigger
    packet heads): the default 208 KiB receive buffer holds exactly 256 of them, and past it
    the kernel drops answers (recv fails with ENOBUFS). Batches are of 128 and CtSocket asks
    for a bigger buffer."""
    with CtSocket() as ct:
        rcvbuf = ct._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert rcvbuf >= ctnetlink._BATCH * 1600
