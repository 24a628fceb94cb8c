"""Socket activation's names, which the controller (what a replica is created with) and the
data plane (what it is handed) must agree on: where a replica sees the shim and its socket,
and the image label that makes activation an app's default."""

from __future__ import annotations

# An image label that says the image's server takes an inherited listener (systemd's
# LISTEN_FDS, fd 3 on): its apps get socket activation unless they say `activation: false`.
LABEL_LISTEN_FDS = "io.lbctl.listen-fds"

SHIM_IN = "/.lbctl/activate"  # where a replica sees the shim (images/activate)
SOCKET_DIR_IN = "/run/lbctl"  # where a replica sees its socket's directory
SOCKET_NAME = "activation.sock"  # the shim's default socket: SOCKET_DIR_IN/SOCKET_NAME
FIRST_FD = 3  # SD_LISTEN_FDS_START: the shim puts the listeners on 3, 4, ... in order


def declares_listen_fds(labels: dict[str, str] | None) -> bool:
    """Does an image with these labels take an inherited listener?"""
    return (labels or {}).get(LABEL_LISTEN_FDS, "").strip().lower() == "true"
