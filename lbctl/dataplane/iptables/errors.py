"""IptablesError: a sync step failed; the message is one line, and the caller retries with a
full sync.  In a module of its own because every module of the package that does I/O raises
it."""

from __future__ import annotations

__all__ = ["IptablesError", "RestoreError"]


class IptablesError(RuntimeError):
    """A sync step failed; the message is one line. The caller retries with a full sync."""


class RestoreError(IptablesError):
    """`iptables-restore` refused the transaction (nothing of it was applied): what it said,
    for quarantine.blame() to find whose rules it was."""

    def __init__(self, message: str, detail: str, stderr: str) -> None:
        super().__init__(message)
        self.detail = detail  # one line: iptables' words and the line they name
        self.stderr = stderr
