"""A traffic hold (`lbctl pause NAME [--max S]`): while an app is paused, its new TCP
connections wait in the kernel, neither refused nor reset, and are served in order once it
resumes; the hold ends by itself at its deadline.

How a data plane holds is its own (README, "Pause and resume"): ebpf mode steers every new
connection to a listener of lbctl's in the replicas' reuseport group that never accepts, whose
accept queue migrates to the replicas on resume; iptables mode drops the SYNs (clients send
them again) until a deadline the rule itself carries. Here is only what the user asked for,
in epoch seconds so that it survives a daemon restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lbctl.model.errors import InvalidInput

# kamal-proxy's pause holds requests for 30 s by default, and 30 s is within what HTTP
# clients wait by default (browsers, most libraries: 30 s or more; Linux's own connect gives
# up after 127-135 s). In iptables mode a client that arrives as the hold starts sends its SYN
# again after 1, 3, 7, 15, 31 s (Linux before 6.5; 1, 2, 3, 4, 5, 7, 11, 19, 35 s since): it is
# served at its retry after the hold, 31 or 35 s in, well before it gives up (README, "Pause
# and resume", has the measured bounds). Longer holds are asked for with --max.
DEFAULT_MAX = 30.0
# A hold must end: an hour is far beyond any client's patience (README: measured bounds).
MAX_MAX = 3600.0


def parse_max(value: object) -> float:
    """`--max` / {"max": S}: seconds, more than 0 and at most MAX_MAX; None: DEFAULT_MAX."""
    if value is None:
        return DEFAULT_MAX
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"max must be a number of seconds, not {value!r}")
    if not 0 < value <= MAX_MAX:
        raise InvalidInput(f"max must be more than 0 and at most {MAX_MAX:g} seconds, "
                           f"not {value:g}")
    return float(value)


@dataclass(frozen=True)
class Hold:
    """An app's hold: since when, and the deadline at which it ends by itself."""

    since: float  # epoch seconds
    until: float  # epoch seconds

    def active(self, now: float) -> bool:
        return now < self.until

    @property
    def tag(self) -> str:
        return hold_tag(self.until)

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until}

    @classmethod
    def from_json(cls, d: object) -> Hold:
        if not isinstance(d, dict):
            raise InvalidInput("a hold must be an object")
        return cls(float(d["since"]), float(d["until"]))


def hold_tag(until: float) -> str:
    """What names a hold's deadline in a container name and label: milliseconds, in hex (a
    second pause within the same second is another hold)."""
    return f"{round(until * 1000):x}"
