"""The one error type every layer uses for a user's mistake, so that the API can answer it with
a 4xx and the CLI with exit code 2 whatever layer noticed it."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input from a user: reported as one line, exit code 2 / HTTP 400, nothing changed."""


class Forbidden(InvalidInput):
    """Input that is valid but not this caller's to ask for (the members' policy, the daemon's
    caps): HTTP 403, and like any bad input one line, exit code 2, nothing changed. A subclass
    of InvalidInput so that every layer that handles bad input handles this too."""
