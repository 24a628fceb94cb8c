"""IptablesError: a sync step failed; the message is one line, and the caller retries with a
full sync.  In a module of its own because every module of the package that does I/O raises
it."""

from __future__ import annotations

__all__ = ["IptablesError"]


class IptablesError(RuntimeError):
    """A sync step failed; the message is one line. The caller retries with a full sync."""
