"""The kinds of value docker run's options take, as checks of untrusted JSON (API bodies,
TOML tables, the state file): each returns the value as the spec stores it, or raises
InvalidInput with one line naming the option. The option table (lbctl.model.options) gives
each option one of these.

Strict and pure: whatever passes is something the engine accepts in form, and a value the
engine would refuse (or worse, read differently) is refused before anything changes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from lbctl.model.docker_syntax import (
    HOST_NETWORK,
    NAME_RE,
    SIGNALS,
    abs_path,
    parse_duration,
    parse_size,
)
from lbctl.model.errors import Forbidden, InvalidInput

Check = Callable[[Any, str], Any]

MAX_ITEMS = 64  # of any list option: far beyond a real service, short of a hostile body
MAX_STOP_TIMEOUT = 600
MIN_MEMORY = 6 * (1 << 20)  # Docker's own minimum

USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?\Z")
LOG_DRIVER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*\Z")
LOG_OPT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*\Z")
_CAP_RE = re.compile(r"^[A-Za-z][A-Za-z_]*\Z")


def strings(check: Callable[[Any], object] | None = None,
            ) -> Callable[[Any, str], tuple[str, ...]]:
    """A list of strings (each one checked by `check`, which raises on a bad one)."""

    def value(v: Any, key: str) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InvalidInput(f"{key} must be a list of strings")
        if len(v) > MAX_ITEMS:
            raise InvalidInput(f"{key}: more than {MAX_ITEMS} entries")
        if check is not None:
            for x in v:
                check(x)
        return tuple(v)

    return value


def canonical(parse: Callable[[Any], object]) -> Callable[[Any, str], tuple[str, ...]]:
    """A list of strings stored in one spelling each (`str(parse(text))`), so that spellings
    make no revisions."""
    items = strings()

    def value(v: Any, key: str) -> tuple[str, ...]:
        return tuple(str(parse(x)) for x in items(v, key))

    return value


def pairs(key_re: re.Pattern[str]) -> Callable[[Any, str], dict[str, str]]:
    """An object of strings, or a list of KEY=VALUE as on the command line."""

    def value(v: Any, key: str) -> dict[str, str]:
        if isinstance(v, list):
            out: dict[str, str] = {}
            for item in v:
                if not isinstance(item, str):
                    raise InvalidInput(f"{key} must be an object of strings or a list of "
                                       "KEY=VALUE")
                k, _, val = item.partition("=")
                out[k] = val
            v = out
        if not isinstance(v, dict) or len(v) > MAX_ITEMS:
            raise InvalidInput(f"{key} must be an object of strings or a list of KEY=VALUE")
        for k, val in v.items():
            if not isinstance(k, str) or not key_re.match(k) or len(k) > 255:
                raise InvalidInput(f"invalid {key} key {k!r}")
            if not isinstance(val, str) or len(val) > 4096 or "\0" in val:
                raise InvalidInput(f"invalid {key} value for {k!r}: use a string")
        return dict(v)

    return value


def labels(v: Any, key: str) -> dict[str, str]:
    out = pairs(_LABEL_RE)(v, key)
    check_own_labels(out, "label")
    return out


def check_own_labels(given: dict[str, str], what: str) -> None:
    """lbctl's labels (`lbctl.app`, `lbctl.managed`, `lbctl.owner`, ...) say what lbctl made
    and for whom; one a caller could set would make lbctl take a container, network or volume
    as its own or as someone else's. Nobody's to ask for, root's neither: Forbidden."""
    ours = sorted(k for k in given if k.startswith("lbctl."))
    if ours:
        raise Forbidden(f"{what} {ours[0]!r}: keys starting with lbctl. are lbctl's own")


def text(pattern: re.Pattern[str], hint: str) -> Callable[[Any, str], str]:
    def value(v: Any, key: str) -> str:
        if not isinstance(v, str) or not pattern.match(v) or len(v) > 255:
            raise InvalidInput(f"invalid {key} {v!r}: {hint}")
        return v

    return value


