"""`dicom-router conformance`: the DICOM Conformance Statement, in the structure of PS3.2 Annex A, generated
from the code itself so it cannot drift from what the router does on the wire.

Where each fact comes from:
  SOP classes, transfer syntaxes, roles, PDU size, association limits, implementation UID and version name
      the receiver's AE exactly as `Receiver.build_ae()` builds it (its supported presentation contexts)
  what the forwarder proposes                    forwarder._proposals() over every syntax the receiver accepts
  Verification SCU                               scu.py's context (pynetdicom's build_context)
  storage status handling                        dicom_status.classify_store_status()
  Storage Commitment Push Model                  the receiver's AE (report on a new association) and the
                                                 commitment module (request on the forwarder's association)
  TLS profile                                    tls.py (versions, cipher suites) and tls_ca.py (keys, validity)
  settings, their defaults and meanings          the pydantic models in config.py / config_trust.py
  character sets                                 pydicom's table of Specific Character Set terms

The output is deterministic (no dates; the product version comes from the installed distribution, i.e.
pyproject.toml): tests/unit/test_conformance.py regenerates it and fails when docs/conformance-statement.md
is stale. Without --config it describes the product with default settings; with --config, one site.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .config import RouterConfig

DISTRIBUTION = "dicom-router-appliance"
DEFAULT_OUTPUT = Path("docs/conformance-statement.md")
REGENERATE = f"dicom-router conformance --output {DEFAULT_OUTPUT}"


class ConformanceError(Exception):
    """The statement cannot be generated from the code as it is; the message says what is missing."""


# -- facts gathered from the code ----------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """One supported or proposed presentation context, in the words of PS3.2's tables."""

    uid: str
    name: str
    transfer_syntaxes: tuple[str, ...]
    role: str
    extended: str = "None"


@dataclass(frozen=True)
class Commitment:
    """Storage Commitment Push Model as the router uses it (SCU)."""

    request_context: Context  # proposed by the forwarder for the N-ACTION
    report_context: Context | None  # accepted by the receiver for a report on a new association
    instance_uid: str
    roles: str
    failure_reasons: tuple[tuple[str, str], ...]
    max_per_request: int


@dataclass(frozen=True)
class TlsProfile:
    versions: tuple[str, ...]
    ciphers_tls12: tuple[str, ...]
    ciphers_tls13: tuple[str, ...]
    disabled: tuple[str, ...]  # TLS features switched off (compression, renegotiation)
    key_types: tuple[str, ...]
    ca_days: int
    node_days: int
    handshake_timeout: float


@dataclass(frozen=True)
class Facts:
    product_version: str
    pynetdicom_version: str
    pydicom_version: str
    implementation_class_uid: str
    implementation_version_name: str
    max_pdu_inbound: int
    max_associations_inbound: int
    storage: tuple[Context, ...]  # accepted by the receiver (SCP); proposed by the forwarder (SCU)
    other_accepted: tuple[Context, ...]  # Verification SCP and anything else the receiver accepts
    verification_scu: Context
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...]  # stored syntax → what the forwarder also proposes
    status_handling: tuple[tuple[str, str, str], ...]  # (code(s), meaning, what the forwarder does)
    commitment: Commitment
    tls: TlsProfile
    character_sets: tuple[str, ...]


def _sop_name(uid: str) -> str:
    """The SOP class or transfer syntax name from pydicom's dictionary, else from pynetdicom's keyword."""
    from pydicom.uid import UID

    name = UID(uid).name
    if name != uid:
        return str(name)
    import pynetdicom.sop_class as sop

    keyword = next((k for k, v in sop._STORAGE_CLASSES.items() if v == uid), None)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword) if keyword else uid


def receiver_ae(cfg: RouterConfig) -> Any:
    """The receiver's AE built by the receiver's own code, without its spool, queue or sockets."""
    from .receiver import Receiver

    receiver = object.__new__(Receiver)  # build_ae() reads only the config
    receiver.cfg = cfg
    try:
        return receiver.build_ae()
    except AttributeError as exc:
        raise ConformanceError(
            f"Receiver.build_ae() now needs more than the config ({exc}): give conformance.receiver_ae() "
            "what it needs so the statement is still built from the receiver's own AE"
        ) from None


def _acceptor_role(cx: Any) -> tuple[str, str]:
    """(the router's role, extended negotiation) for a context the receiver accepts.

    pynetdicom's acceptor: with scu_role/scp_role unset, role selection proposals are ignored and the
    router is the SCP; scp_role=True accepts a caller that takes the SCP role (the router is then the SCU)."""
    if cx.scu_role is None and cx.scp_role is None:
        return "SCP", "None"
    roles = []
    if cx.scp_role:
        roles.append("SCU (the caller takes the SCP role)")
    if cx.scu_role:
        roles.append("SCP")
    return " and ".join(roles) or "none", "SCP/SCU Role Selection"


