"""What the test suite (tests/) and the benchmarks (bench/) both drive: a real lbctl daemon,
real HTTP traffic and wrk, the container engines' CLIs, and the host they share.

It lives outside both so that neither imports the other: tests/bench may test the benchmark,
but the benchmark never depends on the test suite. The modules:

- harness.host: the host lock every daemon-starting run holds, free ports, iptables-save
- harness.daemon: a real `lbctl daemon` on a private socket, state dir and pin root
- harness.traffic: HTTP requests to an app (one, a spread, a timed background load)
- harness.wrk: wrk runs and the one parser of wrk's report
- harness.engine: the Docker / Podman CLIs and cleanup of what this process made
- harness.activation: socket activation's shim and labelled demo image, from this checkout
- harness.images: this checkout's demo server as an image (tagged by its source's hash)
- harness.machine: a machine with systemd as PID 1 and an engine of its own, in a container,
  to install the Debian package on
- harness.swarm: a Docker engine of the test's own in its own network namespace, as a swarm
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the source tree (repo root)
# Apps (and the default bpf pin root) this process makes are named `t<pid>-...`, so cleanup
# finds exactly those and not another run's.
PREFIX = f"t{os.getpid() % 10000}"
