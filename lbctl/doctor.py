"""`lbctl doctor`: every prerequisite, ok or missing, and the fix for what is missing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lbctl.api.client import ApiError, Client, DaemonUnavailable
from lbctl.dataplane import hostnet
from lbctl.dataplane.activation.shim import shim_path, shim_unavailable
from lbctl.dataplane.ebpf import MAX_SLOTS, EbpfDataplane
from lbctl.dataplane.ebpf.probe import PROBE_PORT_BASE
from lbctl.model.errors import EngineError
from lbctl.runtime.engine import Engine
from lbctl.settings import EngineSettings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    problem: str = "MISSING"  # what a failed check is called in the first column
    advice: bool = False  # a failed check that lbctl works without: WARN, exit code unchanged


def _capabilities() -> Check:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                need = {12: "CAP_NET_ADMIN", 19: "CAP_SYS_PTRACE", 21: "CAP_SYS_ADMIN"}
                missing = [n for bit, n in need.items() if not caps >> bit & 1]
                if missing:
                    return Check("privileges", False, "missing " + ", ".join(missing),
                                 "run the daemon as root (the systemd unit does)")
                return Check("privileges", True, "root with NET_ADMIN, SYS_PTRACE, SYS_ADMIN")
    except OSError:
        pass
    return Check("privileges", os.geteuid() == 0, f"euid {os.geteuid()}", "run as root")


def _kernel() -> Check:
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return Check("kernel", False, f"cannot parse {release}")
    ok = (major, minor) >= (5, 14)  # BPF_SK_REUSEPORT_SELECT_OR_MIGRATE and tcp_migrate_req
    return Check("kernel", ok, release, "" if ok else "ebpf mode needs Linux 5.14 or newer")


def _migrate_req() -> Check:
    p = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    if not p.exists():
        return Check("tcp_migrate_req", False, "sysctl missing",
                     "a kernel >= 5.14 is needed for zero-loss drains in ebpf mode")
    return Check("tcp_migrate_req", True, "available (set per app in its sandbox)")


def _probe_ports(text: str | None = None) -> Check:
    """Readiness probes of ebpf apps come from source ports PROBE_PORT_BASE + slot (bpf/
    lbctl_shared.h): a sandbox's own ephemeral range is set below them, but a `--network
    host` app shares the host's, where a local client's connection to the app's own address
    from such a port would be taken for a probe."""
    lo_probe, hi_probe = PROBE_PORT_BASE, PROBE_PORT_BASE + MAX_SLOTS - 1
    name = "ephemeral ports"
    try:
        raw = text if text is not None else \
            Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        lo, hi = (int(x) for x in raw.split())
    except (OSError, ValueError):
        return Check(name, True, "ip_local_port_range unreadable: not checked")
    if hi < lo_probe or lo > hi_probe:
        return Check(name, True, f"{lo}-{hi}, below the readiness probes' {lo_probe}-{hi_probe}")
    return Check(name, False, f"{lo}-{hi} reaches the readiness probes' source ports "
                 f"{lo_probe}-{hi_probe}: a local client of a --network host app in ebpf mode "
                 "may be taken for a probe",
                 'sysctl -w net.ipv4.ip_local_port_range="32768 60999" (and the same in '
                 "/etc/sysctl.d/ to keep it)", problem="WARN", advice=True)


def _iptables() -> Check:
    exe = shutil.which("iptables-restore")
    if not exe:
        return Check("iptables", False, "iptables-restore not found", "apt-get install iptables")
    out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False)
    return Check("iptables", out.returncode == 0, out.stdout.strip() or out.stderr.strip())


def _conntrack() -> Check:
    ok = shutil.which("conntrack") is not None
    return Check("conntrack", ok, "found" if ok else "not found",
                 "" if ok else "apt-get install conntrack (stale UDP flows to removed replicas)")


def _ipv6() -> Check:
    reason = hostnet.ipv6_unavailable_reason()
    if reason is not None:
        return Check("ipv6", False, reason,
                     "IPv4 publishes work without it; for [::] publishes enable IPv6 "
                     "(sysctl net.ipv6.conf.all.disable_ipv6=0) and install iptables")
    fwd = Path("/proc/sys/net/ipv6/conf/all/forwarding")
    forwarding = fwd.read_text().strip() == "1" if fwd.exists() else False
    return Check("ipv6", True,
                 "IPv6 publishes available (lbctl's network `lbctl`, ip6tables); forwarding "
                 + ("on" if forwarding else "off until the engine creates that network")
                 + "; [::1] is never NATed by the kernel, use [::] or a host address")


def _bridge_nf() -> Check:
    state = {4: hostnet.bridge_nf_call(4), 6: hostnet.bridge_nf_call(6)}
    if state[4] is None:
        detail = ("br_netfilter absent: same-bridge clients are masqueraded by lbctl's "
                  "hairpin rules")
    else:
        shown = ", ".join(f"ip{'' if f == 4 else '6'}tables={'1' if on else '0'}"
                          for f, on in state.items())
        detail = (f"bridge-nf-call {shown}: containers calling their own published address "
                  "need hairpin_mode on their bridge port (lbctl sets it on its containers)")
    return Check("bridge netfilter", True, detail)


def _ebpf() -> Check:
    reason = EbpfDataplane.unavailable_reason()
    if reason is None:
        return Check("ebpf (bcc, headers, bpffs)", True, "ebpf mode available")
    return Check("ebpf (bcc, headers, bpffs)", False, reason,
                 "installed from the package: `dpkg-reconfigure lbctl` links Debian's "
                 "linux-headers tree for a kernel that ships none (after booting another "
                 "kernel too), or install linux-headers-$(uname -r); from source: `make "
                 "setup`. iptables mode works meanwhile")


