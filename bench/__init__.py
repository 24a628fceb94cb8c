"""lbctl benchmarks: `python -m bench` (see bench/README.md and bench/RESULTS.md)."""
