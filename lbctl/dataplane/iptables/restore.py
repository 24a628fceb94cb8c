"""Turn rendered chains into one `iptables-restore --noflush --counters` transaction. Pure.

Modelled on kube-proxy's iptables proxier: every sync renders *all* of lbctl's chains from
the desired state (render_chains) and applies the ones that differ, from the kernel (a full
pass: render) or from the last sync's render kept in memory (the fast path: render_diff),
in a single `iptables-restore --noflush --counters` transaction. Declaring a chain
(`:LBCTL-X - [0:0]`) in a --noflush restore flushes it, so each chain's contents are
replaced atomically (no moment where a published port has no rules), and chains we no
longer need are flushed and deleted (`-X`) in the same transaction.
Nothing outside chains named `LBCTL-*` is ever written here; the jump rules that hook our
chains into the built-in chains are listed in `JUMPS` and managed by the I/O layer.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from lbctl.dataplane.iptables.chains import (
    BASE_CHAINS,
    MAX_CHAIN_LEN,
    PREFIX,
    SEP_PREFIX,
    SVC_PREFIX,
    TABLES,
    chain_table,
)
from lbctl.dataplane.iptables.family import IPV4, Family
from lbctl.dataplane.iptables.rules import render_chains
from lbctl.model.dataplane import Service
from lbctl.settings import IptablesSettings


def render(
    services: Sequence[Service],
    stale_chains: Iterable[str] = (),
    counters: Mapping[tuple[str, str], tuple[int, int]] = {},  # read-only, never mutated
    *,
    unchanged: Collection[tuple[str, str]] = (),
    family: Family = IPV4,
    bridge_nets: Mapping[str, Sequence[str]] = {},  # read-only, never mutated
    bucket: int = IptablesSettings.bucket,
    raw: bool = True,
) -> str:
    """The complete `iptables-restore --noflush --counters` text for lbctl's chains.

    `services` are of `family` already (see for_family).
    `stale_chains`: existing LBCTL-* chains to flush and delete in the same transaction,
    each "table:CHAIN" or a bare name (table then inferred from lbctl's naming scheme).
    `counters`: (app, replica) -> (packets, bytes) to carry over onto the replica's DNAT rule,
    since re-declaring a chain resets its rules' counters.
    `unchanged`: (table, chain) pairs known to hold exactly what `render_chains()` gives for
    them; they are left out of the transaction so their counters are not touched at all
    (kube-proxy's partial sync: a re-sync of the same state then writes nothing).
    `bridge_nets`: bridge -> its networks of `family` (CIDR), for the same-bridge hairpin
    rules; a bridge not in it gets none.
    `bucket`: backends per bucket chain (rules.py, "Large services"). `raw`: as render_chains.
    """
    chains = render_chains(services, family, bridge_nets, bucket=bucket, raw=raw)
    stale: list[tuple[str, str]] = []
    for item in stale_chains:
        table, sep, chain = item.partition(":")
        if not sep:
            table, chain = chain_table(item), item
        if table not in TABLES:
            raise ValueError(f"unknown table in stale chain {item!r}")
        if not chain.startswith(PREFIX):
            # Safety net: this transaction must never delete a chain that is not ours.
            raise ValueError(f"refusing to delete foreign chain {item!r}")
        if (table, chain) not in chains and (table, chain) not in stale:
            stale.append((table, chain))
    write = [key for key in chains if key not in unchanged]
    return restore_text(chains, write, stale, counters)


def render_diff(
    old: Mapping[tuple[str, str], Sequence[str]],
    new: Mapping[tuple[str, str], Sequence[str]],
    counters: Mapping[tuple[str, str], tuple[int, int]] = {},  # read-only, never mutated
) -> str:
    """The transaction that turns the ruleset `old` (render_chains() of the last successful
    sync) into `new`: only the chains whose rules differ are re-declared and refilled, chains
    that are gone are flushed and deleted, everything else is left alone. "" if equal.

    This is the fast path: it needs nothing read from the kernel except the counters of the
    DNAT rules it rewrites (`counters`, see changed_dnat_chains)."""
    write = [key for key, lines in new.items() if old.get(key) != lines]
    stale = [key for key in old if key not in new]
    return restore_text(new, write, stale, counters)


def changed_dnat_chains(
    old: Mapping[tuple[str, str], Sequence[str]],
    new: Mapping[tuple[str, str], Sequence[str]],
) -> list[str]:
    """The nat chains of `old` whose DNAT rules a render_diff(old, new) rewrites or deletes:
    the only places a replica's counter can be lost, so the only ones whose counters must be
    read first. A replica whose rule is in a chain left alone kept its rule, and its counter."""
    return sorted(
        c for (t, c), lines in old.items()
        if t == "nat" and c.startswith((SVC_PREFIX, SEP_PREFIX)) and new.get((t, c)) != lines
        and any(_DNAT_LINE.match(line) for line in lines)
    )  # fmt: skip


def restore_text(
    chains: Mapping[tuple[str, str], Sequence[str]],
    write: Collection[tuple[str, str]],
    stale: Collection[tuple[str, str]],
    counters: Mapping[tuple[str, str], tuple[int, int]] = {},  # read-only, never mutated
) -> str:
    """One transaction: declare (which flushes) and fill the `write` chains of `chains`, flush
    and delete the `stale` ones. A table we have nothing to do in is not mentioned at all.

    Chain declarations come first in each table, so a jump may name a chain declared in the
    same transaction; a stale chain is deleted after the chains that jumped to it were
    rewritten without the jump."""
    out: list[str] = []
    for table in TABLES:
        declared = _ordered(table, [c for t, c in write if t == table])
        gone = _ordered(table, [c for t, c in stale if t == table])
        if not declared and not gone:
            continue
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for c in [*declared, *gone])
        for c in declared:
            assert len(c) <= MAX_CHAIN_LEN, c
            out.extend(_with_counter(line, counters) for line in chains[(table, c)])
        out.extend(f"-X {c}" for c in gone)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _ordered(table: str, chains: Iterable[str]) -> list[str]:
    # Base chains first in a fixed order, then the others sorted: the text reads like
    # `iptables-save` output and stays the same from one sync to the next.
    names = set(chains)
    base = [c for c in BASE_CHAINS[table] if c in names]
    return base + sorted(names - set(base))


# A DNAT rule as _dnat_chain renders it: `-A CHAIN -m comment --comment "app/replica" ...`.
_DNAT_LINE = re.compile(r'^-A \S+ -m comment --comment "([^"/]+)/([^"]+)" .* -j DNAT ')


def _with_counter(line: str, counters: Mapping[tuple[str, str], tuple[int, int]]) -> str:
    m = _DNAT_LINE.match(line) if counters else None
    pkts_bytes = counters.get((m.group(1), m.group(2))) if m else None
    return line if pkts_bytes is None else f"[{pkts_bytes[0]}:{pkts_bytes[1]}] {line}"
