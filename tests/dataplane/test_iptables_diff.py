"""The fast path's pure parts: bucket layout of large services, the diff between two renders,
and the applier's choice between a fast and a full pass with fakes at the exec boundary.

The kernel side (a fast sync leaves exactly what a full sync from scratch would) is in
test_iptables.py; here the exact restore text is checked.
"""

# ruff: noqa: E501  (expected rules are written one iptables line per source line)
from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import re
import shlex
from collections.abc import Sequence
from fractions import Fraction

import pytest

from lbctl.dataplane.iptables import IptablesDataplane, IptablesError, save
from lbctl.dataplane.iptables.chains import (
    FWD_PREFIX,
    JUMPS,
    MAX_CHAIN_LEN,
    SEP_PREFIX,
    SNAT_PREFIX,
    bucket_chain,
    svc_chain,
)
from lbctl.dataplane.iptables.restore import changed_dnat_chains, render, render_diff
from lbctl.dataplane.iptables.rules import RenderCache, render_chains
from lbctl.dataplane.iptables.save import dnat_counters, parse_listing
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service
from lbctl.settings import IptablesSettings

BUCKET = IptablesSettings().bucket


def big(n: int, host_ip: str = "0.0.0.0", app: str = "web", moved: int | None = None) -> Service:
    backends = tuple(
        Backend(f"r{i:04d}", "10.9.9.9" if i == moved else f"10.1.{i // 250}.{i % 250 + 1}", 80)
        for i in range(n)
    )
    return Service(app, Publish(host_ip, 8080, 80), backends, ("docker0",))


def shares(chains: dict[tuple[str, str], list[str]], chain: str) -> dict[str, Fraction]:
    """Replica -> the share of new connections the statistic cascade starting at `chain` gives
    it, worked out exactly from the rendered probabilities (10 decimals, so within 1e-9)."""
    out: dict[str, Fraction] = {}
    left = Fraction(1)
    for line in chains[("nat", chain)]:
        m = re.search(r"--probability (\S+)", line)
        p = Fraction(m.group(1)) if m else Fraction(1)
        target = line.split(" -j ")[1].split()[0]
        if target == "DNAT":
            replica = re.search(r'--comment "[^/"]+/([^"]+)"', line)
            assert replica
            out[replica.group(1)] = left * p
        else:
            for name, share in shares(chains, target).items():
                out[name] = left * p * share
        left *= 1 - p
    assert left == 0, "the last rule must match unconditionally"
    return out


def test_up_to_a_bucket_the_layout_is_flat() -> None:
    chains = render_chains([big(BUCKET)])
    assert not [c for _, c in chains if c.startswith((SEP_PREFIX, SNAT_PREFIX, FWD_PREFIX))]
    assert len(chains[("nat", svc_chain("web"))]) == BUCKET


def test_a_large_service_is_cut_into_buckets_with_equal_shares() -> None:
    n = 3 * BUCKET + 5
    chains = render_chains([big(n)])
    svc = chains[("nat", svc_chain("web"))]
    assert len(svc) == 4  # 3 full buckets and one of 5
    assert all(len(c) <= MAX_CHAIN_LEN for _, c in chains)
    for j in range(4):
        assert ("nat", bucket_chain(SEP_PREFIX, "web", j)) in chains
        assert ("nat", bucket_chain(SNAT_PREFIX, "web", j)) in chains
        assert ("filter", bucket_chain(FWD_PREFIX, "web", j)) in chains
    assert len(chains[("nat", bucket_chain(SEP_PREFIX, "web", 3))]) == 5
    # Every backend gets 1/n of the new connections, as in one flat cascade.
    got = shares(chains, svc_chain("web"))
    assert len(got) == n
    assert all(abs(share - Fraction(1, n)) < Fraction(1, 10**8) for share in got.values())
    # The base chains hold one jump per bucket, not one rule per backend; FORWARD's jump only
    # takes DNATed connections (everything in the bucket needs --ctstate DNAT anyway).
    assert len(chains[("nat", "LBCTL-POSTROUTING")]) == 4
    assert chains[("filter", "LBCTL-FORWARD")][0] == (
        f'-A LBCTL-FORWARD -p tcp -m conntrack --ctstate DNAT -m comment --comment "web bucket 0" -j {bucket_chain(FWD_PREFIX, "web", 0)}'
    )


def test_weights_carry_over_to_bucket_shares() -> None:
    n = BUCKET + 1
    svc = big(n)
    heavy = dataclasses.replace(svc.backends[-1], weight=3)
    svc = dataclasses.replace(svc, backends=(*svc.backends[:-1], heavy))
    got = shares(render_chains([svc]), svc_chain("web"))
    total = n - 1 + 3
    assert abs(got[heavy.name] - Fraction(3, total)) < Fraction(1, 10**8)
    assert abs(got["r0000"] - Fraction(1, total)) < Fraction(1, 10**8)


