"""What leaves for one destination when it is not the spooled file as-is: morphed and/or decompressed.

The spooled original never changes. A job with morph profiles, or whose destination refused the
object's transfer syntax, gets a private copy written under `state_dir/outgoing/` (not the spool's
tmp/, which the receiver clears when it starts), sent from disk like any spooled file, then deleted.
Pixel data is not loaded for a morph alone (read with defer_size); decompression has to load it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from . import splice, transcode
from .morph import Change, MorphFailed, MorphProfile, UidMapper, apply_profiles


class CannotPrepare(Exception):
    """The object cannot be made acceptable for this destination; the message says why and what to do."""


@dataclass
class Prepared:
    path: Path
    changes: list[Change] = field(default_factory=list)
    transfer_syntax: str = ""
    decompressed_from: str | None = None
    sop_instance_uid: str = ""  # as sent: differs from the original when de-identification remaps UIDs


class OutgoingDir:
    """Private copies in flight. Cleared when the forwarder starts: whatever is there belongs to no send."""

    def __init__(self, root: Path):
        self.root = root

    def init(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o770)
        removed = 0
        for leftover in self.root.iterdir():
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def new_path(self) -> Path:
        return self.root / f"{uuid.uuid4().hex}.dcm"


def prepare(
    source: Path,
    out: OutgoingDir,
    *,
    send_syntax: str,
    profile_names: Sequence[str],
    profiles: Mapping[str, MorphProfile],
    uids: UidMapper,
) -> Prepared:
    """Write the copy to send: the source morphed by `profile_names` in order, in `send_syntax`."""
    missing = [name for name in profile_names if name not in profiles]
    if missing:
        raise CannotPrepare(
            f"morph profile(s) {', '.join(missing)} are no longer in the config: restore them, or re-route the job"
        )
    ds = pydicom.dcmread(source, defer_size=4096)
    stored_syntax = str(ds.file_meta.TransferSyntaxUID)
    as_read = dict(ds._dict)  # every top-level element still raw: what the splice copies unchanged
    try:
        changes = apply_profiles(ds, [(name, profiles[name]) for name in profile_names], uids)
    except MorphFailed as exc:
        raise CannotPrepare(str(exc)) from exc
    decompressed_from = None
    if send_syntax != stored_syntax:
        try:
            transcode.decompress(ds, send_syntax)
        except transcode.TranscodeFailed as exc:
            raise CannotPrepare(str(exc)) from exc
        decompressed_from = stored_syntax
    path = out.new_path()
    try:
        if decompressed_from is None and splice.write(ds, as_read, source, path):
            return Prepared(path, changes, send_syntax, None, str(ds.SOPInstanceUID))
        try:
            ds.save_as(path, enforce_file_format=True)
        except (KeyError, ValueError, TypeError):
            # A body encoded as implicit VR under an explicit transfer syntax (some modalities do this) is
            # read without VRs; converting every element once lets pydicom look them up and write it.
            for _ in ds:
                pass
            ds.save_as(path, enforce_file_format=True)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    return Prepared(path, changes, send_syntax, decompressed_from, str(ds.SOPInstanceUID))


def discard(prepared: Prepared | None) -> None:
    if prepared is not None:
        try:
            os.unlink(prepared.path)
        except FileNotFoundError:
            pass


def changes_for_audit(changes: Sequence[Change], limit: int = 40) -> dict[str, Any]:
    """The audit fields for a morph: what changed, as hashes of old and new values — never the values."""
    shown = [
        {"profile": c.profile, "tag": c.keyword, "action": c.action, "old": c.old_sha, "new": c.new_sha}
        for c in changes[:limit]
    ]
    digest = hashlib.sha256(repr([(c.keyword, c.action, c.old_sha, c.new_sha) for c in changes]).encode())
    return {
        "changes": shown,
        "changes_total": len(changes),
        "changes_sha256": digest.hexdigest()[:16],  # identifies the full list when it is cut at `limit`
    }
