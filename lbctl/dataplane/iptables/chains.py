"""The names of lbctl's iptables chains and where they hook in: nothing outside chains named
`LBCTL-*` is ever written, and the jump rules that hook them into the built-in chains are the
seven in `JUMPS` (managed by plane.py, outside the restore transaction).

Chain names are at most 28 characters: app names go into chains only as a hash
(`LBCTL-SVC-` + base32(sha256(app))[:16], like kube-proxy's KUBE-SVC-*), and the app name
itself is kept in a `-m comment`.
"""

from __future__ import annotations

import base64
import hashlib

PREFIX = "LBCTL-"
CHAIN_PREROUTING = "LBCTL-PREROUTING"
CHAIN_OUTPUT = "LBCTL-OUTPUT"
CHAIN_POSTROUTING = "LBCTL-POSTROUTING"
CHAIN_FORWARD = "LBCTL-FORWARD"
CHAIN_INPUT = "LBCTL-INPUT"
# raw: the traffic holds of paused apps (rules.py), before conntrack and NAT look at a SYN.
CHAIN_HOLD_PREROUTING = "LBCTL-HOLD-PREROUTING"
CHAIN_HOLD_OUTPUT = "LBCTL-HOLD-OUTPUT"
SVC_PREFIX = "LBCTL-SVC-"
# Bucket chains of a large service (rules.py: "Large services").
SEP_PREFIX = "LBCTL-SEP-"  # nat: the DNAT rules of one bucket
SNAT_PREFIX = "LBCTL-SNT-"  # nat: the per-backend POSTROUTING rules of one bucket
FWD_PREFIX = "LBCTL-FWD-"  # filter: the per-backend FORWARD rules of one bucket
MAX_CHAIN_LEN = 28

# (table, built-in chain, our chain): the hooks. Each is a single rule inserted at position 1
# of the built-in chain (ahead of Docker's rules), carrying JUMP_COMMENT so it is recognisably
# ours in `iptables-save` output.
JUMP_COMMENT = "lbctl"
# The comment of a bridge's route_localnet guard rule in LBCTL-INPUT, followed by its name.
GUARD_COMMENT = "route_localnet guard for "
JUMPS: tuple[tuple[str, str, str], ...] = (
    ("nat", "PREROUTING", CHAIN_PREROUTING),
    ("nat", "OUTPUT", CHAIN_OUTPUT),
    ("nat", "POSTROUTING", CHAIN_POSTROUTING),
    ("filter", "FORWARD", CHAIN_FORWARD),
    ("filter", "INPUT", CHAIN_INPUT),
    ("raw", "PREROUTING", CHAIN_HOLD_PREROUTING),
    ("raw", "OUTPUT", CHAIN_HOLD_OUTPUT),
)
BASE_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": (CHAIN_PREROUTING, CHAIN_OUTPUT, CHAIN_POSTROUTING),
    "filter": (CHAIN_FORWARD, CHAIN_INPUT),
    "raw": (CHAIN_HOLD_PREROUTING, CHAIN_HOLD_OUTPUT),
}
TABLES = ("nat", "filter", "raw")
# raw's hooks see every packet of the host: only a TCP SYN (a new connection, or its retry)
# ever enters the hold chains, the rest passes with one flags match.
_SYN_ONLY = ["-p", "tcp", "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN"]


def jump_spec(target: str) -> list[str]:
    """The rule (minus `-A CHAIN`) that hooks `target` into its built-in chain."""
    syn = _SYN_ONLY if target in BASE_CHAINS["raw"] else []
    return [*syn, "-m", "comment", "--comment", JUMP_COMMENT, "-j", target]



def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(app: str) -> str:
    """`LBCTL-SVC-` + 16 base32 chars of sha256(app): fits 28 chars for any valid app name
    and cannot collide with a base chain."""
    return SVC_PREFIX + _hash16(app)


def bucket_chain(prefix: str, app: str, bucket: int) -> str:
    """A large service's bucket chain: prefix + 16 base32 chars of sha256("app#bucket")."""
    return prefix + _hash16(f"{app}#{bucket}")

def chain_table(chain: str) -> str:
    """Table a bare LBCTL chain name lives in, by lbctl's naming scheme."""
    if chain in BASE_CHAINS["raw"]:
        return "raw"
    return "filter" if chain in BASE_CHAINS["filter"] or chain.startswith(FWD_PREFIX) else "nat"

