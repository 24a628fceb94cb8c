"""Socket activation in the controller, on fakes: which apps get it (the image's label at
admission, stored for good), what an activated replica is created with and when its socket
is served, when it is ready, and what `status` says. (tests/e2e/test_activation.py runs it
on the real engine and kernel.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lbctl.model import InvalidInput
from lbctl.model.activation import LABEL_LISTEN_FDS, SHIM_IN
from lbctl.model.spec import Mode
from tests.controller.fakes import FakeActivation, FakeEngine, Harness, harness, spec

LABELLED = "img:2"


def activated(tmp_path: Path, e: FakeEngine, activation: FakeActivation | None = None
              ) -> Harness:
    """A harness whose ebpf fake hands out probe sockets: an activated replica is ready once
    a connection through its slot was accepted (FakeActivation.accepts says whether)."""
    h = harness(tmp_path, e) if activation is None else harness(tmp_path, e,
                                                                activation=activation)
    h.ebpf.probe_sockets = True
    return h


def engine() -> FakeEngine:
    e = FakeEngine()
    e.image_labels[LABELLED] = {LABEL_LISTEN_FDS: "true"}
    return e


async def test_the_images_label_decides_at_admission_and_the_app_keeps_the_answer(
        tmp_path: Path) -> None:
    h = activated(tmp_path, engine())
    await h.apps.apply([
        spec("lab", image=LABELLED, mode=Mode.EBPF),
        spec("plain", image="img:1", mode=Mode.EBPF, port=18001),
        spec("off", image=LABELLED, mode=Mode.EBPF, port=18002, activation=False),
        spec("ipt", image=LABELLED, mode=Mode.IPTABLES, port=18003),
        spec("host", image=LABELLED, mode=Mode.EBPF, port=18004,
             publish="127.0.0.1:18004:18004", network=["host"]),
    ])
    got = {n: h.apps.spec(n).activation for n in ("lab", "plain", "off", "ipt", "host")}
    assert got == {"lab": True, "plain": False, "off": False, "ipt": False, "host": False}
    assert h.apps.spec("lab").path == "activation" and h.apps.spec("plain").path == "sandbox"
    # An image without the label later (or a file that does not say) changes nothing.
    await h.apps.apply([spec("lab", image="img:1", mode=Mode.EBPF)])
    assert h.apps.spec("lab").activated and h.apps.spec("lab").image == "img:1"


async def test_changing_the_path_is_refused_like_the_mode(tmp_path: Path) -> None:
    h = activated(tmp_path, engine())
    await h.apps.apply([spec("web", image=LABELLED, mode=Mode.EBPF)])
    before = h.apps.spec("web")
    with pytest.raises(InvalidInput, match=r"runs with socket activation.*lbctl rm"):
        await h.apps.apply([spec("web", image=LABELLED, mode=Mode.EBPF, activation=False)])
    await h.apps.apply([spec("plain", image="img:1", mode=Mode.EBPF, port=18001)])
    with pytest.raises(InvalidInput, match="runs without socket activation"):
        await h.apps.apply([spec("plain", image="img:1", mode=Mode.EBPF, port=18001,
                                 activation=True)])
    assert h.apps.spec("web") == before


async def test_asked_for_where_it_cannot_be_is_one_line_and_the_label_falls_back(
        tmp_path: Path) -> None:
    act = FakeActivation()
    act.why = "the socket-activation shim /x is missing"
    h = activated(tmp_path, engine(), activation=act)
    with pytest.raises(InvalidInput, match=r"not available here.*shim /x is missing"):
        await h.apps.apply([spec("web", mode=Mode.EBPF, activation=True)])
    assert "web" not in h.apps.state.apps
    await h.apps.apply([spec("lab", image=LABELLED, mode=Mode.EBPF)])
    assert h.apps.spec("lab").activation is False  # the sandbox path, where it works


async def test_an_activated_replica_is_created_behind_the_shim_with_its_socket_served_first(
        tmp_path: Path) -> None:
    h = activated(tmp_path, engine())
    await h.start()
    try:
        await h.apps.apply([spec("web", 3, image=LABELLED, mode=Mode.EBPF)])
        await h.until(lambda: h.ebpf.tables.get("web") == ["web-1", "web-2", "web-3"])
        assert h.activation.served["web"] == {"web-1", "web-2", "web-3"}
        req = h.engine.requests["web-1"]
        assert req.options.entrypoint == (SHIM_IN,) and tuple(req.command) == ("/httpd",
                                                                                "--serve")
        assert req.join is None  # no sandbox: a container of its own
        assert not any(f.c.role == "sandbox" for f in h.engine.containers.values())
        assert h.rules.backends("web") == [] and "web" not in h.hostrules.apps()  # no DNAT
        st = (await h.status.report("web"))[0]
        assert st["path"] == "activation" and st["ready"] == 3
        assert {r["listener"] for r in st["replicas"]} == {"held"}
        # Scaling down: the leaver's socket goes with its container.
        await h.apps.scale("web", 1)
        await h.until(lambda: h.activation.served["web"] == {"web-1"}, what="sockets kept")
        await h.apps.delete("web")
        await h.apps.wait_gone("web", 5)
        assert h.activation.removed == ["web"] and "web" not in h.activation.served
    finally:
        await h.stop()


async def test_a_replica_that_did_not_take_its_listener_is_never_steered_to(
        tmp_path: Path) -> None:
    h = activated(tmp_path, engine())
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, image=LABELLED, mode=Mode.EBPF)])
        await h.until(lambda: h.ebpf.tables.get("web") == ["web-1", "web-2"])
        w = h.controller.worker("web")
        assert w is not None
        # web-2's image binds its own port instead: it is out, and the app says why.
        [two] = [c for c in h.engine.running("web") if c.name == "web-2"]
        assert two.pid is not None
        h.activation.not_taken.add(two.pid)
        await h.until(lambda: w.view.error is not None, 10, "the app's error")
        await h.until(lambda: h.ebpf.tables.get("web") == ["web-1"], 10, "web-2 out")
        assert "web-2 did not take the listener" in (w.view.error or "")
        # The listeners it holds unused were shut down, once.
        await h.until(lambda: len(h.activation.shut) >= 1)
        assert h.activation.shut == [(two.pid, 18000, "tcp")]
        st = (await h.status.report("web"))[0]
        assert {r["name"]: r["listener"] for r in st["replicas"]} == {
            "web-1": "held", "web-2": "not taken"}
        assert "did not take" in next(r["note"] for r in st["replicas"] if r["name"] == "web-2")
    finally:
        await h.stop()


async def test_a_replica_whose_listeners_are_not_in_the_map_is_not_ready(
        tmp_path: Path) -> None:
    h = activated(tmp_path, engine())
    h.ebpf.lost.add("web-2")  # its shim has not asked yet
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, image=LABELLED, mode=Mode.EBPF)])
        await h.until(lambda: h.ebpf.tables.get("web") == ["web-1"])
        st = (await h.status.report("web"))[0]
        assert {r["name"]: r["listener"] for r in st["replicas"]} == {
            "web-1": "held", "web-2": "none"}
        h.ebpf.lost.clear()  # handed over
        await h.until(lambda: h.ebpf.tables.get("web") == ["web-1", "web-2"], 5, "web-2 in")
    finally:
        await h.stop()


async def test_holding_the_listener_is_not_serving_it_a_replica_is_ready_once_it_accepts(
        tmp_path: Path) -> None:
    """An image that ignores LISTEN_FDS holds the listeners unused until it binds its own port
    (a JVM: seconds later), and one that takes them may not accept yet: neither is ready, both
    are kept (readiness, not liveness). The accept is asked once: then the probe decides."""
    h = activated(tmp_path, engine())
    h.activation.accepting = False
    await h.start()
    try:
        await h.apps.apply([spec("web", 2, image=LABELLED, mode=Mode.EBPF)])
        await h.until(lambda: len(h.activation.accept_checks) >= 6, 10, "asked, and again")
        assert not h.ebpf.tables.get("web")
        st = (await h.status.report("web"))[0]
        # never ready yet: starting, the probe says why
        assert {r["name"]: r["state"] for r in st["replicas"]} == {
            "web-1": "starting", "web-2": "starting"}, st
        assert all("not accepted" in str(r["probe"]) for r in st["replicas"]), st["replicas"]
        ids = sorted(c.id for c in h.engine.running("web"))
        h.activation.accepting = True  # they accept now
        await h.until(lambda: h.ebpf.tables.get("web") == ["web-1", "web-2"], 5, "both in")
        assert sorted(c.id for c in h.engine.running("web")) == ids  # kept, not replaced
        checks = len(h.activation.accept_checks)
        await asyncio.sleep(5)
        assert len(h.activation.accept_checks) == checks, "asked again after it accepted"
    finally:
        await h.stop()
