"""What every screen shares: the `ConsoleScreen` base (refresh on the app's tick, backend calls in thread
workers, failures in words), theme-derived styles for tables, and the dialogs: confirm (with the count of what
will change), reason (+ ticket), passphrase, message, and the `?` help. Keyboard only: Enter/y confirms,
Escape/n cancels."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rich.style import Style
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.color import Color
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, Static

if TYPE_CHECKING:
    from .backend import Backend

T = TypeVar("T")


def theme_style(app: App[Any], variable: str, *, bold: bool = False) -> Style:
    """A Rich style in a theme colour ("error", "warning", "success", …) for cells of a DataTable, which takes
    Rich text rather than CSS: on tty1's ANSI theme it stays an ANSI colour, never a hard-coded RGB."""
    value = app.theme_variables.get(variable)
    try:
        color = Color.parse(value).rich_color if value else None
    except Exception:  # a theme without that variable: plain text is better than no text
        color = None
    return Style(color=color, bold=bold)


class ConsoleScreen(Screen[None]):
    """Base for the console's screens.

    Subclasses override `load()` (runs in a thread: blocking backend calls) and `show(data)` (UI thread).
    The app's tick and every return to the screen call `refresh_data()`; a refresh never starts while one is
    still running, so slow I/O cannot pile up — but one asked for meanwhile (after an action) runs as soon as
    the running one ends, since that one may have read the state from before the action. `run_backend()`
    runs an action the same way; a failure becomes a dialog in words (`show_load_error` for refreshes: inline,
    not a dialog every few seconds)."""

    HELP: ClassVar[str] = ""
    _refreshing = False
    _refresh_again = False

    @property
    def backend(self) -> Backend:
        return self.app.backend  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def refresh_data(self) -> None:
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self._refresh_again = False
        self.run_backend("Refreshing", self.load, self._loaded, on_error=self._load_failed, group="refresh")

    def load(self) -> Any:
        return None

    def show(self, data: Any) -> None:
        pass

    def show_load_error(self, message: str) -> None:
        self.notify(message, title="Could not refresh", severity="error")

    def _loaded(self, data: Any) -> None:
        self._refreshing = False
        self.show(data)
        if self._refresh_again:
            self.refresh_data()

    def _load_failed(self, message: str) -> None:
        self._refreshing = False
        self.show_load_error(message)
        if self._refresh_again:
            self.refresh_data()

    def run_backend(
        self,
        what: str,
        call: Callable[[], T],
        done: Callable[[T], None],
        *,
        on_error: Callable[[str], None] | None = None,
        group: str = "action",
    ) -> None:
        """`call()` in a thread worker, then `done(result)` on the UI thread; if it raises, `on_error(words)`
        or an error dialog titled "<what> failed"."""
        from .app import error_words

        def fail(message: str) -> None:
            if on_error is not None:
                on_error(message)
            else:
                self.app.push_screen(MessageScreen(f"{what} failed", message, error=True))

        def job() -> None:
            try:
                result = call()
            except Exception as exc:  # BackendError, OSError, or a bug: all become words, never a traceback
                self._from_thread(fail, error_words(exc))
                return
            self._from_thread(done, result)

        # Not `exclusive`: a refresh never overlaps another (see refresh_data), and cancelling a worker that is
        # handing its result over would only lose it.
        self.run_worker(job, name=what, group=group, thread=True, exit_on_error=False)

    def _from_thread(self, callback: Callable[[Any], None], arg: Any) -> None:
        try:
            self.app.call_from_thread(callback, arg)
        except RuntimeError:  # the app closed while the worker ran
            pass


class BrokenScreen(Screen[None]):
    """Stands in for a screen whose module failed to import, so the rest of the console still works."""

    HELP = "This screen could not be loaded: the message on it says why. The other screens work."

    def __init__(self, name: str, error: str):
        super().__init__()
        self.title = name
        self.error = error

    def compose(self) -> ComposeResult:
        from textual.widgets import Footer, Header

        yield Header()
        yield Static(
            f"This screen could not be loaded ({self.error}).\n\nThe other screens work: press d for the dashboard. "
            "Report this to whoever maintains the appliance image.",
            classes="error",
            markup=False,
        )
        yield Footer()


class ConfirmScreen(ModalScreen[bool]):
    """'Retry 1,204 jobs for PACS_MAIN?' — returns True only on an explicit yes."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, title: str, body: str = "", yes: str = "Yes", danger: bool = False):
        super().__init__()
        self.title_text, self.body, self.yes_label, self.danger = title, body, yes, danger

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.title_text, id="dialog-title")
            if self.body:
                yield Static(self.body, id="dialog-body")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes_label} (y)", id="yes", variant="error" if self.danger else "primary")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe default

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ReasonScreen(ModalScreen[tuple[str, str | None] | None]):
    """Ask why (required, goes into the audit trail / history) and an optional ticket. None = cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, body: str = "", ask_ticket: bool = True, default_reason: str = ""):
        super().__init__()
        self.title_text, self.body, self.ask_ticket, self.default_reason = title, body, ask_ticket, default_reason

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.title_text, id="dialog-title")
            if self.body:
                yield Static(self.body, id="dialog-body")
            yield Input(value=self.default_reason, placeholder="reason (required)", id="reason")
            if self.ask_ticket:
                yield Input(placeholder="ticket / incident number (optional)", id="ticket")
            yield Label("", id="dialog-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("OK (Enter)", id="ok", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#reason", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "reason" and self.ask_ticket:
            self.query_one("#ticket", Input).focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        reason = self.query_one("#reason", Input).value.strip()
        if not reason:
            self.query_one("#dialog-error", Label).update("a reason is required: it goes into the audit trail")
            self.query_one("#reason", Input).focus()
            return
        ticket = self.query_one("#ticket", Input).value.strip() if self.ask_ticket else ""
        self.dismiss((reason, ticket or None))

    def action_cancel(self) -> None:
        self.dismiss(None)


class PassphraseScreen(ModalScreen[str | None]):
    """Type a backup passphrase (hidden). Empty = use the config's passphrase/key file. None = cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str = "Backup passphrase"):
        super().__init__()
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Static("Leave empty to use backup.passphrase_file / key_file from the config.")
            yield Input(password=True, placeholder="passphrase", id="passphrase")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class MessageScreen(ModalScreen[None]):
    """A result or an error, in words; any of Enter/Escape closes it."""

    BINDINGS = [Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, body: str, error: bool = False):
        super().__init__()
        self.title_text, self.body, self.error = title, body, error

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog error-dialog" if self.error else "dialog"):
            yield Label(self.title_text, id="dialog-title")
            with VerticalScroll(id="dialog-scroll"):
                yield Static(self.body, id="dialog-body", markup=False)
            yield Button("Close (Enter)", id="close")

    def on_mount(self) -> None:
        self.settle_focus()

    def settle_focus(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class HelpScreen(MessageScreen):
    """`?`: what this screen shows and what each key does, in plain words."""

    def __init__(self, screen_title: str, text: str):
        super().__init__(f"Help — {screen_title}", text)

    def settle_focus(self) -> None:
        self.query_one("#dialog").add_class("help-dialog")  # wider and taller: it is read, not just dismissed
        self.query_one("#dialog-scroll").focus()  # ↑ ↓ PgUp PgDn scroll at once; Enter/Escape still close
