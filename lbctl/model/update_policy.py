"""The update policy users set on an app: how a changed template replaces its replicas
(Swarm's and Kubernetes' knobs under lbctl's names). Part of the spec (lbctl.model.spec), not
of its template: changing it alone rolls nothing. The rollout state the daemon keeps while it
applies the policy is lbctl.model.rollout's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, TypeVar

from lbctl.model.errors import InvalidInput
from lbctl.model.names import MAX_REPLICAS

E = TypeVar("E", bound=StrEnum)


class FailureAction(StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"


class Order(StrEnum):
    START_FIRST = "start-first"  # surge: a new replica is ready before an old one drains
    STOP_FIRST = "stop-first"  # an old one drains first (Swarm's default, for fixed capacity)


@dataclass(frozen=True)
class UpdatePolicy:
    parallelism: int = 1  # replicas replaced at once
    delay: float = 0.0  # seconds between two batches
    max_unavailable: int = 0  # ready replicas the rollout may go below the desired count by
    monitor: float = 5.0  # seconds a new replica must stay ready before an old one drains
    ready_timeout: float = 60.0  # a new replica not ready by then fails the rollout
    failure_action: FailureAction = FailureAction.ROLLBACK
    order: Order = Order.START_FIRST

    @property
    def surge(self) -> int:
        """Replicas above the desired count a rollout may run."""
        return self.parallelism if self.order is Order.START_FIRST else 0

    @property
    def unavailable(self) -> int:
        """Ready replicas below the desired count a rollout may accept."""
        if self.order is Order.STOP_FIRST:
            return max(self.max_unavailable, self.parallelism)
        return self.max_unavailable

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["failure_action"] = str(self.failure_action)
        d["order"] = str(self.order)
        return d

    @classmethod
    def from_json(cls, data: object) -> UpdatePolicy:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidInput("update must be an object (parallelism, delay, ...)")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(
                f"unknown update field(s): {', '.join(sorted(map(str, unknown)))} "
                f"(use {', '.join(sorted(known))})"
            )
        d = cls()
        return cls(
            parallelism=_int(data, "parallelism", d.parallelism, 1, MAX_REPLICAS),
            delay=_seconds(data, "delay", d.delay),
            max_unavailable=_int(data, "max_unavailable", d.max_unavailable, 0, MAX_REPLICAS),
            monitor=_seconds(data, "monitor", d.monitor),
            ready_timeout=_seconds(data, "ready_timeout", d.ready_timeout, minimum=1.0),
            failure_action=_enum(data, "failure_action", FailureAction, d.failure_action),
            order=_enum(data, "order", Order, d.order),
        )


def _int(data: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidInput(f"update {key} must be a whole number from {lo} to {hi}, not {v!r}")
    return v


def _seconds(data: dict[str, Any], key: str, default: float, minimum: float = 0.0) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not minimum <= v <= 3600:
        raise InvalidInput(
            f"update {key} must be a number of seconds from {minimum:g} to 3600, not {v!r}"
        )
    return float(v)


def _enum(data: dict[str, Any], key: str, kind: type[E], default: E) -> E:
    v = data.get(key, str(default))
    try:
        return kind(v)
    except ValueError:
        allowed = " or ".join(str(m) for m in kind)
        raise InvalidInput(f"update {key} must be {allowed}, not {v!r}") from None
