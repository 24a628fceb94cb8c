"""The kernel fixtures of the data-plane tests (netns, pin_root, dp) live in ebpf_harness."""

from tests.dataplane.ebpf_harness import dp, netns, pin_root

__all__ = ["dp", "netns", "pin_root"]
