"""Spec -> create requests: which container gets which option, and where each one sits on
the engine's networks (one function decides)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lbctl.controller.template import (
    Activation,
    attachment,
    replica_request,
    run_argv,
    sandbox_request,
)
from lbctl.model import AppSpec, InvalidInput
from lbctl.model.activation import SHIM_IN, SOCKET_DIR_IN
from lbctl.model.options import RunOptions
from lbctl.model.runtime import ImageFacts
from lbctl.settings import LimitSettings, WorkerSettings

PIDS = LimitSettings().default_pids_limit
SANDBOX = WorkerSettings().sandbox_image


def spec(mode: str, **opts: Any) -> AppSpec:
    return AppSpec.from_json({"name": "web", "image": "lbctl/demo", "publish": "8080:8080",
                              "mode": mode, **opts})  # opts may replace publish


OPTS: dict[str, Any] = {"network": ["backend", "front"], "add-host": ["db2:10.0.0.5"],
                        "dns": ["10.0.0.53"], "memory": "64m", "volume": ["data:/data"],
                        "label": {"team": "web"}}


def test_iptables_replicas_carry_every_option_and_join_every_network() -> None:
    s = spec("iptables", **OPTS)
    req = replica_request(s, 2, s.spec_hash(), 3, None, PIDS)
    assert req.options == replace(s.options, pids_limit=PIDS)
    assert tuple(req.networks) == ("backend", "front") and tuple(req.aliases) == ("web",)
    assert req.labels["lbctl.network"] == "backend"  # the DNAT target: the first network
    assert req.labels["lbctl.spec-hash"] == s.spec_hash()
    assert req.env["LBCTL_REPLICA"] == "web-2"


def test_ebpf_namespace_options_go_on_the_sandbox_the_rest_on_replicas() -> None:
    s = spec("ebpf", **OPTS)
    rep = replica_request(s, 1, s.spec_hash(), 1, "sandbox-id", PIDS)
    assert rep.join == "sandbox-id" and not rep.networks and not rep.aliases
    assert rep.options.network == () and rep.options.dns == () and rep.options.add_host == ()
    assert rep.options.memory == "64m" and rep.options.volume == ("data:/data",)
    assert "lbctl.network" not in rep.labels
    sb = sandbox_request(s, SANDBOX)
    assert tuple(sb.networks) == ("backend", "front") and sb.labels["lbctl.network"] == "backend"
    assert sb.options == RunOptions(add_host=("db2:10.0.0.5",), dns=("10.0.0.53",))
    assert sb.sysctls == {"net.ipv4.tcp_migrate_req": "1",
                          "net.ipv4.ip_local_port_range": "32768 60999"}


def test_default_network_has_no_alias_and_no_recorded_name() -> None:
    """The engine's default network is its only one, and Podman does not call it bridge:
    a replica there is found by its one address, as before networks could be named."""
    s = spec("iptables")
    a = attachment(s)
    assert (a.networks, a.target, a.aliases) == (("bridge",), None, ())
    assert "lbctl.network" not in replica_request(s, 1, s.spec_hash(), 1, None, PIDS).labels
    assert "lbctl.network" not in sandbox_request(spec("ebpf"), SANDBOX).labels
    named = attachment(spec("iptables", network=["bridge", "backend"]))
    assert (named.target, named.aliases) == ("bridge", ("web",))


def test_a_replica_gets_the_default_pids_limit_unless_its_spec_sets_one() -> None:
    """A fork bomb in one replica must not take every PID of the host; the default is not
    part of the spec, so its hash (and what runs) does not change with it."""
    plain, own = spec("iptables"), spec("iptables", **{"pids-limit": 100})
    assert replica_request(plain, 1, plain.spec_hash(), 1, None, PIDS).options.pids_limit == 2048
    assert replica_request(own, 1, own.spec_hash(), 1, None, PIDS).options.pids_limit == 100
    assert replica_request(plain, 1, plain.spec_hash(), 1, None, 500).options.pids_limit == 500
    assert replica_request(plain, 1, plain.spec_hash(), 1, None, None).options.pids_limit is None
    ebpf = spec("ebpf")
    assert replica_request(ebpf, 1, ebpf.spec_hash(), 1, "sb", PIDS).options.pids_limit == 2048
    assert sandbox_request(ebpf, SANDBOX).options.pids_limit is None
    assert "pids-limit" not in plain.to_json() and plain.spec_hash() == spec("iptables").spec_hash()


# ---- socket activation --------------------------------------------------------------------

SHIM, SOCKS = Path("/usr/lib/lbctl/activate"), Path("/var/lib/lbctl/activation/web/web-1")


def activation(entrypoint: tuple[str, ...] = ("/httpd",), cmd: tuple[str, ...] = ("--serve",),
               ) -> Activation:
    return Activation(SHIM, SOCKS, ImageFacts({}, entrypoint, cmd), 30)


def test_an_activated_replica_runs_the_images_command_behind_the_shim() -> None:
    s = spec("ebpf", activation=True, **OPTS)
    req = replica_request(s, 1, s.spec_hash(), 1, None, PIDS, activation())
    assert req.options.entrypoint == (SHIM_IN,)
    assert tuple(req.command) == ("/httpd", "--serve")  # the image's ENTRYPOINT + CMD
    # The shim and the replica's socket dir, read-only, after the app's own volumes.
    assert req.options.volume == ("data:/data", f"{SHIM}:{SHIM_IN}:ro",
                                  f"{SOCKS}:{SOCKET_DIR_IN}:ro")
    assert req.env["LBCTL_ACTIVATION_TIMEOUT"] == "30"
    # A container of its own on the app's networks: no sandbox to join, every option its
    # own (the namespace's too), and no DNAT target to record.
    assert req.join is None and tuple(req.networks) == ("backend", "front")
    assert req.options.dns == ("10.0.0.53",) and req.options.memory == "64m"
    assert "lbctl.network" not in req.labels
    assert "LBCTL_ACTIVATION_TIMEOUT" not in replica_request(
        s, 1, s.spec_hash(), 1, None, PIDS).env  # without the hand-over: as before


def test_the_shims_arguments_follow_the_engines_rules_for_entrypoint_and_command() -> None:
    img = ImageFacts({}, ("/entry.sh",), ("serve", "--port", "80"))
    assert run_argv(None, (), img) == ("/entry.sh", "serve", "--port", "80")
    assert run_argv(None, ("migrate",), img) == ("/entry.sh", "migrate")  # command: a new CMD
    assert run_argv(("/bin/app",), (), img) == ("/bin/app",)  # --entrypoint drops the CMD
    assert run_argv(("/bin/app",), ("-v",), img) == ("/bin/app", "-v")
    assert run_argv(None, (), ImageFacts({}, (), ("nginx", "-g", "daemon off;"))) == (
        "nginx", "-g", "daemon off;")
    s = spec("ebpf", activation=True, entrypoint=["/bin/app"], command=["-v"])
    req = replica_request(s, 1, s.spec_hash(), 1, None, PIDS, activation())
    assert (req.options.entrypoint, tuple(req.command)) == ((SHIM_IN,), ("/bin/app", "-v"))


def test_an_image_that_runs_nothing_cannot_be_activated() -> None:
    s = spec("ebpf", activation=True)
    with pytest.raises(InvalidInput, match="no entrypoint or command"):
        replica_request(s, 1, s.spec_hash(), 1, None, PIDS, activation((), ()))


def test_an_activated_app_with_ipv6_needs_no_ipv6_network_of_its_own() -> None:
    """Its IPv6 listeners are the host's: the replicas stay on the default bridge."""
    pubs = ["0.0.0.0:80:8080", "[::]:80:8080"]
    assert attachment(spec("ebpf", publish=pubs)).own
    a = attachment(spec("ebpf", publish=pubs, activation=True))
    assert (a.networks, a.target, a.own) == (("bridge",), None, False)
