"""`lbctl status -w` on a terminal: the table redrawn in place (cursor home, clear, table)
every second until interrupted, showing a scale, a drain and a rollout as they happen."""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness.daemon import LBCTL, Daemon
from harness.host import free_port

pytestmark = pytest.mark.engine

IMAGE = "lbctl/demo:latest"
REDRAW = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen


class Terminal:
    """A command on a pseudo-terminal of its own; everything it draws is kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE,
                                     env={**env, "TERM": "xterm", "COLUMNS": "80"})
        os.close(slave)
        self.out = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            self.out += data

    def frames(self) -> list[str]:
        text = self.out.decode(errors="replace").replace("\r\n", "\n")
        return text.split(REDRAW)[1:]

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        self._reader.join(5)
        os.close(self.master)
        return self.proc.returncode, err.decode()


def seen_in(term: Terminal, pattern: str, timeout: float) -> str:
    """The first frame drawn (within `timeout`) that matches `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in term.frames():
            if re.search(pattern, frame, re.M):
                return frame
        time.sleep(0.1)
    raise AssertionError(f"no frame matched {pattern!r}; last: {term.frames()[-1:]}")


def test_status_watch_redraws_scale_drain_and_rollout(daemon: Daemon, app_name: str) -> None:
    port = free_port()
    daemon.ok("run", app_name, "--image", IMAGE, "-p", f"127.0.0.1:{port}:8080",
              "--replicas", "2", "--mode", "ebpf", "--monitor", "1", timeout=90)
    term = Terminal([*LBCTL, "status", "-w", app_name], daemon.env)
    held: list[socket.socket] = []
    try:
        seen_in(term, rf"^{app_name}\s+ebpf .* 2/2 ready", 10)
        daemon.ok("scale", f"{app_name}=3")
        seen_in(term, rf"^\s+{app_name}-3\s+1 ready", 10)
        # Open connections keep a leaving replica draining (until the drain timeout, 5 s
        # for the test daemon), long enough to be drawn.
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            held.append(s)
        daemon.ok("scale", f"{app_name}=2", "--no-wait")
        drain = seen_in(term, r"^\s+\S+\s+1 draining", 15)
        daemon.ok("update", app_name, "-e", "WATCHED=1", "--no-wait")
        seen_in(term, r"^\s+rollout: progressing to revision 2", 20)
        # The rollout over: two replicas of revision 2, nothing else on the screen.
        done = seen_in(term, rf"^{app_name}\s+ebpf .* 2/2 ready\s+rev 2\n\s+REPLICA.*\n"
                             rf"(\s+{app_name}-\d+\s+2 ready .*\n?){{2}}$", 60)
    finally:
        for s in held:
            s.close()
        code, err = term.interrupt()
    frames = term.frames()
    print(f"\nstatus -w: {len(frames)} frames; drain seen:\n{drain}\nlast:\n{done}\n"
          f"interrupted: exit {code}, stderr {err.strip()!r}")
    # Every draw is a whole table at the top of the screen: nothing scrolls.
    assert all(f.lstrip("\n").startswith(app_name) for f in frames if f.strip()), frames[:3]
    # Ctrl-C is how a watch ends: exit 0, nothing on stderr (as `lbctl logs -f`)
    assert code == 0 and err.strip() == "", (code, err)
