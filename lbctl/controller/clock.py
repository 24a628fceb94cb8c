"""The controller's clock: the event loop's. Its sleeps, timeouts and waits already run on
the loop's time, so a deadline the controller computes from the same clock agrees with them;
and a test that runs the loop on virtual time (looptime) runs the controller on it whole,
without patching anything. In the daemon the loop's time is time.monotonic().
"""

from __future__ import annotations

import asyncio


def monotonic() -> float:
    """Seconds on the running event loop's clock (monotonic; only differences mean much)."""
    return asyncio.get_running_loop().time()
