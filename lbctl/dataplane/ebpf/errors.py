"""The two ways the ebpf data plane fails, in one place because every module of the package
raises them and the reconciler must tell them apart: an EbpfError is lbctl's or the host's
problem (retry the app's sync next pass, keep its containers), a ListenerError is the app's
(it must change: no SO_REUSEPORT, replica outside the sandbox), so it is reported, not
retried."""

from __future__ import annotations

from lbctl.model.errors import EbpfError, ListenerError

__all__ = ["EbpfError", "ListenerError"]

