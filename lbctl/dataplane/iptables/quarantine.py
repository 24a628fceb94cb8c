"""One app's bad rules must not stall every app's: what the shared transaction leaves out. Pure.

The rules of all apps are one `iptables-restore` transaction (all or nothing), so one app
whose rules the kernel refuses (an address it rejects, a name it cannot take) used to fail
every sync, for every app, for good. Instead (plane.py):
  * `problem()` screens each app's Service before anything is rendered: what would corrupt
    the transaction's text or lbctl's own I/O (a bridge name that is no interface name goes
    into a sysctl path and an `-i`; a name or address with blanks or quotes would add words
    to a rule). Values are iptables' to judge, not ours;
  * when the restore still fails, `blame()` names the app the failure belongs to: the
    rule or chain declaration on the line iptables names (by the chain, which is the app's,
    or by the comment every rule of a shared chain carries), else a value iptables quotes in
    its message ("Chain 'X' does not exist" comes at COMMIT) found in one app's lines only;
  * the transaction is tried again with that app's previous rules (what the last good sync
    applied for it), or none, and the app's error goes to its status. A failure that names
    no single app, or that comes back the same for the next app (a kernel without a match
    module fails every app's rules alike), is the whole sync's, as before: nothing is left
    out on a guess.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from lbctl.dataplane.iptables.chains import (
    FWD_PREFIX,
    GUARD_COMMENT,
    SEP_PREFIX,
    SNAT_PREFIX,
    bucket_chain,
    svc_chain,
)
from lbctl.dataplane.iptables.localnet import valid_bridge
from lbctl.model.dataplane import Service

__all__ = ["blame", "chain_owners", "error_line", "problem"]

# A word that goes into a rule as one token: no blank, no quote, no backslash, printable.
_TOKEN = re.compile(r"^[!#-&(-\[\]-~]+\Z")
_COMMENT = re.compile(r'--comment "([^"]*)"')
_COUNTERS = re.compile(r"^\[\d+:\d+\] ")
# Where iptables-restore says it failed: "Error occurred at line: 3" (nft), "line 3 failed"
# (legacy).
_LINE = re.compile(r"\bline:? (\d+)")
_QUOTED = re.compile(r"[\"'`]([^\"'`\s]+)[\"'`]")


def problem(s: Service) -> str | None:
    """Why `s` cannot go into the transaction at all (None: iptables may judge it)."""
    for bridge in s.bridges:
        if not valid_bridge(bridge):
            return f"invalid bridge name {bridge!r}"
    words = [s.app] + [w for b in s.backends for w in (b.name, b.ip, b.ip6 or "x")]
    for word in words:
        if not _TOKEN.match(word):
            return f"{word!r} cannot go into an iptables rule (blank, quote or control char)"
    for b in s.backends:
        if not 0 < b.port < 65536:
            return f"backend {b.name} has port {b.port}"
    return None


def chain_owners(services: Iterable[Service], bucket: int) -> dict[str, str]:
    """Chain -> the app whose chain it is (its service chain and bucket chains)."""
    owners: dict[str, str] = {}
    for s in services:
        owners[svc_chain(s.app)] = s.app
        for j in range(math.ceil(len(s.backends) / bucket) if len(s.backends) > bucket else 0):
            for prefix in (SEP_PREFIX, SNAT_PREFIX, FWD_PREFIX):
                owners[bucket_chain(prefix, s.app, j)] = s.app
    return owners


def error_line(stderr: str) -> int | None:
    m = _LINE.search(stderr)
    return int(m.group(1)) if m else None


def _line_app(line: str, owners: Mapping[str, str], apps: set[str],
              bridge_users: Mapping[str, set[str]]) -> str | None:
    line = _COUNTERS.sub("", line)
    if line.startswith(":"):
        return owners.get(line[1:].split(" ", 1)[0])
    if not line.startswith("-A "):
        return None  # *table, COMMIT, -X of a stale chain: nobody's alone
    chain = line.split(" ", 2)[1]
    if chain in owners:
        return owners[chain]
    m = _COMMENT.search(line)
    if m is None:
        return None
    comment = m.group(1)
    if comment.startswith(GUARD_COMMENT):
        users = bridge_users.get(comment[len(GUARD_COMMENT):], set())
        return next(iter(users)) if len(users) == 1 else None
    app = re.split(r"[/ ]", comment, maxsplit=1)[0]
    return app if app in apps else None


def blame(text: str, stderr: str, services: Sequence[Service], bucket: int) -> str | None:
    """The app a failed restore of `text` belongs to, or None when it is nobody's alone."""
    owners = chain_owners(services, bucket)
    apps = {s.app for s in services}
    bridge_users: dict[str, set[str]] = {}
    for s in services:
        for b in s.bridges:
            bridge_users.setdefault(b, set()).add(s.app)
    lines = text.splitlines()
    number = error_line(stderr)
    if number is not None and 1 <= number <= len(lines):
        app = _line_app(lines[number - 1], owners, apps, bridge_users)
        if app is not None:
            return app
    # A line nobody owns alone (COMMIT: nft reports kernel-side failures there): a value the
    # message quotes, found in one app's lines only.
    by_app: dict[str, list[str]] = {}
    for line in lines:
        app = _line_app(line, owners, apps, bridge_users)
        if app is not None:
            by_app.setdefault(app, []).append(line)
    for token in _QUOTED.findall(stderr):
        having = [app for app, mine in by_app.items() if any(token in ln for ln in mine)]
        if len(having) == 1:
            return having[0]
    return None
