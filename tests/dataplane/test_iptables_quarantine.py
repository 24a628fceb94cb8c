"""One app's bad rules or state do not stall every app: the screen, the blame of a refused
restore, and the applier leaving the app out (its previous rules kept, or none), with fakes at
the exec boundary. The kernel side (a restore the real iptables refuses because of one app's
rule: the others' rules land) is in test_iptables.py."""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import replace

import pytest

from lbctl.dataplane.iptables import IptablesDataplane, IptablesError
from lbctl.dataplane.iptables.chains import SEP_PREFIX, bucket_chain, svc_chain
from lbctl.dataplane.iptables.localnet import SYSCTL_STATE_FILE, RouteLocalnet
from lbctl.dataplane.iptables.quarantine import blame, problem
from lbctl.dataplane.iptables.restore import render
from lbctl.model import Publish
from lbctl.model.dataplane import Backend, Service
from lbctl.settings import IptablesSettings

# A bridge that does not exist on any host: route_localnet is skipped for it, so these tests
# never touch a real sysctl.
BRIDGE = "lbq-none0"


def svc(app: str, port: int, *ips: str, bridges: tuple[str, ...] = (BRIDGE,)) -> Service:
    backends = tuple(Backend(f"{app}-{i + 1}", ip, 80) for i, ip in enumerate(ips))
    return Service(app, Publish("127.0.0.1", port, 80), backends, bridges)


GOOD = svc("good", 8001, "10.1.0.2", "10.1.0.3")
BAD = svc("bad", 8002, "10.1.0.4", "10.1.0.300")  # iptables refuses .300


def nft_error(text: str, needle: str) -> str:
    """What iptables-restore (nf_tables) says of the first line holding `needle`."""
    number = next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)
    return (f'iptables-restore v1.8.9 (nf_tables): Bad IP address "{needle}"\n'
            f"Error occurred at line: {number}\n"
            "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n")


# ---- the screen --------------------------------------------------------------------------


def test_the_screen_refuses_what_would_corrupt_the_transaction() -> None:
    assert problem(GOOD) is None
    assert problem(BAD) is None  # a value for iptables to judge, not a broken text
    assert problem(replace(GOOD, bridges=("../../x",))) == "invalid bridge name '../../x'"
    assert problem(replace(GOOD, bridges=("a-bridge-name-too-long",))) is not None
    injected = replace(GOOD, backends=(Backend("web-1", "10.1.0.2 -j ACCEPT", 80),))
    assert "cannot go into an iptables rule" in str(problem(injected))
    quoted = replace(GOOD, backends=(Backend('web"1', "10.1.0.2", 80),))
    assert problem(quoted) is not None
    assert problem(replace(GOOD, backends=(Backend("web-1", "10.1.0.2", 0),))) is not None


# ---- blame --------------------------------------------------------------------------------


def test_blame_names_the_app_of_the_line_iptables_names() -> None:
    text = render([BAD, GOOD])
    assert blame(text, nft_error(text, "10.1.0.300"), [BAD, GOOD], 64) == "bad"


def test_blame_reads_shared_chains_by_their_comments() -> None:
    """A base chain's rule belongs to the app its comment names; the guard of a bridge to the
    one app on that bridge, nobody's when two share it."""
    text = render([BAD, GOOD])
    lines = text.splitlines()
    out = next(i for i, ln in enumerate(lines, 1)
               if ln.startswith("-A LBCTL-OUTPUT") and '"bad"' in ln)
    assert blame(text, f"line {out} failed", [BAD, GOOD], 64) == "bad"
    guard = next(i for i, ln in enumerate(lines, 1) if "route_localnet guard" in ln)
    assert blame(text, f"line {guard} failed", [BAD, GOOD], 64) is None
    alone = replace(BAD, bridges=("lbq-other0",))
    text = render([alone, GOOD])
    guard = next(i for i, ln in enumerate(text.splitlines(), 1)
                 if "route_localnet guard for lbq-other0" in ln)
    assert blame(text, f"line {guard} failed", [alone, GOOD], 64) == "bad"