def _activation() -> Check:
    """The shim activated apps' replicas run (the default place; `lbctl daemon
    --activation-shim` may name another). Without it apps take the sandbox path: advice."""
    shim = shim_path()
    why = shim_unavailable(shim)
    if why is None:
        return Check("socket activation", True, f"shim {shim}")
    return Check("socket activation", False, why,
                 "installed from the package it is /usr/lib/lbctl/activate; from source: "
                 "`make setup` (scripts/build-images.sh builds it). Apps use the sandbox path "
                 "meanwhile", problem="WARN", advice=True)


def _keeps_containers(flavor: str, info: dict[str, object]) -> Check:
    """Whether the engine's containers outlive a restart of the engine (an upgrade of its
    package restarts it): without that, every replica stops with it and requests fail until
    lbctl has started them again."""
    name = "engine restarts"
    if flavor == "podman":
        return Check(name, True, "Podman runs no daemon that containers depend on (conmon "
                                 "keeps each one): restarting its API service stops none")
    if info.get("LiveRestoreEnabled"):
        return Check(name, True, "containers keep running while dockerd restarts "
                                 "(live-restore): an engine upgrade loses no request")
    return Check(name, False, "live-restore is off: restarting or upgrading dockerd stops "
                              "every replica, and requests fail until lbctl restarts them",
                 'add "live-restore": true to /etc/docker/daemon.json, then '
                 "`systemctl reload docker` (applied without a restart)",
                 problem="WARN", advice=True)


async def _daemon_ports(sock: Path) -> list[Check]:
    """The daemon's apps whose host port something else took while the daemon was down:
    lbctl's rule still sends them the traffic, so the other process serves nothing."""
    try:
        async with Client(sock) as client:
            apps = (await client.request("GET", "/apps"))["apps"]
    except (DaemonUnavailable, ApiError) as e:
        return [Check("lbctl daemon", True, f"not checked: {e}")]
    out = [Check(f"host port of {a['name']}", False, str(a["port_conflict"]),
                 "stop that process, or move it to another port: lbctl takes the port back "
                 "within 5 s", problem="TAKEN") for a in apps if a.get("port_conflict")]
    return out or [Check("lbctl daemon", True, f"{len(apps)} app(s), every host port held")]


async def run_doctor(docker_host: str | None = None, socket: Path | None = None) -> int:
    checks: list[Check] = []
    sync_checks: list[Callable[[], Check]] = [
        _capabilities, _kernel, _migrate_req, _iptables, _conntrack, _ipv6, _bridge_nf, _ebpf,
        _activation, _probe_ports,
    ]
    checks.extend(f() for f in sync_checks)
    engine = Engine(EngineSettings(docker_host=docker_host))
    try:
        info = await engine.version()
        checks.append(Check("container engine", True,
                            f"{engine.flavor} {info.get('Version')} at {engine.url}"))
        checks.append(_keeps_containers(engine.flavor, await engine.info()))
        has_pause = await engine.image_exists("lbctl/pause:latest")
        checks.append(Check("sandbox image", has_pause, "lbctl/pause:latest",
                            "" if has_pause else "`docker load -i /usr/share/lbctl/images/"
                            "pause.tar` (the package's), or `make setup` (builds it)"))
    except EngineError as e:
        checks.append(Check("container engine", False, str(e),
                            "start dockerd (or podman system service) or pass --docker-host"))
    finally:
        await engine.close()
    if EbpfDataplane.unavailable_reason() is None:
        with tempfile.TemporaryDirectory() as tmp:
            err = await EbpfDataplane(Path(tmp), Path(tmp) / "pins").check_program()
        checks.append(Check("eBPF program (verifier)", err is None,
                            "loads and passes the verifier" if err is None else err))
    if socket is not None:
        checks.extend(await _daemon_ports(socket))
    for c in checks:
        mark = "ok" if c.ok else c.problem
        print(f"{mark:<7} {c.name:<28} {c.detail}")
        if not c.ok and c.fix:
            print(f"        fix: {c.fix}")
    return 0 if all(c.ok or c.advice for c in checks) else 1
