"""Config diffs for people: side by side (two aligned columns, changed lines highlighted) when there is room,
a unified diff when the terminal is narrow. Pure functions: text in, Rich Text out (no I/O, no Textual)."""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text

CONTEXT = 3  # unchanged lines kept around each change; longer unchanged runs fold into one "…" line


@dataclass(frozen=True)
class Row:
    """One aligned line of a side-by-side diff. kind: equal | delete | insert | replace | gap."""

    kind: str
    left_no: int | None = None
    left: str = ""
    right_no: int | None = None
    right: str = ""


@dataclass(frozen=True)
class Styles:
    """Theme colours (looked up by the screen, so a 16-colour console still maps them). Changed lines are
    also marked - / +, so the diff reads without colour too."""

    removed: Style = Style(color="red", bold=True)
    added: Style = Style(color="green", bold=True)
    muted: Style = Style(dim=True)
    heading: Style = Style(bold=True)


def change_counts(old: str, new: str) -> tuple[int, int]:
    """(+added, -removed) lines going from old to new."""
    added = removed = 0
    sm = difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("delete", "replace"):
            removed += i2 - i1
        if tag in ("insert", "replace"):
            added += j2 - j1
    return added, removed


def side_by_side(old: str, new: str, context: int = CONTEXT) -> list[Row]:
    """Aligned rows; unchanged runs longer than 2×context fold into a gap row (left_no = lines folded)."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[Row] = []
    done = 0  # lines of `a` accounted for so far
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for group in sm.get_grouped_opcodes(context):
        if group[0][1] > done:
            rows.append(Row("gap", group[0][1] - done))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                rows += [
                    Row("equal", i + 1, a[i], j + 1, b[j]) for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
                ]
                continue
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                rows.append(
                    Row(
                        tag,
                        i + 1 if i < i2 else None,
                        a[i] if i < i2 else "",
                        j + 1 if j < j2 else None,
                        b[j] if j < j2 else "",
                    )
                )
        done = group[-1][2]
    if rows and done < len(a):
        rows.append(Row("gap", len(a) - done))
    return rows


def render_side(rows: list[Row], side: str, styles: Styles, width: int = 0) -> Text:
    """One column ('left' = old, 'right' = new) of a side-by-side diff. With `width` (the pane's), long lines
    wrap and the other side gets as many blank lines, so both columns stay aligned and nothing is cut off."""
    out = Text(no_wrap=True, overflow="ellipsis")
    room = max(10, width - GUTTER) if width else 0
    for n, row in enumerate(rows):
        if n:
            out.append("\n")
        if row.kind == "gap":
            out.append(f"   ... {row.left_no} unchanged line(s)", style=styles.muted)
            continue
        no, text = (row.left_no, row.left) if side == "left" else (row.right_no, row.right)
        height = max(len(_chunks(row.left, room)), len(_chunks(row.right, room)))
        chunks = _chunks(text, room) if no is not None else []
        chunks += [""] * (height - len(chunks))
        changed = row.kind != "equal"
        marker = (" -" if side == "left" else " +") if changed else "  "
        style = (styles.removed if side == "left" else styles.added) if changed else Style()
        for k, chunk in enumerate(chunks):
            if k:
                out.append("\n")
            if no is None:
                continue
            out.append(f"{no:>4}" if k == 0 else "    ", style=styles.muted)
            out.append(f"{marker if k == 0 else '  '} {chunk}", style=style)
    return out


GUTTER = 7  # "1234 - " before each line


def _chunks(text: str, room: int) -> list[str]:
    """Wrap at spaces where possible; the line's own indentation (YAML structure) stays on its first piece."""
    if not room or len(text) <= room:
        return [text]
    return textwrap.wrap(text, room, break_on_hyphens=False, expand_tabs=False) or [text[:room]]


def render_unified(old: str, new: str, old_label: str, new_label: str, styles: Styles) -> Text:
    """Wraps in its pane (no alignment to keep), so a long changed line is never cut off."""
    out = Text()
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), old_label, new_label, n=CONTEXT, lineterm=""))
    for n, line in enumerate(lines):
        if n:
            out.append("\n")
        if line.startswith(("---", "+++")):
            out.append(line, style=styles.heading)
        elif line.startswith("@@"):
            out.append(line, style=styles.muted)
        elif line.startswith("-"):
            out.append(line, style=styles.removed)
        elif line.startswith("+"):
            out.append(line, style=styles.added)
        else:
            out.append(line)
    return out