def test_blame_of_a_commit_error_goes_by_the_value_quoted() -> None:
    """nf_tables reports kernel-side failures at COMMIT: the value the message quotes, in one
    app's lines only, names it; a value in several apps' lines or none names nobody."""
    text = render([BAD, GOOD])
    commit = len(text.splitlines())
    chain = svc_chain("bad")
    said = f"iptables-restore v1.8.9 (nf_tables): Chain '{chain}' does not exist\n" \
           f"Error occurred at line: {commit}\n"
    assert blame(text, said, [BAD, GOOD], 64) == "bad"
    shared = "iptables-restore: Chain 'LBCTL-OUTPUT' does not exist\nline 2 failed\n"
    assert blame(text, shared, [BAD, GOOD], 64) is None
    assert blame(text, "iptables-restore: out of memory\n", [BAD, GOOD], 64) is None


def test_blame_knows_the_bucket_chains_of_a_large_service() -> None:
    ips = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(5)]
    large = svc("large", 8003, *ips)
    text = render([large, GOOD], bucket=2)
    sep = bucket_chain(SEP_PREFIX, "large", 2)
    number = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(f"-A {sep}"))
    assert blame(text, f"line {number} failed", [large, GOOD], 2) == "large"


# ---- the applier, with fakes at the exec boundary ----------------------------------------


