"""Readiness: which running replicas may take new connections, in three parts.

- `answers`: how one replica is asked, per mode and protocol (a TCP connect to its address, or
  its listener in its own processes in ebpf mode);
- `verdicts`: what a run of answers means (ready, or unhealthy after failures in a row), and
  since when;
- `rounds`: which of an app's replicas are asked in a round, and how often (the daemon's main
  cost under load).

The worker runs the rounds and hands the verdicts to the planner (planner.Probe).
"""
