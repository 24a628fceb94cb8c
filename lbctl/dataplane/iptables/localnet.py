"""`net.ipv4.conf.<bridge>.route_localnet`, which DNAT of 127.0.0.1 clients to a backend needs.

The sysctl lets packets to and from 127.0.0.0/8 cross the bridge, both ways: without the
guard rule in LBCTL-INPUT (rules.py: drop what arrives from the bridge for 127.0.0.0/8 and is
not a reply or a DNAT of ours), every container on it could reach the host's loopback-only
services (CVE-2020-8558). So the order is the guard's (plane.py):
  * on: only after the restore that installs the bridge's guard succeeded, and the jump into
    LBCTL-INPUT is in place; a failed sync leaves the sysctl as it was;
  * back to its original: before the restore that removes the guard (no service needs the
    bridge any more).
The original value is persisted in state_dir/iptables-sysctl.json first (atomically), so a
crashed or restarted daemon still puts it back. A damaged file (truncated, not JSON, foreign
entries) is ignored with a warning and rebuilt, rather than failing every IPv4 sync: the
originals it held are lost, so from then on a bridge found at 1 that the file does not name
is taken to have been 0 (the kernel's default, and the safe way to be wrong).
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
from collections.abc import Iterable, Mapping

from lbctl.dataplane.iptables.errors import IptablesError
from lbctl.fsutil import atomic_write

__all__ = ["SYSCTL_STATE_FILE", "RouteLocalnet", "valid_bridge"]

log = logging.getLogger("lbctl.dataplane.iptables")

SYSCTL_STATE_FILE = "iptables-sysctl.json"
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,14}\Z")  # a Linux interface name


def valid_bridge(bridge: str) -> bool:
    """A Linux interface name: what may go into a sysctl path and a rule's `-i`."""
    return bool(_BRIDGE_RE.match(bridge)) and bridge not in (".", "..")


def _sysctl_path(bridge: str) -> pathlib.Path:
    if not valid_bridge(bridge):
        raise IptablesError(f"invalid bridge name {bridge!r}")
    return pathlib.Path("/proc/sys/net/ipv4/conf") / bridge / "route_localnet"


class RouteLocalnet:
    """The bridges' route_localnet, and the state file that remembers their originals."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        self._state_dir = pathlib.Path(state_dir)
        # The file was found damaged once: originals it does not name are unknown (doc).
        self._lost = False

    @property
    def path(self) -> pathlib.Path:
        return self._state_dir / SYSCTL_STATE_FILE

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
            originals = data["route_localnet"]
            if not isinstance(originals, dict) or not all(
                isinstance(k, str) and v in ("0", "1") for k, v in originals.items()
            ):
                raise ValueError("route_localnet is not an object of bridge -> 0 or 1")
            self._lost = self._lost or data.get("lost") is True
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring damaged %s (%s): rebuilt; bridges it named keep their "
                        "route_localnet until lbctl needs them again", self.path, e)
            self._lost = True
            self._save({})
            return {}
        valid = {k: v for k, v in originals.items() if valid_bridge(k)}
        if len(valid) != len(originals):
            log.warning("ignoring invalid bridge names in %s: %s", self.path,
                        sorted(set(originals) - set(valid)))
        return valid

    def _save(self, originals: Mapping[str, str]) -> None:
        # Atomic (temp file + rename + fsync): a crash must never leave a half-written file
        # that loses the original value we promised to put back.
        doc: dict[str, object] = {"route_localnet": dict(sorted(originals.items()))}
        if self._lost:
            doc["lost"] = True
        data = json.dumps(doc, indent=2).encode() + b"\n"
        try:
            atomic_write(self.path, data)
        except OSError as e:
            raise IptablesError(f"cannot write {self.path}: {e}") from None

    def enable(self, bridges: Iterable[str]) -> dict[str, str]:
        """route_localnet=1 on `bridges`, whose guards are in the kernel already; returns the
        bridges it could not set (bridge -> why), the others are set. A bridge that is gone
        (its network removed under us) is skipped: its backends are unreachable anyway."""
        failed: dict[str, str] = {}
        originals = self._load()
        for bridge in sorted(bridges):
            try:
                path = _sysctl_path(bridge)
                current = path.read_text().strip()
                if bridge not in originals:
                    # Unknown since the file was lost, a 1 may be ours: put 0 back (doc).
                    originals[bridge] = "0" if self._lost and current == "1" else current
                    self._save(originals)  # persisted before we change anything
                if current != "1":
                    path.write_text("1\n")
            except FileNotFoundError:
                log.warning("bridge %s has no route_localnet sysctl; skipping", bridge)
            except (OSError, IptablesError) as e:
                failed[bridge] = f"cannot set route_localnet on {bridge}: {e}"
        return failed

    def restore(self, keep: frozenset[str]) -> None:
        """Every bridge not in `keep` back to its original value; raises IptablesError when
        one cannot be put back (the caller then leaves its guard where it is)."""
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
            self._save(originals)
