"""Small helpers the endpoints, config history and backups screens share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import App
from textual.markup import escape

from ..widgets import theme_style

if TYPE_CHECKING:
    from appliance.router.history import ApplyResult

    from ..backend import Backend


def backend_of(app: App[Any]) -> Backend:
    return app.backend  # type: ignore[attr-defined]


def styled(app: App[Any], text: str, colour: str, bold: bool = False) -> Text:
    """Text in a theme colour ('error', 'success', 'warning'): never a hard-coded RGB (tty1 has 16 colours)."""
    return Text(text, style=theme_style(app, colour, bold=bold))


def plain(text: str) -> str:
    """User text (reasons, AE titles) for a markup-enabled Static: '[' must not start a style."""
    return escape(text)


def apply_outcome(result: ApplyResult) -> str:
    """'version 7 applied; router reloaded (pid 812)' in words, with any warnings."""
    if result.outcome == "unchanged":
        text = "nothing changed: the live config already has this content"
    else:
        text = result.message or f"{result.outcome} (version {result.version})"
    for warning in result.warnings:
        text += f"\nwarning: {warning}"
    return text


def human_size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def age(seconds: float) -> str:
    """'42s', '7m', '3h05m', '1d02h', '12d' — how long ago, short enough for a table cell."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s < 7 * 86400:
        return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
    return f"{s // 86400}d"