def path(v: Any, key: str) -> str:
    return abs_path(v, key)


def duration(v: Any, key: str) -> str:
    """A Go duration of a health check: 0 (the engine's default) or at least 1ms, as the
    engine refuses shorter ones."""
    if 0 < parse_duration(v, key) < 0.001:
        raise InvalidInput(f"{key} must be 0 or at least 1ms, not {v!r}")
    return str(v)


def int_in(lo: int, hi: int) -> Callable[[Any, str], int]:
    def value(v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise InvalidInput(f"{key} must be a whole number from {lo} to {hi}, not {v!r}")
        return v

    return value


def boolean(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise InvalidInput(f"{key} must be true or false, not {v!r}")
    return v


def size(minimum: int, below: str) -> Callable[[Any, str], str]:
    """A byte size in docker's syntax (512m; a number of bytes), kept as written."""

    def value(v: Any, key: str) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if parse_size(v, key) < minimum:
            raise InvalidInput(f"{key} {v!r} is below {below}")
        return str(v)

    return value


def cpus(v: Any, key: str) -> float:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise InvalidInput(f"cpus must be a number of CPUs (0.5, 2), not {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.01 <= v <= 1024:
        raise InvalidInput(f"cpus must be a number of CPUs from 0.01 to 1024, not {v!r}")
    return float(v)


def _network(name: str) -> None:
    if name == HOST_NETWORK:
        return
    if name == "none" or not NAME_RE.match(name) or len(name) > 255:
        raise InvalidInput(f"invalid network {name!r}: use the name of a bridge network "
                           "(`docker network create NAME`) or host; none and container: "
                           "modes would leave lbctl no address to send traffic to")


def networks(v: Any, key: str) -> tuple[str, ...]:
    nets = strings(_network)(v, key)
    if len(set(nets)) != len(nets):
        raise InvalidInput(f"{key}: a network is named twice")
    if HOST_NETWORK in nets and len(nets) > 1:
        raise InvalidInput(f"{key}: host cannot be combined with other networks (a replica "
                           "on the host's network has no interface of its own to join them)")
    return nets


def ip_address(text: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(f"invalid dns {text!r}: use an IP address") from None
    if "%" in text:  # resolv.conf of the replica's namespace: no such interface there
        raise InvalidInput(f"invalid dns {text!r}: use an IP address without a %zone")


def capability(text: str) -> None:
    if not _CAP_RE.match(text) or len(text) > 64:
        raise InvalidInput(f"invalid capability {text!r}: use a name like NET_ADMIN or ALL")


def entrypoint(v: Any, key: str) -> tuple[str, ...]:
    ep = strings()(v, key)
    if not ep:
        raise InvalidInput("entrypoint must name a program ([\"\"] resets the image's)")
    return ep


def health_cmd(v: Any, key: str) -> str | tuple[str, ...]:
    """A string runs in the image's shell (docker run's --health-cmd); a list is the exec
    form (a Dockerfile's HEALTHCHECK CMD [...]), which images without a shell need."""
    if isinstance(v, str):
        if not v.strip():
            raise InvalidInput("health-cmd must not be empty")
        return v
    cmd = strings()(v, key)
    if not cmd or not cmd[0]:
        raise InvalidInput("health-cmd must name a program")
    return cmd


def signal(v: Any, key: str) -> str:
    """A signal the engine knows: a number from 1 to 64, or a name (SIGTERM, TERM,
    SIGRTMIN+3), as the engine reads them; a name it does not know fails every create."""
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64:
        return str(v)
    if isinstance(v, str) and ((re.fullmatch(r"[0-9]{1,2}", v) and 1 <= int(v) <= 64)
                               or v.upper().removeprefix("SIG") in SIGNALS):
        return v
    shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:40] + "..."
    raise InvalidInput(f"invalid stop-signal {shown}: use a signal's name (SIGTERM, SIGQUIT, "
                       "SIGRTMIN+3) or its number")

