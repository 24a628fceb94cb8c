"""The iptables data plane: applies `iptables_rules` to the kernel, kube-proxy style.

One `IptablesDataplane` per address family (iptables, or ip6tables with the same chains);
`DualStackRules` drives both as the one rules port the controller syncs.

Two kinds of sync, as kube-proxy's proxier does:
  * a full pass: read the current ruleset once (`iptables-save -c`), render all of lbctl's
    chains, apply the ones that differ from the kernel (and delete stale LBCTL- chains) in ONE
    `iptables-restore --noflush --counters` transaction, then make sure the five jump rules
    exist, first in their built-in chains. It runs at the first sync of a process, after any
    failure, on `sync([])`, when the caller asks (`full=True`: HostRules' periodic resync
    and its resync() after a Docker network event) and at the latest FULL_RESYNC_INTERVAL
    after the last one. It repairs whatever someone else changed in our chains and jumps;
  * the fast path, every other time: the rendered ruleset of the last successful sync is
    kept in memory (chain -> rule lines), the new one is rendered and only the chains that
    differ are written, in one --noflush transaction (render_diff); no iptables-save. Its
    cost follows the size of the chains it rewrites more than that of the host's ruleset:
    with iptables-nft (1.8.9), rewriting a chain makes iptables-restore fetch rules from the
    kernel (45 ms for one `-R` in a 5,000-rule chain on this host), so a large service is
    cut into buckets of iptables_rules.BUCKET backends and one changed backend rewrites only
    its bucket's chains (iptables_rules' module doc). What remains, measured: flushing even
    a small chain costs ~10 ms per table when the table holds ~10,000 other rules (creating
    a chain or appending to one costs ~3 ms), plus the Python render of every backend.
A failed sync raises IptablesError and changes nothing in our chains (each transaction is
all or nothing); the in-memory state is dropped, so the retry is a full pass. A chain of ours
that someone flushed is noticed by the next full pass (HostRules: within RESYNC_INTERVAL,
30 s) or at once if a fast pass's restore or counter read fails on it.

Things kept outside the restore transaction, and why:
  * jump rules in the built-in chains (PREROUTING, OUTPUT, POSTROUTING, FORWARD, INPUT):
    `--noflush` cannot express "insert unless present", so they are inserted at position 1
    with `iptables -I` after the restore when missing, de-duplicated, and removed (before the
    restore that deletes our chains) by `sync([])`; checked by full passes only;
  * `net.ipv4.conf.<bridge>.route_localnet` (needed to DNAT 127.0.0.1 clients): set to 1 on
    backend bridges only, before the restore; the original value is persisted in
    state_dir/iptables-sysctl.json first (atomically), so a crashed or restarted daemon still
    puts it back when no service needs the bridge any more;
  * conntrack clean-up of UDP flows to removed backends (see lbctl.dataplane.conntrack).

Counters: re-declaring a chain zeroes its rules' counters, so before a chain holding DNAT
rules is rewritten each replica's DNAT counter is read (the full pass: from its save; the
fast path: `iptables -S CHAIN -v` of just the chains it rewrites) and written back with
`[pkts:bytes]`. Syncs and counters() share one lock, so nobody can read counters between
that read and the restore: the values counters() returns never go down, across syncs and
daemon restarts (the rules outlive the daemon). Chains whose rules do not change are left
out of the transaction altogether, so their counters stay exact; only a replica whose rule
is rewritten may miss connections arriving in the milliseconds between read and restore.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import pathlib
import re
import time
from collections.abc import Mapping, Sequence

from lbctl.dataplane import conntrack, hostnet
from lbctl.dataplane.iptables_rules import (
    IPV4,
    IPV6,
    JUMPS,
    PREFIX,
    Family,
    RenderCache,
    SavedTable,
    changed_dnat_chains,
    dnat_counters,
    dnat_endpoints,
    for_family,
    is_remote_reachable,
    jump_spec,
    localnet_bridges,
    parse_listing,
    parse_save,
    render,
    render_chains,
    render_diff,
    service_endpoints,
)
from lbctl.fsutil import atomic_write
from lbctl.model.dataplane import Service

log = logging.getLogger(__name__)

# One sync should take milliseconds; the bound only keeps a wedged xtables lock holder from
# hanging the controller forever (it retries anyway).
COMMAND_TIMEOUT = 30.0
# The fast path trusts its memory of the kernel for at most this long without a full pass,
# whatever the caller asks (HostRules asks every 30 s).
FULL_RESYNC_INTERVAL = 60.0
# Rewriting more DNAT chains than this in one fast pass: one `iptables-save -t nat` reads
# their counters more cheaply than one `iptables -S` per chain.
PER_CHAIN_COUNTER_READS = 4
SYSCTL_STATE_FILE = "iptables-sysctl.json"
FAILED_RULES_FILE = "{tool}-failed.rules"
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,14}\Z")  # a Linux interface name
_LINE_RE = re.compile(r"line (\d+)")


class IptablesError(RuntimeError):
    """A sync step failed; the message is one line. The caller retries with a full sync."""


def _sysctl_path(bridge: str) -> pathlib.Path:
    if not _BRIDGE_RE.match(bridge) or bridge in (".", ".."):
        raise IptablesError(f"invalid bridge name {bridge!r}")
    return pathlib.Path("/proc/sys/net/ipv4/conf") / bridge / "route_localnet"


class IptablesDataplane:
    """lbctl's rules of one address family on this host; one instance per family and daemon.

    The IPv6 instance takes only the IPv6 publishes of each service (for_family); while no
    service has one and it knows ip6tables holds nothing of lbctl's, a sync costs nothing,
    so hosts that never publish IPv6 never run ip6tables at all.
    """

    def __init__(self, state_dir: pathlib.Path, family: Family = IPV4) -> None:
        self._state_dir = pathlib.Path(state_dir)
        self.family = family
        self._save_cmd = f"{family.tool}-save"
        self._restore_cmd = f"{family.tool}-restore"
        self._lock = asyncio.Lock()
        # True once a sync left no chain of ours in this family's tables: the next empty sync
        # has nothing to do.
        self._clean = False
        # Backend count per app at the last successful sync, to spot UDP services that just
        # got their first backend. None until the first sync: after a restart we do not know.
        self._last_counts: dict[str, int] | None = None
        # What each of our chains got at the last successful sync (render_chains): what the
        # fast path diffs against, and what a full pass trusts for chains that still have as
        # many rules in the kernel. None (unknown) at the start and after any failure: the
        # next sync is then a full pass that rewrites every chain.
        self._last_chains: dict[tuple[str, str], list[str]] | None = None
        # UDP backends at the last successful sync: whose conntrack flows the fast path
        # clears when they go (a full pass reads them from the kernel instead).
        self._last_udp: set[tuple[str, int]] = set()
        self._last_full = -FULL_RESYNC_INTERVAL  # monotonic time of the last full pass
        self.full_passes = 0  # how many syncs were full passes (tests, bench)
        self._cache = RenderCache()  # unchanged buckets are not rendered again

    # --- public ------------------------------------------------------------------------

    async def sync(self, services: Sequence[Service], full: bool = False) -> None:
        """Make the kernel match `services` exactly; `sync([])` removes everything lbctl added.

        `full`: compare with the kernel (and repair) rather than trust the memory of the last
        sync; see the module doc for when a pass is full anyway. Idempotent, and safe to call
        over a ruleset left by an earlier daemon: the restore replaces each chain's contents
        atomically, so re-applying the same services does not interrupt traffic.
        """
        services = for_family(services, self.family)
        async with self._lock:
            if not services and self._clean:
                return
            stale_memory = time.monotonic() - self._last_full >= FULL_RESYNC_INTERVAL
            try:
                # Nothing remembered (first sync, failure) or nothing applied (after a
                # removal, which also took the jumps away): only a full pass knows the kernel.
                if full or stale_memory or not services or not self._last_chains:
                    await self._sync(services)
                else:
                    await self._sync_fast(services, self._last_chains)
            except BaseException:
                self._last_chains = None
                self._clean = False
                raise
            self._clean = not services

    async def _sync_fast(
        self, services: list[Service], old: dict[tuple[str, str], list[str]]
    ) -> None:
        """Only what changed since the last successful sync, read from memory; the caller
        holds the lock. Never run with no services (removal takes a full pass: jumps)."""
        started = time.monotonic()
        bridges = localnet_bridges(services) if self.family is IPV4 else frozenset()
        nets = self._bridge_nets(services)
        self._enable_localnet(bridges)
        chains = render_chains(services, self.family, nets, self._cache)
        text = ""
        if chains != old:
            rewritten = changed_dnat_chains(old, chains)
            counters = await self._read_counters(rewritten) if rewritten else {}
            text = render_diff(old, chains, counters)
        if text:
            await self._restore(text)
        if self.family is IPV4:
            self._restore_localnet(keep=bridges)
        await self._clean_conntrack(services, self._last_udp)
        self._remember(services, chains)
        log.debug("%s fast sync of %d service(s) took %.3fs (%d line(s) written)",
                  self.family.tool, len(services), time.monotonic() - started,
                  text.count("\n"))

    async def _read_counters(self, chains: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """(app, replica) -> (packets, bytes) of the DNAT rules in these nat chains of ours."""
        if len(chains) > PER_CHAIN_COUNTER_READS:
            saved = parse_save(await self._run_checked([self._save_cmd, "-c", "-t", "nat"]))
            return dnat_counters(saved)
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for chain in chains:
            listing = await self._run_checked(
                [self.family.tool, "-w", "-t", "nat", "-S", chain, "-v"])
            out.update(dnat_counters({"nat": parse_listing(listing)}))
        return out

    def _remember(self, services: list[Service], chains: dict[tuple[str, str], list[str]]) -> None:
        self._last_counts = {s.app: len(s.backends) for s in services}
        self._last_chains = chains
        self._last_udp = service_endpoints(services, "udp")

    async def _sync(self, services: list[Service]) -> None:
        """One full pass; the caller holds the lock."""
        started = time.monotonic()
        self.full_passes += 1
        try:
            saved = parse_save(await self._run_checked([self._save_cmd, "-c"]))
        except IptablesError:
            if services or self.family is IPV4:
                raise
            # No IPv6 publish and no way to read ip6tables (no IPv6 stack, no ip6tables):
            # there is nothing of ours to remove either.
            log.debug("%s unavailable and nothing to sync: skipped", self._save_cmd)
            return
        ours = {
            (table, chain)
            for table, tab in saved.items()
            for chain in tab.chains
            if chain.startswith(PREFIX)
        }
        bridges = localnet_bridges(services) if self.family is IPV4 else frozenset()
        old_udp = dnat_endpoints(saved, "udp")
        nets = self._bridge_nets(services)
        chains = render_chains(services, self.family, nets, self._cache)
        stale = sorted(ours - set(chains))

        if services:
            # Before the rules, so the first DNATed 127.0.0.1 packet is already routable.
            self._enable_localnet(bridges)
        else:
            # Our chains cannot be deleted while a built-in chain still jumps to them.
            await self._remove_jumps(saved)
        last = self._last_chains or {}
        in_kernel = collections.Counter(
            (table, rule.chain) for table, tab in saved.items() for rule in tab.rules
            if rule.chain.startswith(PREFIX)
        )  # fmt: skip
        unchanged = {
            key
            for key, lines in chains.items()
            if last.get(key) == lines
            and key[0] in saved
            and key[1] in saved[key[0]].chains
            and in_kernel[key] == len(lines)
        }
        text = render(
            services,
            [f"{t}:{c}" for t, c in stale],
            dnat_counters(saved),
            unchanged=unchanged,
            family=self.family,
            bridge_nets=nets,
        )
        if text:
            await self._restore(text)
        if services:
            await self._ensure_jumps(saved)
        if self.family is IPV4:
            self._restore_localnet(keep=bridges)
        await self._clean_conntrack(services, old_udp)
        self._remember(services, chains)
        self._last_full = started
        log.debug(
            "%s full sync of %d service(s) took %.3fs (%d stale chain(s) removed)",
            self.family.tool, len(services), time.monotonic() - started, len(stale),
        )  # fmt: skip

    def _bridge_nets(self, services: Sequence[Service]) -> dict[str, list[str]]:
        """The networks of the bridges whose backends containers can call through a
        published address (the same-bridge hairpin rules; iptables_rules' module doc)."""
        bridges = {
            b for s in services
            if s.backends and any(is_remote_reachable(p) for p in s.publishes)
            for b in s.bridges
        }  # fmt: skip
        if not bridges:
            return {}
        nets = hostnet.connected_networks(self.family.version)
        return {b: nets[b] for b in sorted(bridges) if b in nets}

    async def counters(self) -> dict[tuple[str, str], int]:
        """(app, replica) -> new connections the rules sent to that replica (DNAT packets)."""
        async with self._lock:
            if self._clean:
                return {}
            text = await self._run_checked([self._save_cmd, "-c", "-t", "nat"])
        return {key: pkts for key, (pkts, _) in dnat_counters(parse_save(text)).items()}

    # --- jump rules ----------------------------------------------------------------------

    async def _ensure_jumps(self, saved: Mapping[str, SavedTable]) -> None:
        """Exactly one jump per hook, and it comes first in its built-in chain.

        First, because Docker puts its own jumps (DOCKER-USER, DOCKER-ISOLATION-STAGE-1) back
        on top of FORWARD whenever it creates a network, lbctl's own included; below them,
        the isolation chain drops what lbctl DNATs from a container on one bridge to a
        replica on another (a client on docker0 calling an app on lbctl's IPv6 network: 0 of
        60 UDP datagrams answered, measured). Moving is insert-then-delete, so the chain is
        never without our jump.
        """
        for table, builtin, target in JUMPS:
            tab = saved.get(table)
            rules = [r for r in (tab.rules if tab else []) if r.chain == builtin]
            present = [r for r in rules if r.target == target]
            if present and rules[0] is present[0] and len(present) == 1:
                continue
            if not present or rules[0] is not present[0]:
                await self._iptables(table, "-I", builtin, "1", *jump_spec(target))
            await self._keep_first_jump(table, builtin, target)

    async def _keep_first_jump(self, table: str, builtin: str, target: str) -> None:
        """Delete every jump to `target` in `builtin` but the first, by rule number, read
        afresh (a rule spec would delete the first, the one to keep)."""
        listing = await self._run_checked([self.family.tool, "-w", "-t", table, "-S", builtin])
        rules = [ln for ln in listing.splitlines() if ln.startswith(f"-A {builtin} ")]
        numbers = [i + 1 for i, ln in enumerate(rules) if ln.split()[-2:] == ["-j", target]]
        for number in reversed(numbers[1:]):
            await self._iptables(table, "-D", builtin, str(number))
        if numbers[:1] != [1]:
            raise IptablesError(f"the jump to {target} is not first in {table} {builtin}")

    async def _remove_jumps(self, saved: Mapping[str, SavedTable]) -> None:
        builtins = {(table, builtin) for table, builtin, _ in JUMPS}
        for table, tab in saved.items():
            for rule in tab.rules:
                # Any jump from a built-in chain into an LBCTL- chain is ours, whatever its
                # exact form (an older lbctl may have written it differently).
                if (table, rule.chain) in builtins and (rule.target or "").startswith(PREFIX):
                    await self._iptables(table, "-D", rule.chain, *rule.args)

    # --- route_localnet ------------------------------------------------------------------

    def _load_sysctl_state(self) -> dict[str, str]:
        path = self._state_dir / SYSCTL_STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise IptablesError(f"cannot read {path}: {e}") from None
        originals = data.get("route_localnet", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in originals.items()}

    def _save_sysctl_state(self, originals: Mapping[str, str]) -> None:
        # Atomic (temp file + rename + fsync): a crash must never leave a half-written file
        # that loses the original value we promised to put back.
        doc = {"route_localnet": dict(sorted(originals.items()))}
        data = json.dumps(doc, indent=2).encode() + b"\n"
        atomic_write(self._state_dir / SYSCTL_STATE_FILE, data)

    def _enable_localnet(self, bridges: frozenset[str]) -> None:
        originals = self._load_sysctl_state()
        for bridge in sorted(bridges):
            path = _sysctl_path(bridge)
            try:
                current = path.read_text().strip()
                if bridge not in originals:
                    originals[bridge] = current
                    self._save_sysctl_state(originals)  # persisted before we change anything
                if current != "1":
                    path.write_text("1\n")
            except FileNotFoundError:
                # The bridge is gone (network removed under us): its backends are unreachable
                # anyway; the controller's next sync will not list it.
                log.warning("bridge %s has no route_localnet sysctl; skipping", bridge)
            except OSError as e:
                raise IptablesError(f"cannot set {path}: {e}") from None

    def _restore_localnet(self, keep: frozenset[str]) -> None:
        originals = self._load_sysctl_state()
        changed = False
        for bridge in sorted(set(originals) - keep):
            path = _sysctl_path(bridge)
            try:
                path.write_text(originals[bridge] + "\n")
            except FileNotFoundError:
                pass  # bridge deleted: nothing left to restore
            except OSError as e:
                raise IptablesError(f"cannot restore {path}: {e}") from None
            del originals[bridge]
            changed = True
        if changed:
            try:
                self._save_sysctl_state(originals)
            except OSError as e:
                state = self._state_dir / SYSCTL_STATE_FILE
                raise IptablesError(f"cannot write {state}: {e}") from None

    # --- conntrack -----------------------------------------------------------------------

    async def _clean_conntrack(
        self, services: Sequence[Service], old_udp: set[tuple[str, int]]
    ) -> None:
        """Best effort: the rules are already right, so a failure here is logged, not raised."""
        try:
            for ip, port in sorted(old_udp - service_endpoints(services, "udp")):
                await conntrack.delete_flows("udp", reply_src=ip, reply_port_src=port,
                                             family=self.family.version)
            last = self._last_counts
            if last is None:
                return
            for s in services:
                if s.publish.proto != "udp" or not s.backends or last.get(s.app, 0):
                    continue
                for pub in s.publishes:
                    # Packets sent while there was no backend left un-NATed entries that would
                    # keep bypassing the new DNAT rules.
                    orig_dst = None if pub.wildcard else pub.host_ip
                    await conntrack.delete_flows(
                        "udp", orig_dst=orig_dst, orig_port_dst=pub.host_port,
                        family=self.family.version,
                    )
        except conntrack.ConntrackError as e:
            log.warning("conntrack clean-up failed (rules are applied): %s", e)

    # --- running commands ------------------------------------------------------------------

    async def _iptables(self, table: str, *args: str) -> None:
        await self._run_checked([self.family.tool, "-w", "-t", table, *args])

    async def _restore(self, text: str) -> None:
        cmd = [self._restore_cmd, "-w", "--noflush", "--counters"]
        rc, _, err = await self._run(cmd, text.encode())
        if rc == 0:
            return
        lines = text.splitlines()
        detail = " ".join(err.split()) or f"exit code {rc}"
        m = _LINE_RE.search(err)
        if m and 1 <= int(m.group(1)) <= len(lines):
            detail += f" (line {m.group(1)}: {lines[int(m.group(1)) - 1]})"
        with contextlib.suppress(OSError):  # keep the rejected input for a post-mortem
            self._state_dir.mkdir(parents=True, exist_ok=True)
            (self._state_dir / FAILED_RULES_FILE.format(tool=self.family.tool)).write_text(text)
        raise IptablesError(f"{self._restore_cmd} failed: {detail}")

    async def _run_checked(self, cmd: list[str]) -> str:
        rc, out, err = await self._run(cmd)
        if rc != 0:
            detail = " ".join(err.split()) or f"exit code {rc}"
            raise IptablesError(f"{' '.join(cmd)} failed: {detail}")
        return out

    async def _run(self, cmd: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise IptablesError(
                f"{cmd[0]} not found: install iptables (`apt-get install iptables`)"
            ) from None
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise IptablesError(
                f"{' '.join(cmd)} did not finish in {COMMAND_TIMEOUT:.0f}s (xtables lock held?)"
            ) from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


class DualStackRules:
    """Both families' rules as the one rules port HostRules syncs: IPv4 first, then IPv6,
    each its own atomic restore. A failed IPv6 restore after a good IPv4 one leaves the IPv4
    rules new and the IPv6 ones as they were; the sync raises, and HostRules' retry is a
    full sync of both."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        self.v4 = IptablesDataplane(state_dir, IPV4)
        self.v6 = IptablesDataplane(state_dir, IPV6)

    async def sync(self, services: Sequence[Service], full: bool = False) -> None:
        await self.v4.sync(services, full)
        await self.v6.sync(services, full)

    async def counters(self) -> dict[tuple[str, str], int]:
        """A replica's new connections over both families."""
        out = await self.v4.counters()
        for key, n in (await self.v6.counters()).items():
            out[key] = out.get(key, 0) + n
        return out
