"""`dicom-router send`: a small C-STORE SCU for tests and manual re-sends."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from .dicom_status import Outcome, classify_store_status, describe
from .scu import AssociationFailed, Peer, make_ae, open_association, store_file


@dataclass
class SendReport:
    peer: str
    sent: int = 0
    stored: int = 0
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.sent == self.stored

    def summary(self) -> str:
        s = f"{self.stored}/{self.sent} stored by {self.peer}"
        if self.skipped:
            s += f"; {len(self.skipped)} file(s) skipped (not DICOM)"
        if self.failures:
            s += f"; {len(self.failures)} failed"
        return s

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "sent": self.sent,
            "stored": self.stored,
            "skipped": self.skipped,
            "failures": self.failures,
            "ok": self.ok,
        }


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file())
        else:
            out.append(p)
    return out


def send_paths(own_ae: str, peer: Peer, paths: Iterable[Path]) -> SendReport:
    report = SendReport(peer.describe())
    items: list[tuple[Path, tuple[str, str]]] = []
    for path in _files(paths):
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
            items.append((path, (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))))
        except (InvalidDicomError, AttributeError, OSError, KeyError):
            report.skipped.append(str(path))
    if not items:
        return report
    ae = make_ae(own_ae, peer.timeouts)
    try:
        assoc, accepted = open_association(ae, peer, [cx for _, cx in items])
    except AssociationFailed as exc:
        report.failures.append(str(exc))
        report.sent = len(items)
        return report
    try:
        for path, cx in items:
            report.sent += 1
            if cx not in accepted:
                report.failures.append(f"{path}: {peer.describe()} accepted no context for {cx[0]} / {cx[1]}")
                continue
            status = store_file(assoc, path)
            if status is None:
                report.failures.append(f"{path}: no response (association aborted or timed out)")
                break
            if classify_store_status(status) is Outcome.DELIVERED:
                report.stored += 1
            else:
                report.failures.append(f"{path}: {describe(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return report
