"""The errors every layer raises and the controller tells apart: a user's mistake
(InvalidInput, Forbidden: a 4xx and exit code 2 whatever layer noticed it), the engine's
failure (EngineError), the eBPF data plane's (EbpfError: lbctl's or the host's problem, retried)
and the app's own (ListenerError: its listener cannot be used, reported, not retried). They
live in the model so that the controller can catch them without importing an adapter."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input from a user: reported as one line, exit code 2 / HTTP 400, nothing changed.

    One line by construction: a message quotes what the user sent, which may hold a newline
    or a terminal's escape codes (a field named "\n", a 64 KiB value), so control characters
    are shown escaped and a message is cut at MAX_LINE characters."""

    MAX_LINE = 400

    def __init__(self, message: object = "") -> None:
        text = str(message)
        if not text.isprintable():
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        if len(text) > self.MAX_LINE:
            text = text[: self.MAX_LINE - 3] + "..."
        super().__init__(text)


class Forbidden(InvalidInput):
    """Input that is valid but not this caller's to ask for (the members' policy, the daemon's
    caps): HTTP 403, and like any bad input one line, exit code 2, nothing changed. A subclass
    of InvalidInput so that every layer that handles bad input handles this too."""


class EngineError(RuntimeError):
    """The engine refused a request, could not be reached or did not answer in time."""


class ImageNotFound(EngineError):
    pass


class EbpfError(RuntimeError):
    """Loading the program, or a map operation, failed.  `summary` is one line for users;
    `detail` holds the loader's stderr (the verifier log) and is part of str(self) too, so a
    log line of the exception shows why the verifier refused."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}\n{detail}" if detail else summary)
        self.summary = summary
        self.detail = detail


class ListenerError(RuntimeError):
    """The replica's listener cannot be used in ebpf mode: one line, user-facing."""


class NotFound(LookupError):
    """No app of that name: HTTP 404, exit code 2."""


class Conflict(RuntimeError):
    """A change that cannot be applied to the app as it is now, through no fault of its input:
    the app it was judged on changed meanwhile in a way the change cannot be carried over to
    (or it was created meanwhile, by another request). HTTP 409, one line; nothing changed."""
