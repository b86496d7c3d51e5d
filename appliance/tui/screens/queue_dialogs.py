"""Choosing destinations: one (re-route) or several (routing unrouted objects). Keyboard only."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option


class ChooseScreen(ModalScreen[str | None]):
    """Pick one of `choices` with the arrows and Enter; Escape = None (nothing changes)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: list[str], body: str = ""):
        super().__init__()
        self.title_text, self.choices, self.body = title, choices, body

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.title_text, id="dialog-title")
            if self.body:
                yield Static(self.body, id="dialog-body")
            yield OptionList(*[Option(c, id=c) for c in self.choices], id="choices")
            yield Static("Enter chooses · Esc cancels", classes="hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ChooseManyScreen(ModalScreen[list[str] | None]):
    """Tick one or more of `choices` with Space, confirm with Enter; Escape = None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("enter", "done", "Done", priority=True)]

    def __init__(self, title: str, choices: list[str], body: str = ""):
        super().__init__()
        self.title_text, self.choices, self.body = title, choices, body

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.title_text, id="dialog-title")
            if self.body:
                yield Static(self.body, id="dialog-body")
            yield SelectionList[str](*[(c, c) for c in self.choices], id="choices")
            yield Label("", id="dialog-error", classes="error")
            yield Static("Space ticks · Enter confirms · Esc cancels", classes="hint")

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def action_done(self) -> None:
        chosen = list(self.query_one(SelectionList).selected)
        if not chosen:
            self.query_one("#dialog-error", Label).update("tick at least one destination with Space")
            return
        self.dismiss(chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)
