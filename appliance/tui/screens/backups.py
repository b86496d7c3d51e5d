"""Backup & restore: the encrypted bundles in the local backup directory; make one, verify one, restore from
one (the config only by default; a full restore also puts back history, TLS and the queue). Every step runs
in a thread worker; decrypting takes seconds (scrypt), so a progress bar shows while it runs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.coordinate import Coordinate
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Label, ProgressBar, Static

from ..widgets import ConfirmScreen, ConsoleScreen, MessageScreen, PassphraseScreen
from .config_common import age, human_size, plain, styled

if TYPE_CHECKING:
    from appliance.router.backup import BackupRun, BundleContents, BundleRef
    from appliance.router.backup_restore import RestorePlan, RestoreResult

COLUMNS = (("MADE (UTC)", "made"), ("AGE", "age"), ("SIZE", "size"), ("HOST", "host"), ("NAME", "name"))

HELP = """\
WHAT THIS SHOWS
The encrypted backup bundles in this appliance's backup directory, newest first: when each was made (UTC)
and how long ago, its size, the host that made it, and its file name. A bundle holds the config file, the
config history, the TLS directory and a snapshot of the queue database — never DICOM images.
The line at the top says where the bundles are, what they are encrypted with, and the restore mode.

KEYS
  n   make a backup now (asks for the passphrase; leave it empty to use the key/passphrase file the
      config names — the nightly backup uses the same)
  v   verify the highlighted bundle: decrypt it and check every file against its checksum. Nothing changes
  R   restore from the highlighted bundle: decrypt and check it, show what would change, ask, then restore
  F   switch between config-only restore (the default) and full restore
  f5  reload the list

RESTORE
Config only: the bundle's router.yaml becomes live through `config apply` (recorded in the config history as
source restore, under your name; the router reloads). Full: also puts back the config history, the TLS
directory and the queue database; the current ones are moved aside (<name>.before-restore-<time>), not
deleted. The queue can only be replaced while the router is STOPPED (systemctl stop dicom-router): with the
router running, a full restore skips the queue and says so. A bundle that is damaged, altered or opened with
the wrong passphrase is refused before anything changes.

AT 3 A.M.
* A bad config change: the Config history screen (c) rolls back a single change, quicker than a restore.
* The config is lost or wrecked beyond one change: R on the newest bundle from before the problem, read the
  plan (the diff shows what changes), confirm.
* "was encrypted with a key file … but a passphrase was given" (or the other way round): use what the
  bundle was made with; the message says which.
