"""What the host has in all: the numbers the members' policy takes its ceilings from ("50%" of
the host's PIDs and memory) and the bound a replica's rlimit cannot pass. The daemon reads
them at start (lbctl.runtime.hostfiles.read_host_facts); these defaults, the kernel's own on a
small host, stand in where nothing was read (logic tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostFacts:
    pid_max: int = 32768  # kernel.pid_max: PIDs of the whole host
    mem_total: int = 8 << 30  # bytes of RAM (MemTotal)
    nr_open: int = 1 << 20  # fs.nr_open: no process's nofile limit can be higher
