"""The one error type every layer uses for a user's mistake, so that the API can answer it with
a 4xx and the CLI with exit code 2 whatever layer noticed it."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input from a user: reported as one line, exit code 2 / HTTP 400, nothing changed."""
