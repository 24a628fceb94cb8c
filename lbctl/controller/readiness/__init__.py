"""Readiness: which running replicas may take new connections (readiness is not liveness).

- `answers`: how one replica is asked, per mode, protocol and probe kind (a TCP connect to its
  address, an HTTP GET of the app's readiness path, its listener in its own processes, or in
  ebpf mode the GET through its slot);
- `http`: one probe over one socket (connect, GET, the status line, an abortive close);
- `outcome`: what one probe found (passed, or how it failed: readiness or liveness);
- `verdicts`: what a run of results means (ready, unready, unhealthy at the app's thresholds),
  since when, and the last failure;
- `rounds`: which of an app's replicas are asked when, each on its own schedule (the daemon's
  main cost under load).

The worker starts the rounds and hands the verdicts to the planner (planner.Probe).
"""