class Kernel(IptablesDataplane):
    """iptables-restore refuses any transaction that holds an address in `refuse` (saying
    so as nf_tables does, with its line), or every one while `down` is set; everything run
    is recorded. iptables-save shows an empty host, listings our jumps first."""

    def __init__(self, tmp: pathlib.Path, **settings: int) -> None:
        super().__init__(tmp, settings=IptablesSettings(**settings))
        self.refuse = {"10.1.0.300", "10.1.0.301"}
        self.down = False
        self.restores: list[str] = []
        self.applied = ""  # the last transaction that went through

    async def _run(self, cmd: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if cmd[0] == "iptables-restore":
            text = (stdin or b"").decode()
            self.restores.append(text)
            if self.down:
                return 4, "", "iptables-restore v1.8.9 (nf_tables): line 3: out of memory\n"
            for ip in sorted(self.refuse):
                if ip in text:
                    return 2, "", nft_error(text, ip)
            self.applied = text
            return 0, "", ""
        if "-S" in cmd:
            chain = cmd[cmd.index("-S") + 1]
            ours = f"LBCTL-HOLD-{chain}" if "raw" in cmd else f"LBCTL-{chain}"  # pause's in raw
            return 0, f"-P {chain} ACCEPT\n-A {chain} -m comment --comment lbctl " \
                      f"-j {ours}\n", ""
        return 0, "", ""

    def _bridge_nets(self, services: object) -> dict[str, list[str]]:
        return {}


async def test_the_others_sync_without_the_refused_app(tmp_path: pathlib.Path) -> None:
    k = Kernel(tmp_path)
    errors = await k.sync([BAD, GOOD])
    assert set(errors) == {"bad"}
    assert "iptables-restore refused its rules: Bad IP address" in errors["bad"]
    assert "10.1.0.300" in errors["bad"] and errors["bad"].endswith("it has no rules")
    assert "\n" not in errors["bad"]
    assert "good/good-1" in k.applied and "bad/" not in k.applied
    # The next sync does not try the very same rules again on the fast path ...
    before = len(k.restores)
    assert set(await k.sync([BAD, GOOD])) == {"bad"}
    assert len(k.restores) == before  # nothing changed for anyone: nothing run
    # ... and once fixed, the app is in.
    fixed = svc("bad", 8002, "10.1.0.4", "10.1.0.5")
    assert await k.sync([fixed, GOOD]) == {}
    assert "bad/bad-2" in k.applied and "10.1.0.5" in k.applied


async def test_a_refused_app_keeps_its_previous_rules(tmp_path: pathlib.Path) -> None:
    k = Kernel(tmp_path)
    first = svc("bad", 8002, "10.1.0.4", "10.1.0.5")
    assert await k.sync([first, GOOD]) == {}
    errors = await k.sync([BAD, svc("good", 8001, "10.1.0.2")])
    assert set(errors) == {"bad"} and errors["bad"].endswith("its previous rules are kept")
    rules = k.applied
    assert "10.1.0.5" in rules or svc_chain("bad") not in rules  # bad's chain left as it was
    assert "10.1.0.3" not in rules  # good's change went in
    # A full pass tries it again (a periodic resync), and keeps the previous ones again.
    errors = await k.sync([BAD, svc("good", 8001, "10.1.0.2")], full=True)
    assert set(errors) == {"bad"} and errors["bad"].endswith("its previous rules are kept")


async def test_a_failure_that_is_everybodys_fails_the_sync(tmp_path: pathlib.Path) -> None:
    """The same refusal whatever app is left out is the host's trouble: nothing is left out
    on a guess, the whole sync fails as before."""
    k = Kernel(tmp_path)
    await k.sync([GOOD])
    k.down = True
    with pytest.raises(IptablesError, match="out of memory"):
        await k.sync([BAD, GOOD])
    k.down = False
    assert await k.sync([GOOD, svc("bad", 8002, "10.1.0.4")]) == {}


async def test_quarantine_is_bounded_per_sync(tmp_path: pathlib.Path) -> None:
    k = Kernel(tmp_path, max_quarantined=1)
    worse = svc("worse", 8003, "10.1.0.301")
    with pytest.raises(IptablesError, match=r"10\.1\.0\.30"):
        await k.sync([BAD, GOOD, worse])
    k2 = Kernel(tmp_path / "2")
    assert set(await k2.sync([BAD, GOOD, worse])) == {"bad", "worse"}
    assert "good/good-1" in k2.applied


async def test_a_screened_app_never_reaches_the_restore(tmp_path: pathlib.Path) -> None:
    """An invalid bridge name used to raise for every app: now only its own app is out."""
    k = Kernel(tmp_path)
    broken = replace(svc("broken", 8004, "10.1.0.9"), bridges=("bad bridge",))
    errors = await k.sync([broken, GOOD])
    assert errors == {"broken": "invalid bridge name 'bad bridge'; it has no rules"}
    assert all("broken" not in text for text in k.restores)
    assert "good/good-1" in k.applied


# ---- the route_localnet state file -------------------------------------------------------


@pytest.mark.parametrize("content", ["{not json", '{"route_localnet": ["docker0"]}',
                                     '{"route_localnet": {"x": "7"}}', ""])
async def test_a_damaged_sysctl_state_file_is_ignored_and_rebuilt(
    tmp_path: pathlib.Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It failed every IPv4 sync for good; now it is a warning, and the file is rebuilt."""
    (tmp_path / SYSCTL_STATE_FILE).write_text(content)
    k = Kernel(tmp_path)
    assert await k.sync([GOOD]) == {}
    assert "good/good-1" in k.applied
    assert "ignoring damaged" in caplog.text
    doc = json.loads((tmp_path / SYSCTL_STATE_FILE).read_text())
    assert doc == {"route_localnet": {}, "lost": True}
    caplog.clear()
    await k.sync([GOOD], full=True)
    assert "ignoring damaged" not in caplog.text


def test_invalid_names_in_the_state_file_are_dropped(tmp_path: pathlib.Path) -> None:
    (tmp_path / SYSCTL_STATE_FILE).write_text(
        json.dumps({"route_localnet": {"../../../x": "1", BRIDGE: "0"}}))
    rl = RouteLocalnet(tmp_path)
    rl.restore(keep=frozenset())  # the valid entry's bridge is gone: nothing to put back
    assert json.loads((tmp_path / SYSCTL_STATE_FILE).read_text()) == {"route_localnet": {}}


def test_restore_text_names_the_refused_line() -> None:
    text = render([BAD])
    said = nft_error(text, "10.1.0.300")
    number = int(re.findall(r"line: (\d+)", said)[0])
    assert "10.1.0.300" in text.splitlines()[number - 1]
