"""The host's iptables rules: one shared, serialized step for every app's worker.

The rules of all apps are one ruleset applied in one transaction (kube-proxy's
syncProxyRules), so they cannot be synced per app. Each worker hands in its app's `Service`
and waits for a sync that includes it; syncs are coalesced (one `iptables-restore` for
whatever changed meanwhile, at most one per `min_interval`) and a failed sync is retried with
backoff by this loop, the next attempt being a full one.

One app's rules the kernel refuses do not fail the others': the rules port leaves that app
out (its previous rules kept, or none) and answers with its error, which this step hands to
that app's worker alone (`set` raises RulesRefused, `error()` is what `status` shows) while
every other worker's `set` returns. A change of the app's rules is tried at once; the same
rules again at the next full sync (the periodic one: at most `resync_interval` later).

What was last applied is kept in the state dir: a restarted daemon starts from it, so the
rules of an app whose worker has not finished its first pass are re-applied as they were,
never dropped because another app's worker synced first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbctl.controller.interfaces import RulesPort
from lbctl.fsutil import atomic_write
from lbctl.model import InvalidInput, Publish
from lbctl.model.dataplane import Backend, Service
from lbctl.settings import HostRulesSettings

log = logging.getLogger("lbctl.controller")

STATE_FILE = "services.json"


class SyncFailed(RuntimeError):
    """The host sync that should have included a worker's change failed."""


class RulesRefused(SyncFailed):
    """The sync went through, without this app's rules (the message says why)."""


class HostRules:
    def __init__(
        self,
        rules: RulesPort,
        state_dir: Path,
        settings: HostRulesSettings,
        on_sync: Callable[[float, bool], None] = lambda seconds, ok: None,
    ) -> None:
        self._rules = rules
        self.path = Path(state_dir) / STATE_FILE
        self.on_sync = on_sync
        self.settings = settings
        self.services: dict[str, Service] = {}
        self._version = 0  # bumped on every change of `services`
        self._synced = -1  # version of the last successful sync
        self._failed: tuple[int, str] | None = None  # (version, error) of the last failure
        # app -> why its rules are not (all) in, from the last successful sync
        self._errors: dict[str, str] = {}
        # The services of the last successful sync as the rules port applied them: a refused
        # app's previous one, not the one it asked for (what the state file keeps).
        self._applied: dict[str, Service] = {}
        self._wake = asyncio.Event()
        self._full = True  # the next sync compares with the kernel: startup, resync()
        self._done = asyncio.Condition()

    def load(self) -> set[str]:
        """Start from what the last daemon applied; returns the apps it holds."""
        try:
            raw: Any = json.loads(self.path.read_text())
            self.services = {s.app: s for s in (_service(d) for d in raw["services"])}
            self._applied = dict(self.services)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, InvalidInput) as e:
            # The kernel still holds the rules; the first worker passes rebuild this file.
            log.warning("ignoring damaged %s (%s): apps' rules are rebuilt by their workers",
                        self.path, e)
            self.services = {}
        return set(self.services)

    def apps(self) -> set[str]:
        return set(self.services)

    def error(self, app: str) -> str | None:
        """Why the app's rules are not (all) in the kernel since the last sync; None: they are."""
        return self._errors.get(app)

    async def set(self, app: str, service: Service | None) -> None:
        """Make `service` the app's rules (None: the app has none) and wait until a sync
        that includes it succeeded. Raises SyncFailed (or TimeoutError, after the settings'
        `wait_timeout`); RulesRefused when that sync went through without the app's rules
        (they are not in: the app keeps its previous ones, or none)."""
        current = self.services.get(app)
        if service == current and self._synced == self._version:
            self._raise_refused(app)
            return
        if service != current:
            if service is None:
                del self.services[app]
            else:
                self.services[app] = service
            self._version += 1
        mine = self._version
        self._wake.set()
        async with asyncio.timeout(self.settings.wait_timeout), self._done:
            while self._synced < mine:
                if self._failed is not None and self._failed[0] >= mine:
                    raise SyncFailed(self._failed[1])
                await self._done.wait()
        self._raise_refused(app)

    def _raise_refused(self, app: str) -> None:
        error = self._errors.get(app)
        if error is not None:
            raise RulesRefused(error)

    def resync(self) -> None:
        """A full sync now, without a change: someone moved or removed rules of ours (Docker
        puts its FORWARD jumps on top of ours whenever it creates a network). Coalesced with
        any sync under way; at most one per `min_interval`."""
        self._full = True
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                # Someone may flush our chains (an admin, a firewall reload): a periodic full
                # sync repairs them, as kube-proxy's does. It writes nothing when the rules
                # are as they should be; syncs for a change in between are the rules port's
                # fast path (only the chains that changed, from its memory of the last sync).
                async with asyncio.timeout(self.settings.resync_interval):
                    await self._wake.wait()
            except TimeoutError:
                self._full = True
            self._wake.clear()
            full, self._full = self._full, False
            version = self._version
            services = sorted(self.services.values(), key=lambda s: s.app)
            t0 = time.perf_counter()  # how long the kernel took, for the sync histogram
            try:
                errors = dict(await self._rules.sync(services, full=full))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.on_sync(time.perf_counter() - t0, False)
                self._full = True  # the retry compares with the kernel
                log.warning("iptables sync failed: %s; retrying in %.1fs", e, backoff)
                async with self._done:
                    self._failed = (version, str(e))
                    self._done.notify_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
                continue
            self.on_sync(time.perf_counter() - t0, True)
            backoff = 0.2
            applied = {s.app: s for s in services if s.app not in errors}
            for app in errors:
                # Refused: what was applied before stays what the state file says (or
                # nothing), so a restarted daemon does not try the refused rules first.
                if app in self._applied:
                    applied[app] = self._applied[app]
            self._applied = applied
            self._save(sorted(applied.values(), key=lambda s: s.app))
            async with self._done:
                self._errors = errors
                self._synced = max(self._synced, version)
                self._done.notify_all()
            await asyncio.sleep(self.settings.min_interval)

    def _save(self, services: list[Service]) -> None:
        doc = {"services": [_service_json(s) for s in services]}
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        try:
            if self.path.exists() and self.path.read_bytes() == data:
                return
            atomic_write(self.path, data)
        except OSError as e:
            log.warning("cannot write %s: %s", self.path, e)


def _service_json(s: Service) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "app": s.app,
        "publish": str(s.publish),
        "backends": [[b.name, b.ip, b.port, b.weight, *([b.ip6] if b.ip6 else [])]
                     for b in s.backends],
        "bridges": list(s.bridges),
    }
    if s.extra_publishes:
        doc["extra_publishes"] = [str(p) for p in s.extra_publishes]
    if s.hold_until is not None:
        doc["hold_until"] = s.hold_until
    return doc


def _service(d: dict[str, Any]) -> Service:
    # Files of an older lbctl have no IPv6 address in a backend and no extra publishes.
    return Service(
        app=str(d["app"]),
        publish=Publish.parse(d["publish"]),
        backends=tuple(
            Backend(str(b[0]), str(b[1]), int(b[2]), int(b[3]),
                    str(b[4]) if len(b) > 4 else None)
            for b in d["backends"]
        ),
        bridges=tuple(str(b) for b in d["bridges"]),
        extra_publishes=tuple(Publish.parse(p) for p in d.get("extra_publishes", [])),
        hold_until=float(d["hold_until"]) if d.get("hold_until") is not None else None,
    )
