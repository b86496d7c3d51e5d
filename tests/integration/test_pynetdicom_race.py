"""pynetdicom 3.0.4: an SCU association's reactor thread can take the C-STORE-RSP that send_c_store waits
for. The window is microseconds wide in real runs (seen in benchmarks: a 120 s stall, then a re-send);
here it is widened deterministically (the reactor is descheduled right after its pause checkpoint and
the sender reaches its blocking read late) to show the race exists and that the router's associations
(scu.open_association) are immune to it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.dimse import DIMSEServiceProvider

from appliance.router.config import Timeouts
from appliance.router.scu import NODELAY_HANDLERS, Peer, make_ae, open_association
from tests.support.data import make_ct_series
from tests.support.peers import StoreSCP

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class _SlowCheckpoint(threading.Event):
    """The association's pause checkpoint, with the reactor thread losing the CPU just after passing it."""

    def __init__(self, assoc: Any):
        super().__init__()
        self.assoc = assoc
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        if threading.current_thread() is self.assoc:
            time.sleep(0.02)
        return passed


@pytest.fixture
def widened_window(monkeypatch: pytest.MonkeyPatch) -> None:
    original = DIMSEServiceProvider.get_msg

    def late_get_msg(self: Any, block: bool = False) -> Any:
        if block:
            time.sleep(0.06)  # the sending thread reaches its blocking read late (a busy process)
        return original(self, block)

    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", late_get_msg)


def _send(assoc: Any, files: list[Path]) -> int:
    assoc._reactor_checkpoint = _SlowCheckpoint(assoc)
    answered = 0
    for path in files:
        rsp = assoc.send_c_store(path)
        if rsp is not None and "Status" in rsp:
            answered += 1
        if not assoc.is_established:
            break
    if assoc.is_established:
        assoc.release()
    return answered


def test_reactor_steals_responses_from_a_plain_association(tmp_path: Path, widened_window: None) -> None:
    files = make_ct_series(tmp_path / "in", 5, rows=32, cols=32)
    scp = StoreSCP(tmp_path, "PACS").start()
    try:
        ae = make_ae("FWD", Timeouts(dimse=1))
        ae.add_requested_context(CT, EXPLICIT_LE)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS", evt_handlers=NODELAY_HANDLERS)
        assert assoc.is_established
        assert _send(assoc, files) < len(files), "the race should cost at least one response here"
    finally:
        scp.stop()


def test_router_associations_are_immune(tmp_path: Path, widened_window: None) -> None:
    files = make_ct_series(tmp_path / "in", 5, rows=32, cols=32)
    scp = StoreSCP(tmp_path, "PACS").start()
    try:
        peer = Peer("PACS_MAIN", "PACS", "127.0.0.1", scp.port, Timeouts(dimse=1))
        assoc, accepted = open_association(make_ae("FWD", peer.timeouts), peer, [(CT, EXPLICIT_LE)])
        assert (CT, EXPLICIT_LE) in accepted
        assert _send(assoc, files) == len(files)
    finally:
        scp.stop()