def _accepted(ae: Any) -> tuple[list[Context], list[Context]]:
    from pynetdicom.sop_class import StorageServiceClass, uid_to_service_class

    storage: list[Context] = []
    other: list[Context] = []
    for cx in ae.supported_contexts:
        uid = str(cx.abstract_syntax)
        role, extended = _acceptor_role(cx)
        row = Context(uid, _sop_name(uid), tuple(str(ts) for ts in cx.transfer_syntax), role, extended)
        (storage if uid_to_service_class(uid) is StorageServiceClass else other).append(row)
    return sorted(storage, key=lambda c: (c.name, c.uid)), sorted(other, key=lambda c: (c.name, c.uid))


def _fallbacks(syntaxes: Iterable[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    from .forwarder import _proposals

    probe = "1.2.840.10008.5.1.4.1.1.2"  # any storage class: the proposals depend on the syntax only
    return tuple((ts, tuple(t for _, t in _proposals(probe, ts)[1:])) for ts in syntaxes)


def _status_handling() -> tuple[tuple[str, str, str], ...]:
    from .dicom_status import Outcome, Status, classify_store_status, meaning

    does = {
        Outcome.DELIVERED: "job done; the warning status is kept in the job's history",
        Outcome.RETRY: "retried with exponential backoff (node retry policy)",
        Outcome.PERMANENT: "job failed at once; waits for an operator (retry, re-route or cancel)",
    }
    success = "job done (with storage commitment: committed when the report says so)"
    rows = [
        (f"0x{s.value:04X}", meaning(s.value), success if s is Status.SUCCESS else does[classify_store_status(s.value)])
        for s in Status
    ]
    for low, high in ((0xA700, 0xA7FF), (0xA900, 0xA9FF), (0xB000, 0xBFFF), (0xC000, 0xCFFF)):
        rows.append((f"0x{low:04X}-0x{high:04X}", meaning(low + 1), does[classify_store_status(low + 1)]))
    rows.append(("any other", meaning(0xFFFF), does[classify_store_status(0xFFFF)]))
    return tuple(rows)


_COMMITMENT_NAMES = ("CONTEXT", "PUSH_MODEL_SOP_INSTANCE", "ROLES", "FAILURE_REASONS", "MAX_PER_REQUEST")


def _commitment(other_accepted: Sequence[Context]) -> Commitment:
    """The request side comes from the commitment module's constants, the report side from the receiver's AE."""
    try:
        from . import commitment
    except ImportError as exc:
        raise ConformanceError(
            f"appliance/router/commitment.py cannot be imported ({exc}): the statement reports Storage "
            "Commitment from it — restore it (or, if the feature was removed, remove it from conformance.py)"
        ) from None
    missing = [name for name in _COMMITMENT_NAMES if not hasattr(commitment, name)]
    if missing:
        raise ConformanceError(
            f"appliance/router/commitment.py no longer defines {', '.join(missing)}: the conformance statement "
            "reads the Storage Commitment facts from these constants"
        )
    uid, syntax = commitment.CONTEXT
    request = Context(uid, _sop_name(uid), (str(syntax),), "SCU")
    report = next((c for c in other_accepted if c.uid == uid), None)
    if report is not None:  # the router only takes N-EVENT-REPORTs there: it is the SCU, whatever roles it accepts
        report = replace(report, role="SCU (receives the N-EVENT-REPORT)")
    return Commitment(
        request,
        report,
        instance_uid=str(commitment.PUSH_MODEL_SOP_INSTANCE),
        roles=str(commitment.ROLES),
        failure_reasons=tuple(
            (f"0x{code:04X}", str(words)) for code, words in sorted(commitment.FAILURE_REASONS.items())
        ),
        max_per_request=int(commitment.MAX_PER_REQUEST),
    )


def _tls_profile() -> TlsProfile:
    try:
        from . import tls, tls_ca
    except ImportError as exc:
        raise ConformanceError(
            f"the TLS modules cannot be imported ({exc}): the statement's TLS profile needs them"
        ) from None
    import ssl

    # The options the router's own contexts are built with (the same function makes listener and client ones).
    options = tls._base_context(ssl.PROTOCOL_TLS_SERVER, next(iter(tls.TLS_VERSIONS))).options
    off = [word for flag, word in ((ssl.OP_NO_COMPRESSION, "compression"), (ssl.OP_NO_RENEGOTIATION, "renegotiation"))
           if options & flag]  # fmt: skip
    return TlsProfile(
        versions=tuple(tls.TLS_VERSIONS),
        disabled=tuple(off),
        ciphers_tls12=tuple(tls.CIPHERS_TLS12.split(":")),
        ciphers_tls13=tuple(tls.CIPHERS_TLS13),
        key_types=tuple(tls_ca.KEY_TYPES),
        ca_days=int(tls_ca.CA_DAYS),
        node_days=int(tls_ca.NODE_DAYS),
        handshake_timeout=float(tls.HANDSHAKE_TIMEOUT),
    )


def _product_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        raise ConformanceError(
            f"the {DISTRIBUTION} distribution is not installed, so its version is unknown — "
            "`pip install -e .` in the checkout"
        ) from None


def gather(cfg: RouterConfig) -> Facts:
    import pydicom
    import pynetdicom
    from pydicom.charset import python_encoding
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = receiver_ae(cfg)
    storage, other = _accepted(ae)
    syntaxes = list(dict.fromkeys(ts for c in storage for ts in c.transfer_syntaxes))
    verification = build_context(Verification)  # what scu.open_association proposes for C-ECHO
    return Facts(
        product_version=_product_version(),
        pynetdicom_version=pynetdicom.__version__,
        pydicom_version=pydicom.__version__,
        implementation_class_uid=str(ae.implementation_class_uid),
        implementation_version_name=str(ae.implementation_version_name),
        max_pdu_inbound=int(ae.maximum_pdu_size),
        max_associations_inbound=int(ae.maximum_associations),
        storage=tuple(storage),
        other_accepted=tuple(other),
        verification_scu=Context(
            str(Verification), _sop_name(str(Verification)), tuple(map(str, verification.transfer_syntax)), "SCU"
        ),
        fallbacks=_fallbacks(syntaxes),
        status_handling=_status_handling(),
        commitment=_commitment(other),
        tls=_tls_profile(),
        character_sets=tuple(sorted(t for t in python_encoding if t)),
    )


# -- rendering ---------------------------------------------------------------------------------------------
def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out + [""]


def _ts(uid: str) -> str:
    return f"{_sop_name(uid)} `{uid}`"


def _value(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v)) or "empty"
    return str(v)


# Meanings for the few settings whose model field carries no description (the models' own words win).
_MEANINGS = {
    "router.ae_title": "the router's AE title: called AE title for sources, calling AE title towards destinations",
    "router.bind": "address the receiver listens on",
    "router.port": "plain DICOM listener port",
    "router.accept_unknown_callers": "accept storage from calling AE titles that are not configured sources",
    "ae_title": "the node's AE title",
    "host": "IP address or DNS name",
    "port": "the node's DICOM port",
    "role": "source (sends to the router), destination (the router sends to it) or both",
    "max_associations": "outbound associations opened to this destination in parallel (1-32)",
    "tls.enabled": "source: may call only the TLS port; destination: connected to with TLS",
    "commitment.enabled": "request Storage Commitment after sending (destinations only)",
}


def _settings(model: type[BaseModel], prefix: str, keys: Sequence[str]) -> list[tuple[str, str, str]]:
    """(setting, default, meaning) for the named fields; a nested settings model is expanded."""
    from pydantic import BaseModel

    rows: list[tuple[str, str, str]] = []
    for key in keys:
        field = model.model_fields[key]
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            rows += _settings(kind, f"{prefix}{key}.", list(kind.model_fields))
            continue
        name = f"{prefix}{key}"
        default = "required" if field.is_required() else _value(field.get_default(call_default_factory=True))
        rows.append((f"`{name}`", default, field.description or _MEANINGS.get(name, "")))
    return rows


def _size(n: int) -> str:
    return "unlimited (0)" if n == 0 else f"{n} bytes"


def render(f: Facts, cfg: RouterConfig, site: str | None = None) -> str:
    r = cfg.router
    lines: list[str] = []
    add = lines.append
    cx_syntaxes = list(dict.fromkeys(ts for c in f.storage for ts in c.transfer_syntaxes))
    same_syntaxes = all(c.transfer_syntaxes == f.storage[0].transfer_syntaxes for c in f.storage)
    commit = f.commitment
    title = f"DICOM Conformance Statement — DICOM router appliance {f.product_version}"
    lines += [f"# {title}", ""]
    add(
        f"<!-- Generated by `{REGENERATE}` from the code (appliance/router/conformance.py). Do not edit by "
        "hand: tests/unit/test_conformance.py fails when this file differs from what the code generates. -->"
    )
    add("")
    if site:
        lines += [f"Site-specific statement for the configuration `{site}`.", ""]

    # 1 Overview ---------------------------------------------------------------------------------------
    lines += ["## 1 Conformance Statement Overview", ""]
    add(
        "The DICOM router appliance is a store-and-forward DICOM router. It receives composite objects by "
        "C-STORE from configured sources, keeps every accepted object durably on disk, decides by rules where each "
        "object goes, and forwards it by C-STORE to one or more destinations, with retry. It optionally asks a "
        "destination for Storage Commitment and tracks the report. It implements no query/retrieve, worklist or "
        "media services, and it does not display or create images."
    )
    add("")
    lines += _table(
        ["SOP Classes", "User of Service (SCU)", "Provider of Service (SCP)"],
        [
            ["**Transfer**", "", ""],
            [f"All {len(f.storage)} Storage SOP Classes of Table 4.2-2", "Yes", "Yes"],
            ["**Workflow Management**", "", ""],
            [_sop_name(commit.request_context.uid), "Yes", "No"],
            ["**Verification**", "", ""],
            [
                f.verification_scu.name,
                "Yes",
                "Yes" if any(c.uid == f.verification_scu.uid for c in f.other_accepted) else "No",
            ],
        ],
    )
    add("The appliance supports no media interchange (Media Storage Application Profiles): none.")
    add("")

    # 3 Introduction ---------------------------------------------------------------------------------------
    lines += ["## 3 Introduction", "", "### 3.1 Revision history", ""]
    lines += _table(
        ["Document version", "Product version", "Implementation version name"],
        [[f.product_version, f.product_version, f.implementation_version_name]],
    )
    lines += ["### 3.2 Audience and remarks", ""]
    add(
        "For integrators and PACS/modality administrators connecting systems to the router. The router forwards "
        "objects as received (byte for byte) unless a route or node asks for morphing or de-identification "
        "(section 9.5) or the destination does not accept the received transfer syntax (section 4.2.1.3.1)."
    )
    add("")
    lines += ["### 3.3 Terms and definitions", ""]
    lines += _table(
        ["Term", "Meaning"],
        [
            ["Source", "a configured node (role source or both) that sends objects to the router"],
            ["Destination", "a configured node (role destination or both) the router sends objects to"],
            [
                "Job",
                "one object to be sent to one destination: queued, sent (done), retried, held, failed, or committed",
            ],
            ["Spool", "the router's durable on-disk copy of every accepted object"],
            ["Morphing", "tag edits applied per destination on the way out, never to the spooled original"],
        ],
    )
    lines += ["### 3.4 References", ""]
    add("NEMA PS3 (DICOM Standard), parts 2, 4, 7, 8, 15; RFC 9325 (BCP 195, recommendations for TLS).")
    add("")
    add(f"Implemented with pynetdicom {f.pynetdicom_version} and pydicom {f.pydicom_version}.")
    add("")

    # 4 Networking ------------------------------------------------------------------------------------
    lines += ["## 4 Networking", "", "### 4.1 Implementation model", "", "#### 4.1.1 Application data flow", ""]
    add(
        f"One Application Entity, the **ROUTER AE** (AE title `{r.ae_title}`; set by `router.ae_title`), "
        "implemented by three processes: the *receiver* (association acceptor), the *forwarder* (association "
        "requestor, one worker pool per destination) and the *scheduler* (housekeeping; no DICOM). They are "
        "coordinated only through the queue database."
    )
    add("")
    lines += [
        "```",
        "  Source ──C-STORE──▶ [receiver] ──spool (fsync)──▶ queue ──▶ [forwarder] ──C-STORE──▶ Destination",
        "  Source ──C-ECHO───▶ [receiver]                                [forwarder] ──C-ECHO───▶ Destination",
        "                      [receiver] ◀──N-EVENT-REPORT──            [forwarder] ──N-ACTION─▶ Destination",
        "                        (Storage Commitment report on a new association)   (commitment request)",
        "```",
        "",
    ]
    lines += ["#### 4.1.2 Functional definitions of AEs", ""]
    add(
        "**Receive**: the receiver listens on `router.port` (plain) and, when `router.tls.port` is set, on a TLS "
        "port. For each C-STORE it streams the data set to a spool file, makes it durable (fsync, rename, fsync of "
        "the directory), records the object and its jobs in one database transaction, and only then answers "
        "Success. Objects are never decoded on the way in; the routing rules read a few attributes."
    )
    add("")
    add(
        "**Forward**: for each destination the forwarder sends queued objects by C-STORE as they were received, "
        "reusing an association for several objects. Failures are retried with backoff; after repeated connection "
        "failures the destination's circuit opens and it is probed with C-ECHO until it answers."
    )
    add("")
    add(
        "**Commit** (destinations with `commitment.enabled`): after sending, the forwarder requests Storage "
        "Commitment (N-ACTION) for the objects sent, and accepts the N-EVENT-REPORT on the same association or on "
        "a new association the destination opens to the receiver. A job becomes *committed* only on a report."
    )
    add("")
    lines += ["#### 4.1.3 Sequencing of real-world activities", ""]
    add(
        "An object is forwarded only after the C-STORE response Success was sent to the source (it is then "
        "on disk). Jobs of a route with `forward: study` (or `series`) wait until the study (series) is complete. "
        "A commitment request follows the C-STORE of the objects it names; a spooled object is not deleted while "
        "a commitment for it is pending."
    )
    add("")

    # 4.2 AE specification ----------------------------------------------------------------------------------
    lines += ["### 4.2 AE specifications", "", "#### 4.2.1 ROUTER AE", "", "##### 4.2.1.1 SOP classes", ""]
    add("Table 4.2-1: non-storage SOP classes of the ROUTER AE.")
    add("")
    rc = commit.request_context
    rows = [
        [c.name, f"`{c.uid}`", "Yes" if c.uid == f.verification_scu.uid else "-", c.role]
        for c in f.other_accepted
        if c.uid != rc.uid
    ]
    rows.append([rc.name, f"`{rc.uid}`", f"Yes: {commit.roles}", "No"])
    lines += _table(["SOP Class Name", "SOP Class UID", "SCU", "SCP (as acceptor)"], rows)
    add(f"Table 4.2-2: Storage SOP classes — SCP (receiver) and SCU (forwarder); {len(f.storage)} classes.")
    add("")
    lines += _table(
        ["SOP Class Name", "SOP Class UID", "SCU", "SCP"], [[c.name, f"`{c.uid}`", "Yes", "Yes"] for c in f.storage]
    )

    lines += ["##### 4.2.1.2 Association policies", ""]
    lines += ["**General.** The DICOM Application Context Name is `1.2.840.10008.3.1.1.1`.", ""]
    lines += _table(
        ["Parameter", "Value"],
        [
            ["Maximum PDU size received (inbound)", f"{_size(f.max_pdu_inbound)} — `router.max_pdu`"],
            [
                "Maximum PDU size received (outbound)",
                f"{_size(int(_default('Node', 'max_pdu')))} by default — node `max_pdu`",
            ],
            [
                "Maximum number of simultaneous inbound associations",
                f"{f.max_associations_inbound} — `router.max_associations`",
            ],
            [
                "Maximum number of simultaneous outbound associations per destination",
                f"{_value(_default('Node', 'max_associations'))} — node `max_associations` (1-32)",
            ],
            ["Asynchronous operations window", "not supported (one outstanding operation per association)"],
        ],
    )
    lines += ["**Implementation identifying information.**", ""]
    lines += _table(
        ["Item", "Value"],
        [
            ["Implementation Class UID", f"`{f.implementation_class_uid}`"],
            ["Implementation Version Name", f"`{f.implementation_version_name}`"],
        ],
    )

    lines += ["##### 4.2.1.3 Association initiation policy", "", "###### 4.2.1.3.1 Activity — Forward objects", ""]
    add(
        "Associations are opened to a destination when jobs for it are due; up to the node's `max_associations` "
        "in parallel. Each association proposes one presentation context per (SOP class, transfer syntax) pair "
        "of the objects about to be sent (at most 128), is reused while the accepted contexts fit the next "
        "objects, and is released when idle. The router never compresses: an object is proposed in the transfer "
        "syntax it was received in, and, when the router can decode it and the route allows "
        f"(`transcode: decompress`; default `{_value(_default('Route', 'transcode'))}`), also in the "
        "uncompressed syntaxes below. The syntax it was "
        "received in is used whenever the destination accepts it."
    )
    add("")
    add("Table 4.2-3: presentation contexts proposed by the forwarder for each Storage SOP class of Table 4.2-2.")
    add("")
    lines += _table(
        ["Abstract Syntax", "Transfer Syntax (as received)", "Also proposed (in order)", "Role", "Ext. Neg."],
        [
            ["each SOP class of Table 4.2-2", _ts(ts), ", ".join(f"`{t}`" for t in alts) or "-", "SCU", "None"]
            for ts, alts in f.fallbacks
        ],
    )
    add(
        "Decompressed objects keep their SOP Instance UID; a lossy source stays marked Lossy Image Compression "
        '"01". An object the destination accepts in none of the proposed syntaxes fails with the reason.'
    )
    add("")
    add("Table 4.2-4: C-STORE response status handling (SCU).")
    add("")
    lines += _table(["Status", "Meaning", "Behaviour"], f.status_handling)
    add(
        "Association rejections and connection failures are retried with backoff (`nodes.X.retry`); after "
        f"{_value(_default('CircuitPolicy', 'open_after_failures'))} consecutive connection failures "
        "(`nodes.X.circuit.open_after_failures`) sending to that destination pauses and it is probed with C-ECHO "
        f"every {_value(_default('CircuitPolicy', 'probe_seconds'))} s (`nodes.X.circuit.probe_seconds`)."
    )
    add("")
    lines += ["###### 4.2.1.3.2 Activity — Verify a destination", ""]
    add(
        "`dicom-router echo NODE`, the console's echo and the circuit breaker's probe open an association "
        "proposing Verification only and send one C-ECHO."
    )
    add("")
    lines += _table(
        ["Abstract Syntax", "Transfer Syntaxes", "Role", "Ext. Neg."],
        [
            [
                f"{f.verification_scu.name} `{f.verification_scu.uid}`",
                ", ".join(_ts(t) for t in f.verification_scu.transfer_syntaxes),
                "SCU",
                "None",
            ]
        ],
    )
    lines += ["###### 4.2.1.3.3 Activity — Request Storage Commitment", ""]
    add(
        "For a destination with `commitment.enabled`, after the objects of a batch are stored the forwarder sends "
        f"one N-ACTION (Action Type ID 1) to the well-known SOP Instance `{commit.instance_uid}` with "
        f"a Transaction UID and the Referenced SOP Sequence of the objects sent (at most {commit.max_per_request} "
        "per request), and waits up to "
        f"`commitment.wait_seconds` (default {_value(_default('CommitmentPolicy', 'wait_seconds'))} s) on that "
        "association for the N-EVENT-REPORT. Otherwise it releases the association and expects the report on a "
        "new association to the receiver (4.2.1.4.3). With no report after `commitment.deadline_minutes` "
        f"(default {_value(_default('CommitmentPolicy', 'deadline_minutes'))}) the router raises a warning; a "
        "late report is still applied. Jobs of the objects in the Referenced SOP Sequence become *committed*; "
        "those in the Failed SOP Sequence become *failed* with the Failure Reason, and an operator may send them "
        "again. The spooled object is kept until its commitment is resolved."
    )
    add("")
    lines += _table(
        ["Abstract Syntax", "Transfer Syntaxes", "Role", "Ext. Neg."],
        [[f"{rc.name} `{rc.uid}`", ", ".join(_ts(t) for t in rc.transfer_syntaxes), rc.role, rc.extended]],
    )
    add("Failure Reasons (0008,1197) the router names in its messages:")
    add("")
    lines += _table(["Failure Reason", "Meaning"], commit.failure_reasons)

    lines += ["##### 4.2.1.4 Association acceptance policy", ""]
    add(
        "An association is accepted only when the Called AE Title is the router's AE title and the Calling AE "
        "Title is a configured source (unless `router.accept_unknown_callers`), and, for a source with "
        "`tls.enabled`, only on the TLS port (with `tls.peer_name` set, its certificate must carry that name). "
        "The router's own AE title from the appliance itself (loopback) is accepted for C-ECHO only. While the "
        "router shuts down, associations are rejected as transient."
        + (
            " A destination with `commitment.enabled` may also call in, to deliver Storage Commitment reports only."
            if commit.report_context
            else ""
        )
    )
    add("")
    lines += _table(["Reason", "Result", "Source", "Reason/Diag."], _rejections())
    lines += ["###### 4.2.1.4.1 Activity — Receive objects", ""]
    if same_syntaxes:
        add(
            f"Every Storage SOP class of Table 4.2-2 is accepted in each of these {len(cx_syntaxes)} transfer "
            "syntaxes (Table 4.2-5); role SCP; no extended negotiation. When several are proposed for one SOP "
            "class, the first one proposed that is supported is accepted."
        )
    else:
        add("Every Storage SOP class of Table 4.2-2 is accepted in the transfer syntaxes of Table 4.2-5 listed for it.")
    add("")
    add("Table 4.2-5: transfer syntaxes accepted for storage.")
    add("")
    lines += _table(["Transfer Syntax Name", "UID"], [[_sop_name(t), f"`{t}`"] for t in cx_syntaxes])
    add(
        "Storage SCP conformance: level 2 (full). The data set is stored exactly as received — every element, "
        "private elements included, and the transfer syntax — and forwarded unchanged unless morphing applies. "
        "Signatures are therefore preserved. Objects are kept until every destination confirmed them (and, per "
        "`router.retention`, longer)."
    )
    add("")
    lines += _table(["Status returned", "When"], _statuses_returned())
    lines += ["###### 4.2.1.4.2 Activity — Verification", ""]
    for c in f.other_accepted:
        if c.uid == f.verification_scu.uid:
            lines += _table(
                ["Abstract Syntax", "Transfer Syntaxes", "Role", "Ext. Neg."],
                [[f"{c.name} `{c.uid}`", ", ".join(_ts(t) for t in c.transfer_syntaxes), c.role, c.extended]],
            )
    lines += ["###### 4.2.1.4.3 Activity — Receive a Storage Commitment report", ""]
    if commit.report_context is None:
        add("Not accepted on a new association: the report is received only on the requesting association.")
        add("")
    else:
        c = commit.report_context
        add(
            "A destination may deliver the N-EVENT-REPORT on a new association to the receiver, taking the SCP role "
            "through SCP/SCU Role Selection (a caller that does not negotiate roles is accepted too). The report is "
            "matched to the request by its Transaction UID and answered with Success."
        )
        add("")
        lines += _table(
            ["Abstract Syntax", "Transfer Syntaxes", "Role", "Ext. Neg."],
            [[f"{c.name} `{c.uid}`", ", ".join(_ts(t) for t in c.transfer_syntaxes), c.role, c.extended]],
        )

    # 4.3 Network interfaces ----------------------------------------------------------------------------
    lines += ["### 4.3 Network interfaces", ""]
    add(
        "TCP/IP (PS3.8) on the appliance's Ethernet interfaces, IPv4 and IPv6. TCP_NODELAY is set on every DICOM "
        f"connection. Plain DICOM listens on `router.bind`:`router.port` (default {r.bind}:{r.port}); DICOM over "
        "TLS on `router.tls.port` when set (2762 is DICOM's registered port for TLS)"
        + (f", here {r.tls.port}" if r.tls.port else "")
        + ". `router.tls.plain: false` turns the plain port off."
    )
    add("")

    # 4.4 Configuration ---------------------------------------------------------------------------------
    lines += ["### 4.4 Configuration", ""]
    add(
        "Everything is set in `/etc/dicom-router/router.yaml`, changed only through `dicom-router config apply` "
        "(checked, recorded with author and reason, reloaded without a restart). The settings that shape the "
        "DICOM behaviour, with their defaults:"
    )
    add("")
    lines += _table(["Setting", "Default", "Meaning"], _router_settings())
    lines += _table(["Setting (per node, `nodes.NAME.…`)", "Default", "Meaning"], _node_settings())
    if cfg.nodes:
        add("AE title / presentation address mapping of this site:")
        add("")
        lines += _table(
            ["Node", "AE title", "Address", "Role", "TLS", "Storage commitment"],
            [
                [
                    name,
                    n.ae_title,
                    f"{n.host}:{n.port}",
                    n.role,
                    "yes" if n.tls.enabled else "no",
                    "yes" if n.commitment.enabled else "no",
                ]
                for name, n in sorted(cfg.nodes.items())
            ],
        )

    # 5-7 ------------------------------------------------------------------------------------------------------
    lines += ["## 5 Media Interchange", "", "Not supported.", ""]
    lines += ["## 6 Transformation of DICOM to CDA", "", "Not supported.", ""]
    lines += ["## 7 Support of Character Sets", ""]
    add(
        "Objects are forwarded as received, whatever their Specific Character Set (0008,0005). When a destination's "
        "morphing or de-identification changes an object, it is decoded and re-encoded by pydicom with the "
        "object's own character set, which must be one of these defined terms (default repertoire when absent):"
    )
    add("")
    add(", ".join(f"`{t}`" for t in f.character_sets))
    add("")
    add("A morphing value the object's character set cannot encode fails that job with the reason; never altered.")
    add("")

    # 8 Security ------------------------------------------------------------------------------------------
    t = f.tls
    lines += ["## 8 Security", "", "### 8.1 Security profiles — TLS", ""]
    add(
        "The router supports the BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9, RFC 9325) on its "
        "TLS port and towards destinations with `tls.enabled`. TLS material that does not load (missing, "
        "unreadable, expired, a key readable by others) stops TLS from starting; the router never falls back to "
        "plain DICOM."
    )
    add("")
    lines += _table(
        ["Item", "Value"],
        [
            ["TLS versions", ", ".join(f"TLS {v}" for v in t.versions) + " (oldest set by `router.tls.min_version`)"],
            ["TLS 1.2 cipher suites (OpenSSL names, by preference)", ", ".join(f"`{c}`" for c in t.ciphers_tls12)],
            ["TLS 1.3 cipher suites", ", ".join(f"`{c}`" for c in t.ciphers_tls13)],
            ["Disabled TLS features", ", ".join(t.disabled) or "none"],
            [
                "Inbound client certificate",
                "required when `router.tls.require_client_cert` (default "
                f"{_value(_default('ListenerTls', 'require_client_cert'))}); verified against `router.tls.ca`",
            ],
            [
                "Outbound server certificate",
                "verified against the node's `tls.ca` (or `router.tls.ca`); its DNS or "
                "IP subjectAltName must match `tls.peer_name` (default: the node's host)",
            ],
            [
                "Outbound client certificate",
                f"the router's own, when the node's `tls.mutual` (default {_value(_default('NodeTls', 'mutual'))})",
            ],
            ["Handshake timeout (inbound)", f"{_value(t.handshake_timeout)} s"],
            [
                "Certificates made by `dicom-router tls`",
                f"key types {', '.join(t.key_types)}; CA valid {t.ca_days} "
                f"days, node certificates at most {t.node_days} days; serverAuth and clientAuth",
            ],
        ],
    )
    lines += ["### 8.2 Association level security", ""]
    add(
        "Callers are identified by Calling AE Title (only configured sources may store), and on the TLS port by "
        "their certificate. A failed TLS handshake (unknown CA, expired certificate, a plain client on the TLS "
        "port) closes the connection before any association. Rejections are logged and recorded in the audit trail."
    )
    add("")
    lines += ["### 8.3 Audit trail", ""]
    add(
        "Every received and forwarded object, every rejected association, every configuration change and "
        "operator action is recorded in a hash-chained audit log (`audit.jsonl`) in the spirit of IHE ATNA; "
        "Patient IDs only as `audit.patient_ids` allows. `dicom-router audit verify` checks the chain."
    )
    add("")

    # 9 Annexes -------------------------------------------------------------------------------------------
    lines += ["## 9 Annexes", "", "### 9.1 IOD contents", ""]
    add("The router creates no SOP instances; received instances are forwarded as received (see 9.5).")
    add("")
    lines += [
        "### 9.2 Data dictionary of private attributes",
        "",
        "None (private attributes are forwarded as received).",
        "",
    ]
    lines += ["### 9.3 Coded terminology and templates", ""]
    add(
        'De-identification adds the code `113100` (DCM, "Basic Application Confidentiality Profile") and its '
        "options to the De-identification Method Code Sequence."
    )
    add("")
    lines += ["### 9.4 Standard extended / specialized / private SOP classes and transfer syntaxes", "", "None.", ""]
    lines += ["### 9.5 Extensions: morphing and de-identification", ""]
    add(
        "Per route and per destination, morph profiles (`morph_profiles`) change attributes of the copy sent to "
        f"that destination — never the spooled original: steps {_step_kinds()}. The `deidentify` step applies the "
        "PS3.15 Annex E Basic Application Level Confidentiality Profile with the options:"
    )
    add("")
    lines += _table(["Option (setting)", "Default", "Meaning"], _deid_options())
    add("Every morph is recorded in the audit trail (attribute and hashes of old and new values; no values).")
    add("")
    return "\n".join(_with_contents(lines)).rstrip("\n") + "\n"


def _with_contents(lines: list[str]) -> list[str]:
    """PS3.2's section 2, the table of contents, from the headings (inserted after section 1)."""
    toc = ["## 2 Table of Contents", ""]
    for line in lines:
        m = re.match(r"(#{2,4}) (.*)", line)
        if m:
            toc.append(f"{'  ' * (len(m.group(1)) - 2)}- {m.group(2)}")
    at = lines.index("## 3 Introduction")
    return lines[:at] + toc + [""] + lines[at:]


def _default(model: str, field: str) -> Any:
    from . import config, config_trust

    cls = getattr(config, model, None) or getattr(config_trust, model)
    return cls.model_fields[field].get_default(call_default_factory=True)


def _router_settings() -> list[tuple[str, str, str]]:
    from .config import RouterSettings

    keys = ["ae_title", "bind", "port", "max_pdu", "max_associations", "accept_unknown_callers", "timeouts", "tls"]
    return _settings(RouterSettings, "router.", keys)


def _node_settings() -> list[tuple[str, str, str]]:
    from .config import Node

    keys = [
        "ae_title",
        "host",
        "port",
        "role",
        "max_associations",
        "max_pdu",
        "timeouts",
        "retry",
        "circuit",
        "tls",
        "commitment",
    ]
    return _settings(Node, "", keys)


def _deid_options() -> list[tuple[str, str, str]]:
    from .morph import DeidentifyStep

    keys = [k for k in DeidentifyStep.model_fields if k != "kind"]
    return _settings(DeidentifyStep, "", keys)


def _step_kinds() -> str:
    from .morph import STEP_KINDS

    return ", ".join(f"`{k}`" for k in STEP_KINDS)


def _rejections() -> list[tuple[str, str, str, str]]:
    from . import receiver

    words = {1: "rejected-permanent", 2: "rejected-transient"}
    sources = {
        1: "DICOM UL service-user",
        2: "DICOM UL service-provider (ACSE related function)",
        3: "DICOM UL service-provider (presentation related function)",
    }
    rows = [
        ("Called AE Title is not the router's", receiver._REJECT_CALLED_AE),
        ("Calling AE Title is not a configured source", receiver._REJECT_CALLING_AE),
        ("The router is shutting down", receiver._REJECT_BUSY),
        (
            "TLS policy: a TLS source on the plain port, or its certificate lacks `tls.peer_name`",
            receiver._REJECT_NO_REASON,
        ),
    ]
    return [(why, words[res], sources[src], f"0x{reason:02X}") for why, (res, src, reason) in rows]


def _statuses_returned() -> list[tuple[str, str]]:
    from . import receiver
    from .dicom_status import Status

    return [
        (f"0x{Status.SUCCESS:04X} Success", "the object is on disk (fsync'd) and queued for its destinations"),
        (
            f"0x{receiver._STATUS_NOT_AUTHORIZED:04X} Refused: not authorized",
            "the caller is not a configured source (e.g. the on-box health check)",
        ),
        (
            f"0x{Status.OUT_OF_RESOURCES:04X} Refused: out of resources",
            "the spool disk is below its reserve (`router.min_free_mb`) or a write failed; retry later",
        ),
        (f"0x{Status.CANNOT_UNDERSTAND:04X} Error: cannot understand", "the data set cannot be parsed"),
    ]


# -- command -------------------------------------------------------------------------------------------
def statement(config_path: Path | None = None) -> str:
    """The conformance statement: for the product (default settings) or for the site `config_path` configures."""
    from .config import RouterConfig, load_config

    cfg = load_config(config_path) if config_path is not None else RouterConfig()
    return render(gather(cfg), cfg, site=str(config_path) if config_path is not None else None)


def cmd_conformance(args: argparse.Namespace) -> int:
    from .cli_common import EXIT_FAIL, EXIT_OK, EXIT_USAGE
    from .config import ConfigError

    try:
        text = statement(Path(args.config) if args.config else None)
    except ConformanceError as exc:
        print(f"error: cannot generate the conformance statement: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        path = Path(args.check)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            print(f"{path} is up to date")
            return EXIT_OK
        print(f"{path} is {'missing' if current is None else 'stale'}: run `{REGENERATE}`", file=sys.stderr)
        return EXIT_FAIL
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def add_conformance_command(sub: Any) -> None:
    p = sub.add_parser(
        "conformance",
        help="print the DICOM Conformance Statement (PS3.2), generated from the code",
        description="Generate the DICOM Conformance Statement (PS3.2 Annex A structure) from the code's supported "
        "SOP classes, transfer syntaxes, roles and TLS profile. Without --config: the product with default "
        f"settings (the committed {DEFAULT_OUTPUT}); with --config: one site's statement.",
    )
    p.add_argument("--output", metavar="FILE", help=f"write it to FILE (e.g. {DEFAULT_OUTPUT}) instead of stdout")
    p.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from what the code generates (CI)")
    p.add_argument(
        "--config", default=None, help="describe the site this router.yaml configures (AE title, ports, nodes)"
    )
    p.set_defaults(func=cmd_conformance)
