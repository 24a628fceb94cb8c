"""lbctl: N replicas of a container on one host port, balanced by the kernel."""

__version__ = "0.1.0"
