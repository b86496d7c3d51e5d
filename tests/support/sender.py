"""A modality-like C-STORE sender for durability tests: records exactly which objects got Success, and
keeps retrying the rest (reconnecting) while the router is killed and restarted underneath it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, _config

from tests.support.data import sop_instance_uid

_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass
class SendLog:
    attempts: int = 0
    acked: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    no_response: int = 0
    association_failures: int = 0


class RetryingSender:
    def __init__(
        self,
        port: int,
        files: list[Path],
        calling: str = "PYSCU",
        called: str = "DICOM_ROUTER",
        give_up_after: float = 300,
    ):
        self.port = port
        self.files = files
        self.uids = {p: sop_instance_uid(p) for p in files}
        self.calling, self.called = calling, called
        self.log = SendLog()
        self.deadline = time.monotonic() + give_up_after
        self.stop = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RetryingSender:
        self.thread.start()
        return self

    def _associate(self):  # type: ignore[no-untyped-def]
        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.connection_timeout = 2
        import pydicom

        contexts = set()
        for p in self.files:
            meta = pydicom.filereader.read_file_meta_info(p)
            contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        for sop, ts in contexts:
            ae.add_requested_context(sop, ts)
        return ae.associate("127.0.0.1", self.port, ae_title=self.called)

    def _run(self) -> None:
        pending = list(self.files)
        try:
            while pending and not self.stop.is_set() and time.monotonic() < self.deadline:
                assoc = self._associate()
                if not assoc.is_established:
                    self.log.association_failures += 1
                    time.sleep(0.2)
                    continue
                try:
                    while pending and not self.stop.is_set():
                        path = pending[0]
                        self.log.attempts += 1
                        try:
                            rsp = assoc.send_c_store(path)
                        except Exception:
                            rsp = None
                        if rsp is None or "Status" not in rsp:
                            self.log.no_response += 1
                            break  # association died (router killed): reconnect and re-send this one
                        status = int(rsp.Status)
                        self.log.statuses[status] += 1
                        if status == 0:
                            self.log.acked.add(self.uids[path])
                            pending.pop(0)
                        else:
                            pending.append(pending.pop(0))  # refused: try again later
                            time.sleep(0.05)
                finally:
                    if assoc.is_established:
                        assoc.release()
                    else:
                        assoc.abort()
        finally:
            self.done.set()

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)
