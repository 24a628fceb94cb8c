"""The vocabulary every layer shares: apps as the user wants them, containers as the engine
shows them, and the validation that keeps bad input from reaching the engine or a chain name.

Everything here is pure data: no I/O, so the planner and the renderers can be tested alone.
"""

from lbctl.model.container import Container, ReplicaState
from lbctl.model.errors import Forbidden, InvalidInput
from lbctl.model.names import (
    LABEL_APP,
    LABEL_HOLD,
    LABEL_INDEX,
    LABEL_MANAGED,
    LABEL_NETWORK,
    LABEL_OWNER,
    LABEL_REVISION,
    LABEL_ROLE,
    LABEL_SPEC_HASH,
    MAX_NAME_LEN,
    MAX_REPLICAS,
    ROLE_HOLD,
    ROLE_RELEASE,
    ROLE_REPLICA,
    ROLE_SANDBOX,
    parse_replicas,
    replica_name,
    sandbox_name,
    validate_name,
    validate_replicas,
)
from lbctl.model.options import RunOptions
from lbctl.model.publish import Publish
from lbctl.model.spec import AppSpec, DataPath, Mode, parse_env

__all__ = [
    "LABEL_APP",
    "LABEL_HOLD",
    "LABEL_INDEX",
    "LABEL_MANAGED",
    "LABEL_NETWORK",
    "LABEL_OWNER",
    "LABEL_REVISION",
    "LABEL_ROLE",
    "LABEL_SPEC_HASH",
    "MAX_NAME_LEN",
    "MAX_REPLICAS",
    "ROLE_HOLD",
    "ROLE_RELEASE",
    "ROLE_REPLICA",
    "ROLE_SANDBOX",
    "AppSpec",
    "Container",
    "DataPath",
    "Forbidden",
    "InvalidInput",
    "Mode",
    "Publish",
    "ReplicaState",
    "RunOptions",
    "parse_env",
    "parse_replicas",
    "replica_name",
    "sandbox_name",
    "validate_name",
    "validate_replicas",
]