def test_one_moved_backend_rewrites_only_its_bucket() -> None:
    n = 5000
    old = render_chains([big(n)])
    new = render_chains([big(n, moved=4999)])
    text = render_diff(old, new, {("web", "r4999"): (7, 420), ("web", "r4998"): (1, 60)})
    last = n // BUCKET  # 5000 = 78 full buckets + one of 8
    sep, snt, fwd = (bucket_chain(p, "web", last) for p in (SEP_PREFIX, SNAT_PREFIX, FWD_PREFIX))
    declared = re.findall(r"^:(\S+) - \[0:0\]$", text, re.M)
    assert declared == [sep, snt, fwd] or sorted(declared) == sorted([sep, snt, fwd])
    assert "-X" not in text
    lines = text.splitlines()
    assert lines.count("COMMIT") == 2
    # Counters ride on the rewritten DNAT rules, each its own replica's.
    assert f'[7:420] -A {sep} -m comment --comment "web/r4999" -p tcp -j DNAT --to-destination 10.9.9.9:80' in lines
    assert any(line.startswith(f'[1:60] -A {sep} -m comment --comment "web/r4998"') for line in lines)
    assert sum(line.startswith("[") for line in lines) == 2  # no counter on other rules
    # 2 table headers + 3 declarations, 2 COMMITs, 8 DNAT, 8 x (loopback + hairpin) source
    # NAT, 8 x (original + reply) FORWARD rules: the one bucket of 8 and nothing else
    assert len(lines) == 5 + 2 + 8 + 2 * 8 + 2 * 8
    assert changed_dnat_chains(old, new) == [sep]


def test_equal_renders_diff_to_nothing() -> None:
    chains = render_chains([big(200)])
    assert render_diff(chains, render_chains([big(200)])) == ""
    assert changed_dnat_chains(chains, chains) == []


def test_scale_down_deletes_emptied_buckets_after_rewriting_their_jumps() -> None:
    old = render_chains([big(BUCKET + 1)])
    new = render_chains([big(BUCKET)])
    text = render_diff(old, new)
    nat = text.split("*filter\n")[0]
    gone = [bucket_chain(p, "web", j) for p in (SEP_PREFIX, SNAT_PREFIX) for j in (0, 1)]
    for chain in gone:
        # declared (flushed) in the same transaction, deleted at its end
        assert f":{chain} - [0:0]\n" in nat and nat.index(f"-X {chain}") > nat.rindex("-A ")
    # the service chain is rewritten flat, the jumps to the buckets gone with it
    assert f":{svc_chain('web')} - [0:0]" in nat
    assert "bucket" not in "".join(new[("nat", "LBCTL-POSTROUTING")])
    # Both old buckets' DNAT rules are deleted (their replicas move to the flat chain): their
    # counters must be read; the old service chain only held jumps.
    assert changed_dnat_chains(old, new) == sorted(
        bucket_chain(SEP_PREFIX, "web", j) for j in (0, 1))


def test_diff_of_removing_one_app_leaves_the_other_alone() -> None:
    a, b = big(3, app="a"), big(3, app="b")
    text = render_diff(render_chains([a, b]), render_chains([b]))
    assert f"-X {svc_chain('a')}" in text
    assert f":{svc_chain('b')} " not in text  # b's DNAT rules and counters are left alone


def test_full_render_equals_diff_from_nothing() -> None:
    services = [big(130), big(2, "127.0.0.1", app="small")]
    assert render(services) == render_diff({}, render_chains(services))


def test_parse_listing_reads_counters_of_one_chain() -> None:
    listing = (
        "-N LBCTL-SEP-X\n"
        '-A LBCTL-SEP-X -p tcp -m comment --comment "web/r0001" -m statistic --mode random --probability 0.50000000000 -c 5 300 -j DNAT --to-destination 10.1.0.2:80\n'
        '-A LBCTL-SEP-X -p tcp -m comment --comment "web/r0002" -c 7 420 -j DNAT --to-destination 10.1.0.3:80\n'
    )
    table = parse_listing(listing)
    assert table.chains == ["LBCTL-SEP-X"]
    assert dnat_counters({"nat": table}) == {("web", "r0001"): (5, 300), ("web", "r0002"): (7, 420)}


# --- the applier's choice of pass, with fakes at the exec boundary -------------------------


