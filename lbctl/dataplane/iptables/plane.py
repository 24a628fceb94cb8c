"""The iptables data plane: applies the rendered rules (rules.py, restore.py) to the kernel,
kube-proxy style; the package's I/O.

One `IptablesDataplane` per address family (iptables, or ip6tables with the same chains);
`DualStackRules` drives both as the one rules port the controller syncs.

Two kinds of sync, as kube-proxy's proxier does:
  * a full pass: read the current ruleset once (`iptables-save -c`), render all of lbctl's
    chains, apply the ones that differ from the kernel (and delete stale LBCTL- chains) in ONE
    `iptables-restore --noflush --counters` transaction, then make sure the five jump rules
    exist, first in their built-in chains. It runs at the first sync of a process, after any
    failure, on `sync([])`, when the caller asks (`full=True`: HostRules' periodic resync
    and its resync() after a Docker network event) and at the latest
    IptablesSettings.full_resync_interval after the last one. It repairs whatever someone
    else changed in our chains and jumps;
  * the fast path, every other time: the rendered ruleset of the last successful sync is
    kept in memory (chain -> rule lines), the new one is rendered and only the chains that
    differ are written, in one --noflush transaction (render_diff); no iptables-save. Its
    cost follows the size of the chains it rewrites more than that of the host's ruleset:
    with iptables-nft (1.8.9), rewriting a chain makes iptables-restore fetch rules from the
    kernel (45 ms for one `-R` in a 5,000-rule chain on this host), so a large service is
    cut into buckets of IptablesSettings.bucket backends and one changed backend rewrites
    only its bucket's chains (rules.py, "Large services"). What remains, measured: flushing even
    a small chain costs ~10 ms per table when the table holds ~10,000 other rules (creating
    a chain or appending to one costs ~3 ms), plus the Python render of every backend.
A failed sync raises IptablesError and changes nothing in our chains (each transaction is
all or nothing); the in-memory state is dropped, so the retry is a full pass. One app's rules
the kernel refuses fail neither the sync nor the other apps: the app is left out of the
transaction (its previous rules kept, or none), and its error is the sync's answer for it,
which `lbctl status` shows (quarantine.py says how the app is found). A chain of ours
that someone flushed is noticed by the next full pass (HostRules: within RESYNC_INTERVAL,
30 s) or at once if a fast pass's restore or counter read fails on it.

Things kept outside the restore transaction, and why:
  * jump rules in the built-in chains (PREROUTING, OUTPUT, POSTROUTING, FORWARD, INPUT):
    `--noflush` cannot express "insert unless present", so they are inserted at position 1
    with `iptables -I` after the restore when missing, de-duplicated, and removed (before the
    restore that deletes our chains) by `sync([])`; checked by full passes only;
  * `net.ipv4.conf.<bridge>.route_localnet` (needed to DNAT 127.0.0.1 clients): set to 1 on
    backend bridges only, after the restore that installs the bridge's guard rule and the
    jump to it succeeded (a failed sync leaves it as it was), and put back before the
    restore that removes the guard, when no service needs the bridge any more (localnet.py);
  * conntrack clean-up of UDP flows to removed backends (see lbctl.dataplane.conntrack).

Counters: re-declaring a chain zeroes its rules' counters, so before a chain holding DNAT
rules is rewritten each replica's DNAT counter is read (the full pass: from its save; the
fast path: `iptables -S CHAIN -v` of just the chains it rewrites) and written back with
`[pkts:bytes]`, so the counters outlive syncs and daemon restarts (the rules outlive the
daemon). Chains whose rules do not change are left out of the transaction altogether, so
their counters stay exact; only a replica whose rule is rewritten may miss connections
arriving in the milliseconds between read and restore. counters() takes no lock (a scrape
never delays a sync): `iptables-save -c` is safe beside a restore (each restore is one
atomic transaction), and a read that lands between a sync's counter read and its restore
is kept from going down later by lbctl.dataplane.monotonic.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import pathlib
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

from lbctl.dataplane import conntrack, hostnet
from lbctl.dataplane.iptables.chains import JUMPS, PREFIX, jump_spec
from lbctl.dataplane.iptables.errors import IptablesError, RestoreError
from lbctl.dataplane.iptables.family import (
    IPV4,
    IPV6,
    Family,
    for_family,
    is_remote_reachable,
    localnet_bridges,
)
from lbctl.dataplane.iptables.localnet import RouteLocalnet
from lbctl.dataplane.iptables.quarantine import blame, error_line, problem
from lbctl.dataplane.iptables.restore import changed_dnat_chains, render, render_diff
from lbctl.dataplane.iptables.rules import RenderCache, render_chains
from lbctl.dataplane.iptables.save import (
    SavedTable,
    dnat_counters,
    dnat_endpoints,
    parse_listing,
    parse_save,
    service_endpoints,
)
from lbctl.dataplane.monotonic import Monotonic
from lbctl.model.dataplane import Service
from lbctl.settings import IptablesSettings

__all__ = ["DualStackRules", "IptablesDataplane"]

log = logging.getLogger("lbctl.dataplane.iptables")

FAILED_RULES_FILE = "{tool}-failed.rules"
_LINE_NUMBERS = re.compile(r"\bline:? \d+")
_TOOL_PREFIX = re.compile(r"^ip6?tables-restore( v[\d.]+)?( \([^)]*\))?: ")
# What the screen or the kernel refused, per app: (the service asked for, why).
_Refusals = dict[str, tuple[Service, str]]


class IptablesDataplane:
    """lbctl's rules of one address family on this host; one instance per family and daemon.

    The IPv6 instance takes only the IPv6 publishes of each service (for_family); while no
    service has one and it knows ip6tables holds nothing of lbctl's, a sync costs nothing,
    so hosts that never publish IPv6 never run ip6tables at all.
    """

    def __init__(
        self, state_dir: pathlib.Path, family: Family = IPV4, *,
        settings: IptablesSettings = IptablesSettings(),  # noqa: B008  (frozen, shared)
    ) -> None:  # fmt: skip
        self._state_dir = pathlib.Path(state_dir)
        self.family = family
        self.settings = settings
        self._localnet = RouteLocalnet(self._state_dir)
        self._counted: Monotonic[tuple[str, str]] = Monotonic()
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
        self._last_full = -settings.full_resync_interval  # monotonic time of the last full pass
        self.full_passes = 0  # how many syncs were full passes (tests, bench)
        self._cache = RenderCache()  # unchanged buckets are not rendered again
        # What the last successful sync applied per app: what a refused app keeps
        # (quarantine.py), and the apps refused there with the service asked for and why.
        self._applied: dict[str, Service] = {}
        self._refused: _Refusals = {}
        self._errors: dict[str, str] = {}  # app -> its error at the last sync (logged once)

    # --- public ------------------------------------------------------------------------

    async def sync(self, services: Sequence[Service], full: bool = False) -> dict[str, str]:
        """Make the kernel match `services` exactly; `sync([])` removes everything lbctl added.

        `full`: compare with the kernel (and repair) rather than trust the memory of the last
        sync; see the module doc for when a pass is full anyway. Idempotent, and safe to call
        over a ruleset left by an earlier daemon: the restore replaces each chain's contents
        atomically, so re-applying the same services does not interrupt traffic.

        Returns app -> error for the apps whose rules are not (all) in: left out of the
        transaction (quarantine.py: their previous rules kept, or none) or served without
        route_localnet. Raises IptablesError when the sync failed whole (nothing changed).
        """
        services = for_family(services, self.family)
        async with self._lock:
            if not services and self._clean:
                return {}
            stale_memory = time.monotonic() - self._last_full >= self.settings.full_resync_interval
            try:
                # Nothing remembered (first sync, failure) or nothing applied (after a
                # removal, which also took the jumps away): only a full pass knows the kernel.
                if full or stale_memory or not services or not self._last_chains:
                    return await self._sync(services)
                try:
                    return await self._sync_fast(services, self._last_chains)
                except RestoreError:
                    # Someone's rules were refused, or the kernel is not what the memory
                    # says: a full pass finds out which, and leaves that app out.
                    self._last_chains = None
                    return await self._sync(services)
            except BaseException:
                self._last_chains = None
                self._clean = False
                raise

    def _screen(self, services: list[Service], retry: bool) -> tuple[list[Service], _Refusals]:
        """The services to try: one that fails quarantine.problem(), or that the kernel
        refused as it is at the last sync (unless `retry`: a full pass tries it again), goes
        in as the app's previous one, or not at all."""
        out: list[Service] = []
        refused: _Refusals = {}
        for s in services:
            why = problem(s)
            if why is None and not retry and s.app in self._refused:
                old, old_why = self._refused[s.app]
                why = old_why if old == s else None
            if why is None:
                out.append(s)
                continue
            refused[s.app] = (s, why)
            prev = self._applied.get(s.app)
            if prev is not None and prev != s and problem(prev) is None:
                out.append(prev)
        return out, refused

    def _done(self, applied: list[Service], chains: dict[tuple[str, str], list[str]],
              refused: _Refusals) -> dict[str, str]:
        """After a successful restore: route_localnet on the bridges whose guards are in now,
        the memory of what was applied, and each app's error."""
        self._remember(applied, chains)
        self._applied = {s.app: s for s in applied}
        self._refused = refused
        self._clean = not applied
        kept = "its previous rules are kept"
        errors = {app: f"{why}; {kept if app in self._applied else 'it has no rules'}"
                  for app, (_, why) in refused.items()}
        if self.family is IPV4:
            failed = self._localnet.enable(localnet_bridges(applied))
            for s in applied:
                for bridge in s.bridges:
                    if bridge in failed and s.app not in errors:
                        errors[s.app] = f"{failed[bridge]}: 127.0.0.1 clients are not served"
        for app, error in sorted(errors.items()):
            if self._errors.get(app) != error:
                log.warning("%s: %s", self.family.tool, error, extra={"app": app})
        for app in sorted(set(self._errors) - set(errors)):
            log.info("%s: the app's rules are in", self.family.tool, extra={"app": app})
        self._errors = errors
        return errors

    def _localnet_off(self, services: Sequence[Service]) -> None:
        """route_localnet back on the bridges no service needs, before the restore that
        removes their guards (localnet.py)."""
        if self.family is IPV4:
            self._localnet.restore(keep=localnet_bridges(services))

    async def _sync_fast(
        self, services: list[Service], old: dict[tuple[str, str], list[str]]
    ) -> dict[str, str]:
        """Only what changed since the last successful sync, read from memory; the caller
        holds the lock. Never run with no services (removal takes a full pass: jumps). A
        refused restore raises RestoreError: the caller's full pass finds whose it was."""
        started = time.monotonic()
        services, refused = self._screen(services, retry=False)
        if not services:
            raise RestoreError("nothing left to apply", "nothing left to apply", "")
        nets = self._bridge_nets(services)
        raw = _has_raw(old)
        chains = render_chains(services, self.family, nets, self._cache, self.settings.bucket,
                               raw=raw)
        if not raw and _has_raw(chains):
            # A first hold: its chains need their jumps, which only a full pass adds.
            raise RestoreError("the raw table's chains are new", "", "")
        text = ""
        if chains != old:
            rewritten = changed_dnat_chains(old, chains)
            counters = await self._read_counters(rewritten) if rewritten else {}
            text = render_diff(old, chains, counters)
        self._localnet_off(services)
        if text:
            await self._restore(text)
        await self._clean_conntrack(services, self._last_udp)
        errors = self._done(services, chains, refused)
        log.debug("%s fast sync of %d service(s) took %.3fs (%d line(s) written)",
                  self.family.tool, len(services), time.monotonic() - started,
                  text.count("\n"))
        return errors

    async def _read_counters(self, chains: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """(app, replica) -> (packets, bytes) of the DNAT rules in these nat chains of ours."""
        if len(chains) > self.settings.per_chain_counter_reads:
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

    async def _sync(self, services: list[Service]) -> dict[str, str]:
        """One full pass; the caller holds the lock. Tries every app's rules again, and
        leaves out the app a refused restore belongs to (quarantine.py)."""
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
            return {}
        ours = {
            (table, chain)
            for table, tab in saved.items()
            for chain in tab.chains
            if chain.startswith(PREFIX)
        }
        old_udp = dnat_endpoints(saved, "udp")
        services, refused = self._screen(services, retry=True)
        nets = self._bridge_nets(services)
        last = self._last_chains or {}
        in_kernel = collections.Counter(
            (table, rule.chain) for table, tab in saved.items() for rule in tab.rules
            if rule.chain.startswith(PREFIX)
        )  # fmt: skip
        jumps_removed = False
        failures: list[str] = []  # what each refused attempt said, apps' words aside
        while True:
            raw = _has_raw(ours)  # sticky once a hold made them
            chains = render_chains(services, self.family, nets, self._cache,
                                   self.settings.bucket, raw=raw)
            stale = sorted(ours - set(chains))
            unchanged = {
                key
                for key, lines in chains.items()
                if last.get(key) == lines
                and key[0] in saved
                and key[1] in saved[key[0]].chains
                and in_kernel[key] == len(lines)
            }
            text = render(services, [f"{t}:{c}" for t, c in stale], dnat_counters(saved),
                          unchanged=unchanged, family=self.family, bridge_nets=nets,
                          bucket=self.settings.bucket, raw=raw)
            self._localnet_off(services)
            if not services and not jumps_removed:
                # Our chains cannot be deleted while a built-in chain still jumps to them.
                await self._remove_jumps(saved)
                jumps_removed = True
            if not text:
                break
            try:
                await self._restore(text)
                break
            except RestoreError as e:
                app = blame(text, e.stderr, services, self.settings.bucket)
                said = _LINE_NUMBERS.sub("", e.stderr)
                if (app is None or said in failures
                        or len(refused) >= self.settings.max_quarantined):
                    raise  # nobody's alone, or everybody's: the whole sync fails
                failures.append(said)
                log.debug("%s refused app %s's rules: %s; trying again without them",
                          self._restore_cmd, app, e.detail, extra={"app": app})
                failing = next(s for s in services if s.app == app)
                requested = refused[app][0] if app in refused else failing
                refused[app] = (requested, f"{self._restore_cmd} refused its rules: {e.detail}")
                services = [s for s in services if s.app != app]
                prev = self._applied.get(app)
                if prev is not None and prev != failing:
                    services = sorted([*services, prev], key=lambda s: s.app)
        if services:
            await self._ensure_jumps(saved, set(chains))
        await self._clean_conntrack(services, old_udp)
        errors = self._done(services, chains, refused)
        self._last_full = started
        log.debug(
            "%s full sync of %d service(s) took %.3fs (%d stale chain(s) removed)",
            self.family.tool, len(services), time.monotonic() - started, len(stale),
        )  # fmt: skip
        return errors

    def _bridge_nets(self, services: Sequence[Service]) -> dict[str, list[str]]:
        """The networks of the bridges whose backends containers can call through a
        published address (the same-bridge hairpin rules; rules.py's module doc)."""
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
        """(app, replica) -> new connections the rules sent to that replica (DNAT packets),
        never lower than a previous answer while the replica has a rule.  Takes no lock: it
        never waits for a sync, nor a sync for it (module doc, "Counters")."""
        if self._clean:
            return {}
        text = await self._run_checked([self._save_cmd, "-c", "-t", "nat"])
        read = {key: pkts for key, (pkts, _) in dnat_counters(parse_save(text)).items()}
        return self._counted.update(read)

    # --- jump rules ----------------------------------------------------------------------

    async def _ensure_jumps(self, saved: Mapping[str, SavedTable],
                            chains: Collection[tuple[str, str]]) -> None:
        """Exactly one jump per hook, and it comes first in its built-in chain.

        First, because Docker puts its own jumps (DOCKER-USER, DOCKER-ISOLATION-STAGE-1) back
        on top of FORWARD whenever it creates a network, lbctl's own included; below them,
        the isolation chain drops what lbctl DNATs from a container on one bridge to a
        replica on another (a client on docker0 calling an app on lbctl's IPv6 network: 0 of
        60 UDP datagrams answered, measured). Moving is insert-then-delete, so the chain is
        never without our jump.
        """
        for table, builtin, target in JUMPS:
            if (table, target) not in chains:
                continue  # the raw table's, while no app was paused: not made at all
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
                if not s.backends or last.get(s.app, 0):
                    continue
                if s.publish.proto == "tcp":
                    # Connections refused while there was no backend left un-NATed entries
                    # that would refuse a new connection from the same client port again.
                    for port in sorted({pub.host_port for pub in s.publishes}):
                        await conntrack.forget_unnated(port, "tcp", self.family.version)
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
        # iptables' words without its name, version, usage hint and "Error occurred at line:
        # N", then the line they name
        said = [_TOOL_PREFIX.sub("", ln) for ln in err.splitlines()
                if ln.strip() and "--help" not in ln and not ln.startswith("Error occurred")]
        detail = " ".join(" ".join(said).split()) or f"exit code {rc}"
        number = error_line(err)
        if number is not None and 1 <= number <= len(lines):
            detail += f" (line {number}: {lines[number - 1]})"
        with contextlib.suppress(OSError):  # keep the rejected input for a post-mortem
            self._state_dir.mkdir(parents=True, exist_ok=True)
            (self._state_dir / FAILED_RULES_FILE.format(tool=self.family.tool)).write_text(text)
        raise RestoreError(f"{self._restore_cmd} failed: {detail}", detail, err)

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
            async with asyncio.timeout(self.settings.command_timeout):
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            limit = self.settings.command_timeout
            raise IptablesError(
                f"{' '.join(cmd)} did not finish in {limit:g}s (xtables lock held?)"
            ) from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


class DualStackRules:
    """Both families' rules as the one rules port HostRules syncs: IPv4 first, then IPv6,
    each its own atomic restore. A failed IPv6 restore after a good IPv4 one leaves the IPv4
    rules new and the IPv6 ones as they were; the sync raises, and HostRules' retry is a
    full sync of both."""

    def __init__(
        self, state_dir: pathlib.Path, *,
        settings: IptablesSettings = IptablesSettings(),  # noqa: B008  (frozen, shared)
    ) -> None:  # fmt: skip
        self.v4 = IptablesDataplane(state_dir, IPV4, settings=settings)
        self.v6 = IptablesDataplane(state_dir, IPV6, settings=settings)

    async def sync(self, services: Sequence[Service], full: bool = False) -> dict[str, str]:
        """app -> error, over both families (IptablesDataplane.sync)."""
        errors = dict(await self.v4.sync(services, full))
        for app, error in (await self.v6.sync(services, full)).items():
            errors[app] = f"{errors[app]}; ip6tables: {error}" if app in errors else error
        return errors

    async def counters(self) -> dict[tuple[str, str], int]:
        """A replica's new connections over both families."""
        out = await self.v4.counters()
        for key, n in (await self.v6.counters()).items():
            out[key] = out.get(key, 0) + n
        return out


def _has_raw(chains: Iterable[tuple[str, str]]) -> bool:
    """Are the traffic hold's raw-table chains among these (table, chain) pairs? Once a hold
    made them they stay (render_chains' `raw`)."""
    return any(table == "raw" for table, _ in chains)
