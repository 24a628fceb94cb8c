"""The two ways the ebpf data plane fails, in one place because every module of the package
raises them and the reconciler must tell them apart: an EbpfError is lbctl's or the host's
problem (retry the app's sync next pass, keep its containers), a ListenerError is the app's
(it must change: no SO_REUSEPORT, replica outside the sandbox), so it is reported, not
retried."""

from __future__ import annotations

from lbctl.dataplane.sockets import ListenerError

__all__ = ["EbpfError", "ListenerError"]


class EbpfError(RuntimeError):
    """Loading the program, or a map operation, failed.  `summary` is one line for users;
    `detail` holds the loader's stderr (the verifier log) and is part of str(self) too, so a
    log line of the exception shows why the verifier refused."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}\n{detail}" if detail else summary)
        self.summary = summary
        self.detail = detail
