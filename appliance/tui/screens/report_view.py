"""A read-only view of a long report (tens of thousands of lines) that stays fast: only the lines on screen
are rendered (Textual's line API), so a dry run over a folder of thousands of files shows at once.

Lines arrive already wrapped to the view's width (`wrap_lines`, which a thread can run), each with a style
key; the screen maps keys to theme styles, and `emphasis` words (e.g. "[TEST]") stand out wherever they are."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable

from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

Line = tuple[str, str]  # (text, style key)
CONTINUATION = "    "  # a wrapped line's continuation is indented this much more than its first part


def wrap_lines(text: str, width: int, classify: Callable[[str], str]) -> list[Line]:
    """Each line of `text` classified, then wrapped to `width` with a hanging indent (the continuation keeps
    the style of its line, so a wrapped 'HELD: …' stays in the warning colour)."""
    width = max(20, width)
    out: list[Line] = []
    for line in text.splitlines():
        key = classify(line)
        if len(line) <= width:
            out.append((line, key))
            continue
        indent = " " * (len(line) - len(line.lstrip(" "))) + CONTINUATION
        parts = textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False) or [line]
        out += [(part, key) for part in parts]
    return out


class ReportView(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    ReportView { background: $surface; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[Line] = []
        self.line_styles: dict[str, Style] = {}
        self.emphasis: dict[str, Style] = {}

    def show_lines(self, lines: Iterable[Line], styles: dict[str, Style], emphasis: dict[str, Style]) -> None:
        self.lines = list(lines)
        self.line_styles, self.emphasis = styles, emphasis
        width = max((len(text) for text, _ in self.lines), default=0)
        self.virtual_size = Size(width, len(self.lines))
        self.scroll_to(0, 0, animate=False)
        self.refresh()

    def plain(self) -> str:
        """Everything shown, as text (for tests and anyone who wants to search it)."""
        return "\n".join(text for text, _ in self.lines)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        index = scroll_y + y
        if index >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        text, key = self.lines[index]
        base = self.rich_style  # the view's own colours under every line, as Textual's Log does
        line = Text(text, no_wrap=True, end="")
        line.stylize(base + self.line_styles.get(key, Style()))  # a span: Text.render ignores a bare base style
        for word, style in self.emphasis.items():
            line.highlight_words([word], style)
        strip = Strip(line.render(self.app.console), line.cell_len)
        return strip.crop_extend(scroll_x, scroll_x + width, base)
