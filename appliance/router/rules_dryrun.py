"""`rules test`: what the router would do with some files under a config, without sending anything.

Shared by the CLI and the console (through its backend), so both explain a decision in the same words.
The dry run reads each file exactly as the receiver does (same tags, same refusal of a damaged file)
and evaluates the same rules; it does not consult the delivery ledger (a re-sent identical object
would be skipped there) nor study completeness.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import rules
from .config import Priority, RouterConfig
from .dataset_facts import UnreadableDataset, read_facts


@dataclass(frozen=True)
class ObjectReport:
    path: str
    sop_instance_uid: str | None = None
    summary: str = ""  # Modality, study, patient id: enough to recognise the object
    unreadable: str | None = None  # why the receiver would refuse it (0xC000)
    targets: tuple[rules.Target, ...] = ()
    decisions: tuple[rules.RouteDecision, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "unreadable": self.unreadable,
            "targets": [t.__dict__ | {"morph": list(t.morph)} for t in self.targets],
            "routes": [{"route": d.route, "matched": d.matched, "reasons": list(d.reasons)} for d in self.decisions],
        }


@dataclass
class DryRun:
    source_node: str | None
    calling_ae: str | None
    at: datetime
    objects: list[ObjectReport] = field(default_factory=list)

    def per_destination(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for obj in self.objects:
            for t in obj.targets:
                counts[t.destination] = counts.get(t.destination, 0) + 1
        return counts


def dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and every file below named directories (sorted, hidden ones skipped)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(part.startswith(".") for part in child.relative_to(path).parts):
                    yield child
        else:
            yield path


def dry_run(
    cfg: RouterConfig,
    paths: Iterable[Path],
    *,
    source_node: str | None = None,
    calling_ae: str | None = None,
    at: datetime | None = None,
) -> DryRun:
    """Evaluate the rules for each file as if `source_node` (or an unknown `calling_ae`) had sent it at `at`."""
    if source_node is not None and calling_ae is None and source_node in cfg.nodes:
        calling_ae = cfg.nodes[source_node].ae_title
    if calling_ae is not None and source_node is None:
        source_node = cfg.sources_by_ae().get(calling_ae)
    run = DryRun(source_node, calling_ae, at or datetime.now())
    keywords = cfg.tag_keywords()
    for path in dicom_files(paths):
        try:
            facts = read_facts(path, keywords)
        except UnreadableDataset as exc:
            run.objects.append(ObjectReport(str(path), unreadable=str(exc)))
            continue
        except OSError as exc:
            run.objects.append(ObjectReport(str(path), unreadable=f"cannot read the file: {exc.strerror}"))
            continue
        v = facts
        targets, decisions = rules.evaluate(
            cfg,
            rules.Facts(calling_ae, cfg.router.ae_title, source_node, facts.values),
            run.at,
        )
        summary = ", ".join(
            f"{label} {v.get(k)}"
            for k, label in (("Modality", ""), ("StudyInstanceUID", "study"), ("PatientID", "patient"))
            if v.get(k)
        ).strip()
        run.objects.append(
            ObjectReport(
                str(path),
                v.get("SOPInstanceUID"),
                summary,
                None,
                tuple(sorted(targets, key=lambda t: t.destination)),
                tuple(decisions),
            )
        )
    return run


def render(run: DryRun, cfg: RouterConfig, *, verbose: bool = True, source_hint: str = "pass --source NODE") -> str:
    """The report as an operator reads it: per object, where it goes and why the other routes did not match.
    `source_hint` says how the reader picks a source (the CLI's option, the console's field)."""
    lines: list[str] = []
    who = run.source_node or (f"unknown caller {run.calling_ae}" if run.calling_ae else None)
    lines.append(f"as if sent by {who or f'no known source ({source_hint})'} at {run.at:%a %Y-%m-%d %H:%M}")
    if who is None and any(
        "source_node" in r.match.tested_keys() or "calling_ae" in r.match.tested_keys() for r in cfg.routes
    ):
        lines.append(f"  note: routes testing source_node or calling_ae cannot match without a source ({source_hint})")
    for obj in run.objects:
        lines.append("")
        if obj.unreadable:
            lines.append(f"{obj.path}: REFUSED on arrival (0xC000): {obj.unreadable}")
            continue
        lines.append(f"{obj.path}: {obj.summary or 'object'} (SOP {obj.sop_instance_uid})")
        if not obj.targets:
            lines.append("  → nowhere: matches no route; kept as unrouted (`dicom-router queue route` sends it)")
        for t in obj.targets:
            lines.append("  " + _describe_target(t, cfg))
        for d in obj.decisions:
            if d.matched:
                if verbose:
                    lines.append(f"    route {d.route}: matched")
            else:
                lines.append(f"    route {d.route}: no — {'; '.join(d.reasons)}")
    counts = run.per_destination()
    readable = [o for o in run.objects if not o.unreadable]
    lines.append("")
    lines.append(
        f"{len(run.objects)} file(s): "
        + (", ".join(f"{n} → {dest}" for dest, n in sorted(counts.items())) or "none routed")
        + f"; {sum(1 for o in readable if not o.targets)} unrouted; {len(run.objects) - len(readable)} refused"
    )
    return "\n".join(lines)


def _describe_target(t: rules.Target, cfg: RouterConfig) -> str:
    node = cfg.nodes.get(t.destination)
    env = " [TEST]" if node is not None and node.environment == "test" else ""
    parts = [f"→ {t.destination}{env}", Priority(t.priority).name, f"via route {t.route}"]
    parts.append("per instance" if t.wait_for is None else f"when the {t.wait_for} is complete")
    if t.morph:
        parts.append("morph: " + ", ".join(t.morph))
    if t.transcode == "never":
        parts.append("no transcoding")
    if t.hold_reason is not None:
        parts.append(f"HELD: {t.hold_reason}")
    return "  ".join(parts)
