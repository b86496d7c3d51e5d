"""A Storage Commitment SCP for tests (DCMTK has none): a pynetdicom storage SCP that also answers the Storage
Commitment Push Model, and reports the way a test asks — on the requesting association, on a new association
to the router's listener, or never; committing everything or failing chosen objects; or holding its N-ACTION
response until the test lets it go (to kill the forwarder mid-request).

On the requesting association pynetdicom can only report from inside the N-ACTION handler, i.e. before its
N-ACTION response: the router must (and does) take the report in either order.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_role, evt

from appliance.router.commitment import (
    ACTION_REQUEST_COMMIT,
    EVENT_ALL_COMMITTED,
    EVENT_SOME_FAILED,
    PUSH_MODEL_SOP_CLASS,
    PUSH_MODEL_SOP_INSTANCE,
)
from appliance.router.scu import _requests_only
from tests.support.peers import RUNNING, free_port

SAME = "same association"
NEW = "new association"
NEVER = "never"
NO_SUCH_OBJECT = 0x0112


@dataclass
class Action:
    transaction_uid: str
    uids: list[str]
    report_status: int | None = None  # the router's answer to our N-EVENT-REPORT (None: not sent / none came)


@dataclass
class CommitmentSCP:
    ae_title: str
    report: str = SAME  # SAME | NEW | NEVER
    router: tuple[str, int] | None = None  # (AE title, port) of the router's listener, for NEW
    fail_once: set[str] = field(default_factory=set)  # these SOP Instance UIDs fail their first commitment
    hold_first_action: bool = False  # keep the first N-ACTION unanswered until release()
    port: int = field(default_factory=free_port)
    stored: Counter[str] = field(default_factory=Counter)  # SOP Instance UID → C-STOREs received
    actions: list[Action] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    def start(self) -> CommitmentSCP:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(PUSH_MODEL_SOP_CLASS)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        RUNNING.append(self)
        return self

    def stop(self) -> None:
        self._released.set()
        for t in self._threads:
            t.join(10)
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def release(self) -> None:
        self._released.set()

    # -- handlers ---------------------------------------------------------------------------------
    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.stored[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000

    def _on_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        if event.action_type != ACTION_REQUEST_COMMIT:
            return 0x0123, None  # no such action
        uids = [str(item.ReferencedSOPInstanceUID) for item in info.ReferencedSOPSequence]
        classes = {
            str(item.ReferencedSOPInstanceUID): str(item.ReferencedSOPClassUID) for item in info.ReferencedSOPSequence
        }
        action = Action(str(info.TransactionUID), uids)
        with self._lock:
            first = not self.actions
            self.actions.append(action)
        if first and self.hold_first_action:
            self._released.wait(120)
            return 0x0000, None
        ds = self._report_for(action, classes)
        if self.report == SAME:
            action.report_status = _status(event.assoc.send_n_event_report(ds, *_event_args(ds)))
        elif self.report == NEW:
            t = threading.Thread(target=self._report_on_new_association, args=(action, ds), daemon=True)
            self._threads.append(t)
            t.start()
        return 0x0000, None

    def _report_for(self, action: Action, classes: dict[str, str]) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = action.transaction_uid
        ok, failed = [], []
        with self._lock:
            for uid in action.uids:
                item = Dataset()
                item.ReferencedSOPClassUID = classes[uid]
                item.ReferencedSOPInstanceUID = uid
                if uid in self.fail_once or not self.stored.get(uid):
                    self.fail_once.discard(uid)
                    item.FailureReason = NO_SUCH_OBJECT
                    failed.append(item)
                else:
                    ok.append(item)
        if ok:
            ds.ReferencedSOPSequence = ok
        if failed:
            ds.FailedSOPSequence = failed
        return ds

    def _report_on_new_association(self, action: Action, ds: Dataset) -> None:
        assert self.router is not None, "report on a new association needs router=(AE title, port)"
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(PUSH_MODEL_SOP_CLASS, ImplicitVRLittleEndian)
        role = build_role(PUSH_MODEL_SOP_CLASS, scp_role=True)  # we are the SCP calling the SCU back
        assoc = ae.associate("127.0.0.1", self.router[1], ae_title=self.router[0], ext_neg=[role])
        if not assoc.is_established:
            return
        _requests_only(assoc)  # we only send a request and read its answer (see scu.py)
        try:
            action.report_status = _status(assoc.send_n_event_report(ds, *_event_args(ds)))
        finally:
            assoc.release()


def _event_args(ds: Dataset) -> tuple[int, str, str]:
    event = EVENT_SOME_FAILED if "FailedSOPSequence" in ds else EVENT_ALL_COMMITTED
    return event, PUSH_MODEL_SOP_CLASS, PUSH_MODEL_SOP_INSTANCE


def _status(answer: tuple[Dataset, Any]) -> int | None:
    status_ds = answer[0]
    return int(status_ds.Status) if status_ds is not None and "Status" in status_ds else None
