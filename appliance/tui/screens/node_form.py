"""Add or edit one DICOM node. Every keystroke is checked against the same rules `config apply` uses
(Backend.validate_node, in a thread: it reads the live config); the problem shows under its field and Save
stays disabled until the node is valid. Saving asks why, then goes through `config apply` (source console).

Below the address: DICOM TLS (on/off, the name the peer's certificate must carry) and storage commitment
(on/off, minutes without a report before a warning). The node's other TLS and commitment settings (CA bundle,
mutual authentication, wait_seconds) are kept as the file has them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static
from textual.worker import get_current_worker

from ..backend import BackendError
from ..widgets import MessageScreen, ReasonScreen
from .config_common import apply_outcome, backend_of

ROLES = [
    ("destination — the router sends to it", "destination"),
    ("source — it sends to the router", "source"),
    ("both", "both"),
]
ENVIRONMENTS = [
    ("production — real patients", "production"),
    ("test — test data only, never mixed with production", "test"),
]
TLS_CHOICES = [
    ("off — plain DICOM", False),
    ("on — DICOM over TLS (certificates: docs/tls.md)", True),
]
COMMITMENT_CHOICES = [
    ("off — sent is done", False),
    ("on — ask it to confirm it stored each object", True),
]
SELECTS = ("role", "environment", "tls_enabled", "commitment_enabled")

# Field id → (label, hint shown when it is empty or not a number)
FIELDS = {
    "name": ("Node name", "the name routes use, e.g. PACS_MAIN"),
    "ae_title": ("AE title", "required: the AE title the node answers to (ask its owner; 1-16 characters)"),
    "host": ("Host", "required: IP address or DNS name"),
    "port": ("Port", "a port number 1-65535 (DICOM is usually 104 or 11112)"),
    "max_associations": ("Max associations", "a number 1-32 (empty = 2): parallel connections to this node"),
}
# Inputs below the TLS and commitment switches: field id → (label, hint).
TRUST_FIELDS = {
    "tls_peer_name": ("TLS peer name", "certificate name; empty = its host"),
    "commitment_deadline": ("Commit deadline", "minutes until a warning; empty = 60"),
}


@dataclass
class NodeDraft:
    """What the form starts from: empty for a new node, the current values when editing."""

    name: str = ""
    ae_title: str = ""
    host: str = ""
    port: str = ""
    role: str = "destination"
    max_associations: str = ""
    environment: str = "production"
    tls_enabled: bool = False
    tls_peer_name: str = ""
    commitment_enabled: bool = False
    commitment_deadline: str = ""  # empty: the default (60 minutes)
    editing: str | None = None  # the node's current name when editing
    routes: tuple[str, ...] = ()  # routes that use it (renaming would break them)


class NodeFormScreen(ModalScreen[str | None]):
    """Returns the apply result in words after a successful save; None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]
    DEFAULT_CSS = """
    NodeFormScreen #node-fields { height: auto; max-height: 55vh; }  /* scrolls: Save stays on an 80x24 screen */
    NodeFormScreen .field-row { height: 1; }
    NodeFormScreen .field-row Label { width: 18; }
    NodeFormScreen .field-row:focus-within Label { text-style: bold reverse; }
    NodeFormScreen .field-row Input, NodeFormScreen .field-row Select { width: 1fr; background: $panel; }
    NodeFormScreen .field-row Input:focus { background: $boost; }
    NodeFormScreen .field-problem { color: $text-error; width: 1fr; height: auto; padding-left: 18; }
    NodeFormScreen .field-problem.-empty { display: none; }
    NodeFormScreen #node-note { margin-top: 1; color: $text-muted; }
    """

    def __init__(self, draft: NodeDraft):
        super().__init__()
        self.draft = draft
        self.problems: dict[str, str] = {"?": "not checked yet"}
        self.saving = False

    def compose(self) -> ComposeResult:
        d = self.draft
        title = f"Edit node {d.editing}" if d.editing else "Add a node"
        with Vertical(id="node-form", classes="dialog"):
            yield Label(title, id="dialog-title")
            with VerticalScroll(id="node-fields"):
                for key, (label, hint) in FIELDS.items():
                    if key == "max_associations":
                        with Horizontal(classes="field-row"):
                            yield Label("Role")
                            yield Select(ROLES, value=d.role or "destination", allow_blank=False, id="role",
                                         compact=True)  # fmt: skip
                        yield Label("", id="problem-role", classes="field-problem -empty")
                    with Horizontal(classes="field-row"):
                        yield Label(label)
                        yield Input(value=str(getattr(d, key)), id=key, placeholder=hint, compact=True)
                    yield Label("", id=f"problem-{key}", classes="field-problem -empty")
                with Horizontal(classes="field-row"):
                    yield Label("Environment")
                    yield Select(ENVIRONMENTS, value=d.environment or "production", allow_blank=False,
                                 id="environment", compact=True)  # fmt: skip
                yield Label("", id="problem-environment", classes="field-problem -empty")
                yield from self._switch("TLS", "tls_enabled", TLS_CHOICES, d.tls_enabled)
                yield from self._input("tls_peer_name", d.tls_peer_name)
                yield from self._switch("Commitment", "commitment_enabled", COMMITMENT_CHOICES, d.commitment_enabled)
                yield from self._input("commitment_deadline", d.commitment_deadline)
                yield Static(
                    "Save asks why, then goes through `config apply`: into the config history under your name; "
                    "the router reloads.",
                    id="node-note",
                )
            yield Label("", id="problem-node", classes="field-problem -empty")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", id="save", variant="primary", disabled=True, compact=True)
                yield Button("Cancel (Esc)", id="cancel", compact=True)

    @staticmethod
    def _switch(label: str, key: str, choices: list[tuple[str, bool]], value: bool) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(label)
            yield Select(choices, value=value, allow_blank=False, id=key, compact=True)
        yield Label("", id=f"problem-{key}", classes="field-problem -empty")

    @staticmethod
    def _input(key: str, value: str) -> ComposeResult:
        label, hint = TRUST_FIELDS[key]
        with Horizontal(classes="field-row"):
            yield Label(label)
            yield Input(value=value, id=key, placeholder=hint, compact=True)
        yield Label("", id=f"problem-{key}", classes="field-problem -empty")

    def on_mount(self) -> None:
        self.query_one("#name" if not self.draft.editing else "#ae_title", Input).focus()
        self._validate()

    # -- validation as you type --------------------------------------------------------------------
    def values(self) -> tuple[str, dict[str, Any]]:
        inputs = [k for k in (*FIELDS, *TRUST_FIELDS) if k != "name"]
        fields: dict[str, Any] = {k: self.query_one(f"#{k}", Input).value.strip() for k in inputs}
        for key in SELECTS:
            fields[key] = self.query_one(f"#{key}", Select).value
        return self.query_one("#name", Input).value.strip(), fields

    def on_input_changed(self, event: Input.Changed) -> None:
        self._validate()

    def on_select_changed(self, event: Select.Changed) -> None:
        self._validate()

    def _validate(self) -> None:
        self.query_one("#save", Button).disabled = True  # until this check answers
        name, fields = self.values()
        self._check(name, fields)

    @work(thread=True, exclusive=True, group="validate")
    def _check(self, name: str, fields: dict[str, Any]) -> None:
        try:
            problems = backend_of(self.app).validate_node(name, fields, editing=self.draft.editing)
        except BackendError as exc:
            problems = {"node": str(exc)}
        d = self.draft
        if d.editing and name and name != d.editing and d.routes and "name" not in problems:
            problems["name"] = f"route(s) {', '.join(d.routes)} use {d.editing}: renaming it would break them"
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_problems, problems)

    def _show_problems(self, problems: dict[str, str]) -> None:
        self.problems = problems
        shown = set()
        hints = {key: hint for key, (_, hint) in (*FIELDS.items(), *TRUST_FIELDS.items())}
        for key in (*FIELDS, *SELECTS, *TRUST_FIELDS):
            msg = problems.get(key, "")
            if msg == "Field required" or msg.startswith(
                ("Input should be a valid integer", "Input should be a valid number")
            ):
                msg = hints.get(key, "choose a role")
            self._set_problem(key, msg)
            shown.add(key)
        self._set_problem("node", "\n".join(f"{k}: {v}" for k, v in problems.items() if k not in shown))
        self.query_one("#save", Button).disabled = bool(problems) or self.saving

    def _set_problem(self, key: str, message: str) -> None:
        label = self.query_one(f"#problem-{key}", Label)
        label.update(message)
        label.set_class(not message, "-empty")  # no blank line under a field that is fine

    # -- save ----------------------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.query_one("#save", Button).disabled:
            self.focus_next()  # Enter walks through the fields until the node is valid
        else:
            self.action_save()

    def action_save(self) -> None:
        if self.problems or self.saving or self.query_one("#save", Button).disabled:
            self.app.bell()
            return
        name, fields = self.values()
        what = "Change" if self.draft.editing else "Add"
        rename = f" (renamed from {self.draft.editing})" if self.draft.editing and name != self.draft.editing else ""
        test = ", TEST environment" if fields["environment"] == "test" else ""
        body = (
            f"{what} node {name}{rename}: {fields['ae_title']}@{fields['host']}:{fields['port']}, {fields['role']}"
            f"{test}{_trust_words(fields)}.\n"
            "Why? The reason and ticket go into the config history and the audit trail."
        )

        def go(answer: tuple[str, str | None] | None) -> None:
            if answer is not None:
                self.saving = True
                self.query_one("#save", Button).disabled = True
                self._save(name, fields, answer[0], answer[1])

        self.app.push_screen(ReasonScreen(f"{what} node {name}", body), go)

    @work(thread=True, exclusive=True, group="save")
    def _save(self, name: str, fields: dict[str, Any], reason: str, ticket: str | None) -> None:
        try:
            result = backend_of(self.app).save_node(name, fields, reason, editing=self.draft.editing, ticket=ticket)
        except BackendError as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        self.app.call_from_thread(self.dismiss, f"node {name} saved: {apply_outcome(result)}")

    def _failed(self, message: str) -> None:
        self.saving = False
        self._validate()
        self.app.push_screen(
            MessageScreen("Not saved — nothing was changed", f"{message}\n\nThe live config is unchanged.", error=True)
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


def _trust_words(fields: dict[str, Any]) -> str:
    """', TLS (peer name pacs.example), storage commitment (warning after 90 min)' for the save dialog."""
    words = ""
    if fields.get("tls_enabled"):
        peer = fields.get("tls_peer_name")
        words += f", TLS (peer name {peer})" if peer else ", TLS"
    if fields.get("commitment_enabled"):
        deadline = fields.get("commitment_deadline")
        words += f", storage commitment (warning after {deadline} min)" if deadline else ", storage commitment"
    return words
