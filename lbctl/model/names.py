"""Names and labels: what lbctl calls its containers and how it recognises them.

Replica containers are named NAME-<index> and the sandbox NAME-sandbox; both must stay valid
Docker names, and the app name also ends up in iptables chain names (28 chars at most) and
bpffs paths, so the rule is Docker's container-name rule, shortened.
"""

from __future__ import annotations

import re

from lbctl.model.errors import InvalidInput

LABEL_APP = "lbctl.app"
LABEL_MANAGED = "lbctl.managed"
LABEL_ROLE = "lbctl.role"
LABEL_INDEX = "lbctl.index"
# Which revision of the app's spec a replica runs: the hash decides (it is what a replica was
# created from), the number is for people and `rollout history`.
LABEL_SPEC_HASH = "lbctl.spec-hash"
LABEL_REVISION = "lbctl.revision"
# The network whose address lbctl's DNAT targets (a container may join several, and the
# engine lists them in no order of the user's).
LABEL_NETWORK = "lbctl.network"
# Who an engine object lbctl made for a member belongs to (its uid): networks and volumes a
# member's apply created, which only that member's apps may mount or count against.
LABEL_OWNER = "lbctl.owner"
# lbctl's own bridge network, for apps that publish IPv6 (lbctl.controller.template).
OWN_NETWORK = "lbctl"
# The deadline a traffic hold's container was made for (lbctl.model.hold.hold_tag): a hold
# container of another deadline is replaced (see controller.planner).
LABEL_HOLD = "lbctl.hold-until"
ROLE_REPLICA = "replica"
ROLE_SANDBOX = "sandbox"
# ebpf mode: the listener that holds an app's new connections while it is paused
# (lbctl.model.hold); it joins the replicas' reuseport group and never accepts.
ROLE_HOLD = "hold"
# A one-off container of a new revision that runs the app's release command before the
# revision's first replica starts.
ROLE_RELEASE = "release"

MAX_NAME_LEN = 20
MAX_REPLICAS = 64
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*\Z")


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput("app name must be a non-empty string")
    if len(name) > MAX_NAME_LEN:
        raise InvalidInput(f"app name {name!r} is longer than {MAX_NAME_LEN} characters")
    if not _NAME_RE.match(name):
        raise InvalidInput(
            f"invalid app name {name!r}: use lower-case letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_replicas(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"replicas must be a whole number, not {value!r}")
    if value < 0 or value > MAX_REPLICAS:
        raise InvalidInput(f"replicas must be between 0 and {MAX_REPLICAS}, not {value}")
    return value


def parse_replicas(text: str) -> int:
    # At most 10 digits: int() of thousands of them is refused by Python (or slow).
    if not re.fullmatch(r"[0-9]{1,10}", text.strip()):
        shown = repr(text) if len(text) <= 30 else f"{text[:20]!r}... ({len(text)} characters)"
        raise InvalidInput(f"replicas must be a whole number from 0 to {MAX_REPLICAS}, "
                           f"not {shown}")
    return validate_replicas(int(text))


def replica_name(app: str, index: int) -> str:
    return f"{app}-{index}"


def sandbox_name(app: str) -> str:
    return f"{app}-sandbox"


def hold_name(app: str, tag: str) -> str:
    """The hold container of the hold with this tag (a replacement gets its own name)."""
    return f"{app}-hold-{tag}"


def release_name(app: str, revision: int) -> str:
    return f"{app}-release-{revision}"


def replica_labels(
    app: str,
    role: str,
    index: int | None = None,
    spec_hash: str | None = None,
    revision: int | None = None,
) -> dict[str, str]:
    labels = {LABEL_APP: app, LABEL_MANAGED: "true", LABEL_ROLE: role}
    if index is not None:
        labels[LABEL_INDEX] = str(index)
    if spec_hash is not None:
        labels[LABEL_SPEC_HASH] = spec_hash
    if revision is not None:
        labels[LABEL_REVISION] = str(revision)
    return labels