class FakeExec(IptablesDataplane):
    """Records every command; iptables-save shows `saved` (an empty host), listings show what
    a full pass needs (our jump first), a restore fails while `fail` is set."""

    def __init__(self, tmp: pathlib.Path, settings: IptablesSettings | None = None) -> None:
        super().__init__(tmp, settings=settings or IptablesSettings())
        self.cmds: list[list[str]] = []
        self.restores: list[str] = []
        self.fail = False
        self.listings: dict[str, str] = {}
        self.saved = ""  # what iptables-save prints

    async def _run(self, cmd: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        self.cmds.append(cmd)
        if cmd[0] == "iptables-save":
            return 0, self.saved, ""
        if cmd[0] == "iptables-restore":
            self.restores.append((stdin or b"").decode())
            return (1, "", "iptables-restore: line 2 failed") if self.fail else (0, "", "")
        if "-S" in cmd:
            chain = cmd[cmd.index("-S") + 1]
            if chain in self.listings:
                return 0, self.listings[chain], ""
            table = cmd[cmd.index("-t") + 1]
            target = next((t for tb, b, t in JUMPS if (tb, b) == (table, chain)), "LBCTL-" + chain)
            return 0, f"-P {chain} ACCEPT\n-A {chain} -m comment --comment lbctl -j {target}\n", ""
        return 0, "", ""

    def _bridge_nets(self, services: Sequence[Service]) -> dict[str, list[str]]:
        return {}  # the host's real bridges are no business of these tests

    def saves(self) -> int:
        return sum(c[0] == "iptables-save" for c in self.cmds)


async def test_only_the_first_sync_reads_the_ruleset(tmp_path: pathlib.Path) -> None:
    dp = FakeExec(tmp_path)
    await dp.sync([big(200)])
    assert (dp.saves(), dp.full_passes) == (1, 1)
    await dp.sync([big(200)])
    assert (dp.saves(), len(dp.restores)) == (1, 1)  # nothing changed: nothing run at all
    sep = bucket_chain(SEP_PREFIX, "web", 3)
    dp.listings[sep] = f'-N {sep}\n-A {sep} -p tcp -m comment --comment "web/r0199" -c 9 540 -j DNAT --to-destination 10.1.0.200:80\n'
    dp.cmds.clear()
    await dp.sync([big(200, moved=199)])
    assert dp.saves() == 0 and dp.full_passes == 1
    # one counter read of the one DNAT chain rewritten, then one restore
    assert [c[0] for c in dp.cmds] == ["iptables", "iptables-restore"]
    assert dp.cmds[0][-3:] == ["-S", sep, "-v"]
    assert "[9:540] -A" in dp.restores[-1]


async def test_a_failed_restore_makes_the_next_sync_full(tmp_path: pathlib.Path) -> None:
    dp = FakeExec(tmp_path)
    await dp.sync([big(3)])
    dp.fail = True
    with pytest.raises(IptablesError):
        await dp.sync([big(3, moved=1)])
    # The fast pass's refused restore is followed at once by a full pass (which finds whose
    # rules they were, quarantine.py); here every restore is refused alike: the sync fails.
    assert dp.full_passes == 2
    dp.fail = False
    await dp.sync([big(3, moved=1)])
    assert (dp.saves(), dp.full_passes) == (3, 3)
    # ... which rewrites every chain: nothing known is trusted after a failure
    assert dp.restores[-1] == render([big(3, moved=1)], raw=False)  # never paused: no raw


async def test_full_when_asked_and_when_memory_is_old(tmp_path: pathlib.Path) -> None:
    dp = FakeExec(tmp_path)
    await dp.sync([big(3)])
    await dp.sync([big(3)])
    assert dp.full_passes == 1
    await dp.sync([big(3)], full=True)
    assert dp.full_passes == 2
    await dp.sync([])  # removal is always full: the jumps must go first
    assert dp.full_passes == 3
    dp.cmds.clear()
    await dp.sync([big(3)])  # ... and so is the sync after it: the jumps must come back
    assert dp.full_passes == 4
    assert [c for c in dp.cmds if "-I" in c], "no jump inserted"
    # Memory older than full_resync_interval is not trusted, whatever the caller asks.
    stale = FakeExec(tmp_path, IptablesSettings(full_resync_interval=0.0))
    await stale.sync([big(3)])
    await stale.sync([big(3)])
    assert stale.full_passes == 2




@pytest.mark.parametrize("line", [
    '-A LBCTL-SVC-X -p tcp -m comment --comment "web/r0001" -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.1.0.2:80',
    '-A X -m comment --comment "two words" -j Y',
    '-A X -m comment --comment "" -j Y',
    '-A X -m comment --comment "an \\"escaped\\" quote" -j Y',
    "-A X -m comment --comment 'single' -j Y",
    '-A X --weird a"glued" -j Y',
    "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
])  # fmt: skip
def test_fast_split_agrees_with_shlex(line: str) -> None:
    assert save._split(line) == shlex.split(line)


def test_render_cache_changes_nothing_but_the_work() -> None:
    cache = RenderCache()
    heavy = dataclasses.replace(big(200).backends[7], weight=5)
    steps = [
        [big(200)],
        [big(200, moved=199)],  # one bucket differs
        [big(200, moved=199)],  # nothing differs
        [big(130)],  # scale down
        [dataclasses.replace(big(200), backends=(*big(200).backends[:7], heavy,
                                                 *big(200).backends[8:]))],  # a weight
        [big(200, host_ip="127.0.0.1")],  # the publish: other source NAT, no FORWARD
        [big(200, app="other")],  # another app: other chain names
    ]  # fmt: skip
    for services in steps:
        assert render_chains(services, cache=cache) == render_chains(services), services[0]
    # An unchanged bucket is the very same list as last time (cheap to render and compare).
    first = render_chains([big(200)], cache=cache)
    again = render_chains([big(200, moved=199)], cache=cache)
    sep0 = ("nat", bucket_chain(SEP_PREFIX, "web", 0))
    assert again[sep0] is first[sep0]
    last = ("nat", bucket_chain(SEP_PREFIX, "web", 3))
    assert again[last] is not first[last] and again[last] != first[last]


def saved_counter(packets: int, replicas: Sequence[str] = ("r0001",)) -> str:
    rules = "".join(
        f'[{packets}:{packets * 60}] -A {svc_chain("web")} -m comment --comment "web/{r}" '
        f"-j DNAT --to-destination 10.1.0.2:80\n" for r in replicas
    )
    return f"*nat\n:{svc_chain('web')} - [0:0]\n{rules}COMMIT\n"


class HeldRestore(FakeExec):
    """A restore that waits, once `hold` is set, until `release` is: a sync caught holding the
    data plane's lock in the middle of its transaction."""

    def __init__(self, tmp: pathlib.Path) -> None:
        super().__init__(tmp)
        self.hold = False
        self.entered, self.release = asyncio.Event(), asyncio.Event()

    async def _run(self, cmd: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if cmd[0] == "iptables-restore" and self.hold:
            self.entered.set()
            await self.release.wait()
        return await super()._run(cmd, stdin)


async def test_counters_never_wait_for_a_sync(tmp_path: pathlib.Path) -> None:
    dp = HeldRestore(tmp_path)
    await dp.sync([big(3)])
    dp.saved = saved_counter(7)
    dp.hold = True
    sync = asyncio.create_task(dp.sync([big(3, moved=1)]))
    try:
        await asyncio.wait_for(dp.entered.wait(), 30)
        # The deadline only turns a deadlock (the scrape waiting for the lock the sync holds
        # until the scrape is done) into a failure instead of a hang.
        counted = await asyncio.wait_for(dp.counters(), 30)
        assert not sync.done()
    finally:
        dp.release.set()
        await sync
    assert counted == {("web", "r0001"): 7}
    assert [c[0] for c in dp.cmds[-2:]] == ["iptables-save", "iptables-restore"]


async def test_counters_read_beside_a_sync_never_go_down(tmp_path: pathlib.Path) -> None:
    """A read between a sync's counter read and its restore sees connections the restore
    does not carry over; the next read must not be lower.  A replica gone starts afresh."""
    dp = FakeExec(tmp_path)
    await dp.sync([big(3)])
    dp.saved = saved_counter(7, ["r0001", "r0002"])
    assert await dp.counters() == {("web", "r0001"): 7, ("web", "r0002"): 7}
    dp.saved = saved_counter(5, ["r0001", "r0002"])  # the restore carried 5
    assert await dp.counters() == {("web", "r0001"): 7, ("web", "r0002"): 7}
    dp.saved = saved_counter(9, ["r0001"])
    assert await dp.counters() == {("web", "r0001"): 9}
    dp.saved = saved_counter(2, ["r0001", "r0002"])  # a new r0002
    assert await dp.counters() == {("web", "r0001"): 9, ("web", "r0002"): 2}


async def test_a_command_is_bounded_by_the_settings_timeout(tmp_path: pathlib.Path) -> None:
    """A wedged xtables lock holder must not hang the controller: every command run gets
    IptablesSettings.command_timeout (here a stand-in command that never finishes in time)."""
    dp = IptablesDataplane(tmp_path, settings=IptablesSettings(command_timeout=0.2))
    with pytest.raises(IptablesError, match=r"^sleep 30 did not finish in 0.2s"):
        await dp._run(["sleep", "30"])
