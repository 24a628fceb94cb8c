"""A member of the `lbctl` group for end-to-end tests: a throwaway user of this run's own
(created and removed by the `member` fixture in tests/e2e/conftest.py), who runs the CLI and
raw API requests over the daemon's real socket, so the daemon knows them by SO_PEERCRED as
any other user; and the daemon restarted with a policy file and a socket in a directory
others can traverse (pytest's are 0700)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import PREFIX, ROOT
from harness.daemon import Daemon

GROUP = "lbctl"

# A raw request as the member, for the status code the CLI does not print.
_REQUEST = """
import json, socket, sys
method, path, body = sys.argv[2], sys.argv[3], sys.argv[4].encode()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(method.encode() + b" " + path.encode() + b" HTTP/1.0\\r\\nContent-Type: "
          b"application/json\\r\\nContent-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n"
          + body)
reply = b""
while chunk := s.recv(65536):
    reply += chunk
head, _, payload = reply.partition(b"\\r\\n\\r\\n")
print(json.dumps([int(head.split()[1]), json.loads(payload)]))
"""


@dataclass(frozen=True)
class Member:
    name: str
    uid: int
    gid: int

    def run(self, *argv: str, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """`argv` as this user, with the lbctl group (setpriv reads the user's groups)."""
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *argv],
            capture_output=True, text=True, timeout=180, check=False, cwd="/",
            # This checkout's lbctl, not the one installed in the venv.
            env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
                 **(env or {})})

    def lbctl(self, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "lbctl", "--socket", str(sock), *args)

    def request(self, sock: Path, method: str, path: str, body: Any) -> tuple[int, Any]:
        """One API request as this user: (HTTP status, JSON answer)."""
        r = self.run(sys.executable, "-c", _REQUEST, str(sock), method, path,
                     json.dumps(body))
        assert r.returncode == 0, r.stderr
        status, data = json.loads(r.stdout)
        return int(status), data


def make_member() -> Iterator[Member]:
    """A user of its own for this run, in the lbctl group; removed afterwards."""
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", "--system", GROUP], check=True)  # as `make setup` does
    name = f"lbctl-m{PREFIX}"
    subprocess.run(["userdel", name], capture_output=True, check=False)  # a crashed run's
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "-G", GROUP, name], check=True)
    try:
        ids = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True)
        gid = subprocess.run(["id", "-g", name], capture_output=True, text=True, check=True)
        groups = subprocess.run(["id", "-nG", name], capture_output=True, text=True,
                                check=True).stdout.split()
        assert GROUP in groups, groups
        yield Member(name, int(ids.stdout), int(gid.stdout))
    finally:
        subprocess.run(["userdel", name], check=True)
    assert subprocess.run(["id", name], capture_output=True).returncode != 0


@contextlib.contextmanager
def open_socket_daemon(daemon: Daemon, *flags: str) -> Iterator[Daemon]:
    """The test's daemon again, started with `flags` and its socket in
    /run/lbctl-test-PREFIX, a directory members can traverse (pytest's are root's alone);
    back to how it was afterwards."""
    sock_dir = Path(f"/run/lbctl-test-{PREFIX}")
    sock_dir.mkdir(mode=0o755, exist_ok=True)
    sock_dir.chmod(0o755)
    original = daemon.socket
    daemon.kill(signal.SIGTERM)
    daemon.socket = sock_dir / "lbctl.sock"
    try:
        daemon.start(*flags)
        yield daemon
    finally:
        daemon.kill(signal.SIGTERM)
        daemon.socket = original
        daemon.start()
        with contextlib.suppress(OSError):
            (sock_dir / "lbctl.sock").unlink()
        with contextlib.suppress(OSError):
            sock_dir.rmdir()


@contextlib.contextmanager
def with_policy(daemon: Daemon, policy: Path, *flags: str) -> Iterator[Path]:
    """The test's daemon again, with `policy` given by --policy (as /etc/lbctl/policy.toml
    would be) and its socket where others can traverse (open_socket_daemon)."""
    policy.chmod(0o644)
    with open_socket_daemon(daemon, "--policy", str(policy), *flags):
        st = daemon.socket.stat()
        assert (st.st_mode & 0o777, grp.getgrgid(st.st_gid).gr_name) == (0o660, GROUP)
        yield policy