* No backup for a day ("backup … failed" on the dashboard): press n to make one now, then fix the cause.
"""


@dataclass
class BackupsView:
    bundles: list[BundleRef]  # newest first
    directory: str
    secret: str  # what an empty passphrase uses, in words
    now: float


class RestorePreviewScreen(ModalScreen[bool]):
    """The restore plan in full (scrollable), before the final question. True = go on."""

    BINDINGS = [Binding("enter", "answer(True)", "Continue"), Binding("escape", "answer(False)", "Cancel")]
    DEFAULT_CSS = """
    RestorePreviewScreen #preview-scroll { height: 1fr; border: round $primary; }
    RestorePreviewScreen #plan { width: auto; text-wrap: nowrap; }
    """

    def __init__(self, title: str, plan_text: str):
        super().__init__()
        self.title_text, self.plan_text = title, plan_text

    def compose(self) -> ComposeResult:
        with Vertical(id="preview", classes="dialog"):
            yield Label(self.title_text, id="dialog-title")
            with ScrollableContainer(id="preview-scroll"):  # diff lines stay whole: scroll sideways
                yield Static(self.plan_text, id="plan", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Continue (Enter)", id="continue", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        dialog = self.query_one("#preview")
        dialog.styles.width, dialog.styles.max_width, dialog.styles.height = "95%", 130, "90%"  # over .dialog's size
        self.query_one("#preview-scroll").focus()  # arrows/PgDn scroll the plan

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "continue")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class BackupsScreen(ConsoleScreen):
    TITLE = "Backup & restore"
    HELP = HELP
    BINDINGS = [
        Binding("n", "create", "Backup"),
        Binding("v", "verify", "Verify"),
        Binding("R", "restore", "Restore"),
        Binding("F", "toggle_full", "Full"),
        Binding("f5", "reload", "Reload", show=False),  # it reloads by itself; f5 is in the help
    ]
    DEFAULT_CSS = """
    BackupsScreen #bk-info { height: auto; padding: 0 1; }
    BackupsScreen #bk-info.problem { color: $text-error; text-style: bold; }
    BackupsScreen #bundles { height: 1fr; }
    BackupsScreen #bk-busy { height: 1; padding: 0 1; display: none; }
    BackupsScreen #bk-busy.running { display: block; }
    BackupsScreen #bk-busy-text { width: auto; margin-right: 2; }
    BackupsScreen #bk-result { height: auto; max-height: 8; padding: 0 1; border-top: solid $primary; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.busy: str | None = None  # what runs now; one backup operation at a time
        self.view: BackupsView | None = None
        self.last_result: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("reading the backup directory…", id="bk-info")
        table: DataTable[Text] = DataTable(id="bundles", cursor_type="row")
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        yield table
        with Horizontal(id="bk-busy"):
            yield Label("", id="bk-busy-text")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="bk-progress")
        yield Static("", id="bk-result")
        yield Footer()

    # -- loading -------------------------------------------------------------------------------------
    def action_reload(self) -> None:
        self.run_backend("Reading the backups", self.load, self.show, on_error=self.show_load_error, group="reload")

    def load(self) -> BackupsView:
        bundles = list(reversed(self.backend.backups()))
        cfg = self.backend.config()
        b = cfg.backup
        if b.key_file is not None:
            secret = f"the key file {b.key_file}"
        elif b.passphrase_file is not None:
            secret = f"the passphrase in {b.passphrase_file}"
        else:
            secret = "nothing: the config names no key or passphrase file, so type the passphrase"
        return BackupsView(bundles, str(cfg.backup_dir), secret, self.backend.clock())

    def show_load_error(self, message: str) -> None:
        info = self.query_one("#bk-info", Static)
        info.update(f"! {plain(message)}")
        info.add_class("problem")

    def show(self, view: BackupsView) -> None:
        if self.view is not None and view.bundles == self.view.bundles and view.secret == self.view.secret:
            self.view = view
            self._show_info()
            return  # nothing new: keep the cursor
        self.view = view
        self._show_info()
        table = self.query_one(DataTable)
        keep = self.current()
        table.clear()
        for ref in view.bundles:
            created = ref.created.astimezone(dt.UTC)
            table.add_row(
                Text(created.strftime("%Y-%m-%d %H:%M")),
                Text(age(view.now - created.timestamp())),
                Text(human_size(ref.size), justify="right"),
                Text(ref.host),
                Text(ref.name),
                key=ref.name,
            )
        if keep is not None and keep in {r.name for r in view.bundles}:
            table.move_cursor(row=table.get_row_index(keep))
        if not view.bundles:
            self._result(Text("No bundles here yet: press n to make the first backup."))
        elif self.last_result is None:
            hint = "v verifies the highlighted bundle; R restores from it (you see the plan first)."
            self.query_one("#bk-result", Static).update(Text(hint))

    def _show_info(self) -> None:
        view = self.view
        if view is None:
            return
        info = self.query_one("#bk-info", Static)
        info.remove_class("problem")
        mode = "FULL (config, history, TLS; the queue only while the router is stopped)" if self.full else "config only"
        text = Text(f"{len(view.bundles)} bundle(s) in {view.directory}; an empty passphrase uses {view.secret}\n")
        text.append("restore mode: ")
        text.append(mode, style="bold")
        text.append("  (F switches)")
        info.update(text)

    def current(self) -> str | None:
        table = self.query_one(DataTable)
        if self.view is None or not self.view.bundles or table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value)

    # -- progress ------------------------------------------------------------------------------------
    def _start(self, what: str) -> bool:
        if self.busy is not None:
            self.notify(f"wait: {self.busy}", title="A backup operation is running", severity="warning")
            return False
        self.busy = what
        self.query_one("#bk-busy-text", Label).update(what)
        self.query_one("#bk-busy").add_class("running")
        return True

    def _stop(self) -> None:
        self.busy = None
        self.query_one("#bk-busy").remove_class("running")

    def _result(self, text: Text) -> None:
        self.last_result = text.plain  # tests and the next refresh read it
        self.query_one("#bk-result", Static).update(text)

    def _failed(self, title: str, message: str, note: str = "Nothing was changed.") -> None:
        self._stop()
        if "encrypted with a key file" in message:
            note = (note + "\n" if note else "") + (
                "At the console: leave the passphrase empty to use the key file the config names (backup.key_file)."
            )
        self._result(styled(self.app, f"{title}: {message}", "error"))
        self.app.push_screen(MessageScreen(title, f"{message}\n\n{note}".strip(), error=True))

    # -- create --------------------------------------------------------------------------------------
    def action_create(self) -> None:
        if self.busy is not None:
            self.notify(f"wait: {self.busy}", title="A backup operation is running", severity="warning")
            return

        def first(passphrase: str | None) -> None:
            if passphrase is None:
                return
            if not passphrase:
                self._create(None)
                return

            def second(again: str | None) -> None:
                if again is None:
                    return
                if again != passphrase:
                    self._failed("No backup made", "the two passphrases differ", "Press n to try again.")
                    return
                self._create(passphrase)

            self.app.push_screen(PassphraseScreen("Type the same passphrase again"), second)

        self.app.push_screen(PassphraseScreen("Passphrase for the new backup"), first)

    def _create(self, passphrase: str | None) -> None:
        if not self._start("Making a backup: config, history, TLS and a queue snapshot, encrypted…"):
            return

        def done(run: BackupRun) -> None:
            self._stop()
            self._result(styled(self.app, f"OK: {run.summary()}", "success"))
            self.notify(f"backup {run.bundle.name} made", title="Backup")
            self.action_reload()

        self.run_backend(
            "Making a backup",
            lambda: self.backend.backup_create(passphrase),
            done,
            on_error=lambda msg: self._failed("The backup failed", msg, "No bundle was written."),
        )

    # -- verify --------------------------------------------------------------------------------------
    def action_verify(self) -> None:
        name = self.current()
        if name is None:
            self.app.bell()
            return

        def go(passphrase: str | None) -> None:
            if passphrase is None or not self._start(f"Verifying {name}: decrypting and checking every file…"):
                return
            self.run_backend(
                f"Verifying {name}",
                lambda: self.backend.backup_verify(name, passphrase or None),
                lambda contents: self._verified(name, contents),
                on_error=lambda msg: self._failed(f"{name} did NOT verify", msg, "The bundle was not changed."),
            )

        self.app.push_screen(PassphraseScreen(f"Passphrase to open {name}"), go)

    def _verified(self, name: str, contents: BundleContents) -> None:
        self._stop()
        h = contents.header
        text = styled(self.app, "OK", "success", bold=True)
        text.append(
            f": {name} is intact: every chunk authenticated, {contents.files} files "
            f"({human_size(contents.bytes)}) match their sha256.\n"
            f"Made {h.created} on {h.host} by dicom-router {h.router_version}; holds {contents.summary()}."
        )
        self._result(text)

    # -- restore -------------------------------------------------------------------------------------
    def action_toggle_full(self) -> None:
        self.full = not self.full
        self._show_info()

    def action_restore(self) -> None:
        name = self.current()
        if name is None:
            self.app.bell()
            return
        config_only = not self.full

        def go(passphrase: str | None) -> None:
            if passphrase is None or not self._start(f"Opening {name}: decrypting and checking every file…"):
                return
            self.run_backend(
                f"Preparing the restore from {name}",
                lambda: self.backend.restore_plan(name, passphrase or None, config_only=config_only),
                self._preview,
                on_error=lambda msg: self._failed(f"Cannot restore from {name}", msg),
            )

        self.app.push_screen(PassphraseScreen(f"Passphrase to open {name}"), go)

    def _preview(self, plan: RestorePlan) -> None:
        self._stop()
        mode = "config only" if plan.config_only else "FULL"

        def previewed(go_on: bool | None) -> None:
            if not go_on:
                self._declined(plan)
                return
            what = "The config" if plan.config_only else "Every part the plan lists"
            body = (
                f"{what} from {plan.name} takes the place of what is live now. The config goes through "
                "`config apply` (a new version, source restore, under your name) and the router reloads."
            )
            self.app.push_screen(
                ConfirmScreen(f"Restore ({mode}) from {plan.name} now?", plain(body), yes="Restore", danger=True),
                confirmed,
            )

        def confirmed(yes: bool | None) -> None:
            if not yes:
                self._declined(plan)
                return
            if not self._start(f"Restoring from {plan.name}…"):
                self._declined(plan)
                return
            self.run_backend(
                f"Restoring from {plan.name}",
                lambda: self.backend.restore_confirmed(plan),
                lambda result: self._restored(plan.name, result),
                on_error=lambda msg: self._failed(f"The restore from {plan.name} failed", msg, ""),
            )

        self.app.push_screen(RestorePreviewScreen(f"Restore plan ({mode}) — read it, then Enter or Esc", plan.render()),
                             previewed)  # fmt: skip

    def _declined(self, plan: RestorePlan) -> None:
        self._result(Text(f"not restored from {plan.name}: nothing was changed"))
        self.run_backend("Dropping the decrypted copy", lambda: self.backend.restore_declined(plan), _ignore)

    def _restored(self, name: str, result: RestoreResult) -> None:
        self._stop()
        lines = [f"restored from {name}: {', '.join(result.restored)}", f"config: {result.config_message}"]
        if result.unchanged:
            lines.append(f"already identical, left as they were: {', '.join(result.unchanged)}")
        lines += [f"previous state kept in {aside}" for aside in result.moved_aside]
        lines += [f"NOT restored — {part}: {why}" for part, why in result.skipped.items()]
        text = "\n".join(lines)
        self._result(styled(self.app, text, "success" if result.complete else "warning"))
        self.app.push_screen(MessageScreen("Restored" if result.complete else "Restored in part", text,
                                           error=not result.complete))  # fmt: skip
        self.action_reload()


def _ignore(_: Any) -> None:
    pass
