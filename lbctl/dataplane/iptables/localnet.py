"""`net.ipv4.conf.<bridge>.route_localnet`, which DNAT of 127.0.0.1 clients to a backend needs:
set to 1 on backend bridges only, before the rules that need it, and put back once no service
needs the bridge.  The original value is persisted in state_dir/iptables-sysctl.json first
(atomically), so a crashed or restarted daemon still puts it back.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from collections.abc import Mapping

from lbctl.dataplane.iptables.errors import IptablesError
from lbctl.fsutil import atomic_write

__all__ = ["SYSCTL_STATE_FILE", "RouteLocalnet"]

log = logging.getLogger("lbctl.dataplane.iptables")

SYSCTL_STATE_FILE = "iptables-sysctl.json"
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,14}\Z")  # a Linux interface name


def _sysctl_path(bridge: str) -> pathlib.Path:
    if not _BRIDGE_RE.match(bridge) or bridge in (".", ".."):
        raise IptablesError(f"invalid bridge name {bridge!r}")
    return pathlib.Path("/proc/sys/net/ipv4/conf") / bridge / "route_localnet"


class RouteLocalnet:
    """The bridges' route_localnet, and the state file that remembers their originals."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        self._state_dir = pathlib.Path(state_dir)

    def _load(self) -> dict[str, str]:
        path = self._state_dir / SYSCTL_STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise IptablesError(f"cannot read {path}: {e}") from None
        originals = data.get("route_localnet", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in originals.items()}

    def _save(self, originals: Mapping[str, str]) -> None:
        # Atomic (temp file + rename + fsync): a crash must never leave a half-written file
        # that loses the original value we promised to put back.
        doc = {"route_localnet": dict(sorted(originals.items()))}
        data = json.dumps(doc, indent=2).encode() + b"\n"
        atomic_write(self._state_dir / SYSCTL_STATE_FILE, data)

    def enable(self, bridges: frozenset[str]) -> None:
        originals = self._load()
        for bridge in sorted(bridges):
            path = _sysctl_path(bridge)
            try:
                current = path.read_text().strip()
                if bridge not in originals:
                    originals[bridge] = current
                    self._save(originals)  # persisted before we change anything
                if current != "1":
                    path.write_text("1\n")
            except FileNotFoundError:
                # The bridge is gone (network removed under us): its backends are unreachable
                # anyway; the controller's next sync will not list it.
                log.warning("bridge %s has no route_localnet sysctl; skipping", bridge)
            except OSError as e:
                raise IptablesError(f"cannot set {path}: {e}") from None

    def restore(self, keep: frozenset[str]) -> None:
        originals = self._load()
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
                self._save(originals)
            except OSError as e:
                state = self._state_dir / SYSCTL_STATE_FILE
                raise IptablesError(f"cannot write {state}: {e}") from None
