"""A footer that wraps: every key of the screen stays visible at 80 columns (Textual's Footer is one row and
cuts off what does not fit). Built from the screen's active bindings, like the Footer, so it always shows
what the keys do right now (a key disabled by `check_action` is left out)."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.dom import NoScreen
from textual.screen import Screen
from textual.widgets import Static

from ..widgets import theme_style


class KeyBar(Static):
    DEFAULT_CSS = """
    KeyBar { height: 1; background: $footer-background; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self.rebuild()  # now, so the first layout already has the right height

    def _bindings_changed(self, screen: Screen[Any]) -> None:
        if self.is_attached and screen is self.screen:
            self.call_after_refresh(self.rebuild)

    def on_resize(self, _event: events.Resize) -> None:
        self.rebuild()

    def items(self) -> list[tuple[str, str, bool]]:
        """(keys, description, enabled) in footer order; a group of bindings becomes one item ('d u b c l',
        'Screens'). Disabled keys stay (dimmed) so the bar does not jump as focus moves."""
        seen: dict[str, tuple[Binding, bool]] = {}
        for _node, binding, enabled, _tooltip in self.screen.active_bindings.values():
            if binding.show and binding.action not in seen:
                seen[binding.action] = (binding, enabled)
        out: list[tuple[str, str, bool]] = []
        for group, members in groupby(seen.values(), lambda m: m[0].group):
            shown = list(members)
            if group is not None and len(shown) > 1:
                keys = " ".join(self.app.get_key_display(b) for b, _ in shown)
                out.append((keys, group.description, any(e for _, e in shown)))
            else:
                out += [(self.app.get_key_display(b), b.description, e) for b, e in shown]
        return out

    def rebuild(self) -> None:
        if not self.is_attached:  # a rebuild queued just before the screen closed
            return
        try:
            items = self.items()
        except NoScreen:
            return
        width = max(20, (self.size.width or self.app.size.width) - 2)
        key_style = theme_style(self.app, "footer-key-foreground", bold=True)
        dim = Style(dim=True)
        text, line = Text(no_wrap=True, overflow="crop"), 0
        for keys, description, enabled in items:
            item = len(keys) + 1 + len(description)
            if line and line + 2 + item > width:
                text.append("\n")
                line = 0
            elif line:
                text.append("  ")
                line += 2
            text.append(keys, style=key_style if enabled else dim)
            text.append(" " + description, style="" if enabled else dim)
            line += item
        self.update(text)
        lines = text.plain.count("\n") + 1
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines  # one row or two: the table above gives up (or takes back) a line
