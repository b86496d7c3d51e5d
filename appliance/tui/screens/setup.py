"""First-boot setup: the console's screen on a fresh appliance, which has no router.yaml yet.

It asks for the router's AE title and port, the appliance's network address (DHCP or static) and NTP
servers, the first destination (with a real C-ECHO test) and who may send. Every field is checked as you type
with `config check`'s own rules (Backend.setup_problems) and a problem shows under its field. Save writes the
first config through `config apply` (history and audit under the operator's name); on the appliance,
dicom-router-system.service then applies the network, NTP and firewall settings and starts the router.
Keys: Tab / Shift+Tab move between fields, ctrl+t C-ECHO test, ctrl+s save, F1 help, ctrl+q quit."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from ..backend import SETUP_LABELS, BackendError, SetupAnswers
from ..widgets import ConfirmScreen, MessageScreen
from .config_common import apply_outcome, backend_of

NET_MODES = [("DHCP — the network assigns the address (default)", "dhcp"), ("static — type it below", "static")]
UNKNOWN_CHOICES = [
    ("off — only the sender named above (safest)", False),
    ("on — any AE title from the network below", True),
]
# Field id → (label, placeholder). Sections are the headings between them (see compose).
FIELDS = {
    "ae_title": ("AE title", "the router's own AE title: senders call it by this (1-16 characters)"),
    "port": ("DICOM port", "104 (the DICOM port); 11112 if the site uses that"),
    "net_address": ("Address/prefix", "static only: e.g. 10.1.2.50/24"),
    "net_gateway": ("Gateway", "static only: the default router, e.g. 10.1.2.1"),
    "net_dns": ("DNS servers", "addresses, separated by spaces; empty = from DHCP"),
    "ntp_servers": ("NTP servers", "names or addresses; empty = keep the image's time sources"),
    "dest_name": ("Name", "what this router calls it, e.g. PACS_MAIN"),
    "dest_ae": ("AE title", "the AE title the PACS answers to (ask the PACS team)"),
    "dest_host": ("Host", "the PACS's IP address (or DNS name)"),
    "dest_port": ("Port", "104 unless the PACS team says otherwise"),
    "src_name": ("Name", "what this router calls it, e.g. CT_SCANNER_1"),
    "src_ae": ("AE title", "the modality's own (calling) AE title"),
    "src_host": ("Address", "the modality's IP address"),
    "allow_from": ("Senders' network", "with unknown callers: their network, e.g. 10.1.2.0/24"),
}
SELECTS = {"net_mode": "net_address", "accept_unknown": "allow_from"}  # select → the field its problem shows at
STATIC_ONLY = ("net_address", "net_gateway")

INTRO = (
    "This appliance has no router configuration yet ({path}). Fill in the fields below; each is checked as "
    "you type and a problem shows under it in red. Nothing changes until you save (ctrl+s): then the router "
    "starts, and the network, time and firewall settings are applied. Everything here can be changed later "
    "(Endpoints e, Config history c)."
)
SENDERS = (
    "The router accepts studies only from senders it knows, by AE title, and the appliance firewall lets in "
    "only their addresses. Name the device that sends the first study (a modality, or the PACS if it sends "
    "back); add more later on the Endpoints screen (e). Only if you cannot name it: accept unknown callers "
    "from one network — then any device there can send, under any AE title."
)
HELP = """First-boot setup — the appliance has no router.yaml yet.

FIELDS
  This router: the AE title senders call and the DICOM port it listens on (104).
  Network: DHCP, or a static address/prefix with gateway and DNS servers.
  Time: NTP servers of the hospital; empty keeps the image's.
  First destination: where every study goes (the PACS). ctrl+t (or the button) sends a real C-ECHO
    as the AE title typed above and says in words whether the PACS answered.
  Who may send: one known sender (AE title and IP address), or unknown callers from one network.

KEYS
  Tab / Shift+Tab next / previous field · ctrl+t C-ECHO test · ctrl+s save · F1 this help
  ctrl+q quit (nothing saved; the setup opens again at the next login)

SAVE
  Writes /etc/dicom-router/router.yaml through `config apply`: version 1 in the config history under your
  name, with an audit entry. The appliance then applies network, NTP and firewall and starts the router;
  the console goes on to the dashboard. If the network address changed, remote sessions use the new one."""


class SetupScreen(Screen[None]):
    TITLE = "First-boot setup"
    HELP = HELP
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+t", "echo", "C-ECHO test", priority=True),
        Binding("f1", "app.help", "Help"),  # `?` would be typed into the field
    ]

    def __init__(self) -> None:
        super().__init__()
        self.problems: dict[str, str] = {"form": "not checked yet"}
        self.saving = False

    def compose(self) -> ComposeResult:
        defaults = SetupAnswers()
        yield Header()
        with VerticalScroll(id="setup-body"):
            yield Static(INTRO.format(path=backend_of(self.app).config_path), id="setup-intro", markup=False)
            yield Label("1  This router", classes="setup-section")
            yield from self._inputs(("ae_title", "port"), defaults)
            yield Label("2  Network address of this appliance", classes="setup-section")
            yield from self._select("Mode", "net_mode", NET_MODES, defaults.net_mode)
            yield from self._inputs(("net_address", "net_gateway", "net_dns"), defaults)
            yield Label("3  Time", classes="setup-section")
            yield from self._inputs(("ntp_servers",), defaults)
            yield Label("4  First destination: where studies go (the PACS)", classes="setup-section")
            yield from self._inputs(("dest_name", "dest_ae", "dest_host", "dest_port"), defaults)
            with Horizontal(classes="setup-row"):
                yield Label("")
                yield Button("C-ECHO test (ctrl+t)", id="echo", compact=True)
            yield Static("not tested yet", id="echo-result", markup=False)
            yield Label("5  Who may send studies to the router", classes="setup-section")
            yield Static(SENDERS, classes="setup-note", markup=False)
            yield from self._inputs(("src_name", "src_ae", "src_host"), defaults)
            yield from self._select("Unknown callers", "accept_unknown", UNKNOWN_CHOICES, defaults.accept_unknown)
            yield from self._inputs(("allow_from",), defaults)
            yield Label("", id="problem-form", classes="field-problem -empty")
            with Horizontal(classes="buttons"):
                yield Button("Save (ctrl+s)", id="save", variant="primary", disabled=True, compact=True)
        yield Footer()

    @staticmethod
    def _inputs(keys: tuple[str, ...], defaults: SetupAnswers) -> ComposeResult:
        for key in keys:
            label, hint = FIELDS[key]
            with Horizontal(classes="setup-row"):
                yield Label(label)
                yield Input(value=str(getattr(defaults, key)), id=key, placeholder=hint, compact=True)
            yield Label("", id=f"problem-{key}", classes="field-problem -empty")

    @staticmethod
    def _select(label: str, key: str, choices: list[tuple[str, Any]], value: Any) -> ComposeResult:
        with Horizontal(classes="setup-row"):
            yield Label(label)
            yield Select(choices, value=value, allow_blank=False, id=key, compact=True)

    def on_mount(self) -> None:
        self.query_one("#ae_title", Input).focus()
        self._static_fields()
        self._validate()

    # -- validation as you type --------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: self.query_one(f"#{k}", Input).value.strip() for k in FIELDS}
        for key in SELECTS:
            out[key] = self.query_one(f"#{key}", Select).value
        return out

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("ae_title", "dest_ae", "dest_host", "dest_port"):
            self._echo_result("not tested with these values yet", "")
        self._validate()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "net_mode":
            self._static_fields()
        self._validate()

    def _static_fields(self) -> None:
        static = self.query_one("#net_mode", Select).value == "static"
        for key in STATIC_ONLY:
            self.query_one(f"#{key}", Input).disabled = not static

    def _validate(self) -> None:
        self.query_one("#save", Button).disabled = True  # until this check answers
        self._check(self.values())

    @work(thread=True, exclusive=True, group="validate")
    def _check(self, fields: dict[str, Any]) -> None:
        try:
            problems = backend_of(self.app).setup_problems(fields)
        except BackendError as exc:
            problems = {"form": str(exc)}
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_problems, problems)

    def _show_problems(self, problems: dict[str, str]) -> None:
        self.problems = problems
        for key in FIELDS:
            self._set_problem(key, problems.get(key, ""))
        self._set_problem("form", problems.get("form", ""))
        self.query_one("#save", Button).disabled = bool(problems) or self.saving

    def _set_problem(self, key: str, message: str) -> None:
        label = self.query_one(f"#problem-{key}", Label)
        label.update(message)
        label.set_class(not message, "-empty")  # no blank line under a field that is fine

    # -- C-ECHO test ---------------------------------------------------------------------------------
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "echo":
            self.action_echo()
        elif event.button.id == "save":
            self.action_save()

    def action_echo(self) -> None:
        self._echo_result(f"C-ECHO to {self.query_one('#dest_host', Input).value.strip() or '?'} …", "")
        self._echo(self.values())

    @work(thread=True, exclusive=True, group="echo")
    def _echo(self, fields: dict[str, Any]) -> None:
        try:
            res = backend_of(self.app).setup_echo(fields)
            text, level = (f"OK — {res.message}", "ok") if res.ok else (_echo_failed(res.message, fields), "error")
        except BackendError as exc:
            text, level = str(exc), "error"
        except Exception as exc:  # an echo must never take the console down
            text, level = f"FAILED — the echo itself failed: {exc}", "error"
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._echo_result, text, level)

    def _echo_result(self, text: str, level: str) -> None:
        box = self.query_one("#echo-result", Static)
        box.update(text)
        box.set_class(level == "ok", "ok")
        box.set_class(level == "error", "error")

    # -- save ----------------------------------------------------------------------------------------
    def action_save(self) -> None:
        if self.saving:
            return
        if self.problems or self.query_one("#save", Button).disabled:
            self.app.bell()
            first = next((k for k in FIELDS if k in self.problems), None)
            if first is not None:
                self.query_one(f"#{first}", Input).focus()
            where = ", ".join(SETUP_LABELS.get(k, k) for k in self.problems)
            self.notify(f"not saved: fix {where} first (in red under the field)", severity="error")
            return
        fields = self.values()

        def go(yes: bool | None) -> None:
            if yes:
                self.saving = True
                self.query_one("#save", Button).disabled = True
                self._save(fields)

        self.app.push_screen(ConfirmScreen("Save and start the router?", _summary(fields), yes="Save"), go)

    @work(thread=True, exclusive=True, group="save")
    def _save(self, fields: dict[str, Any]) -> None:
        try:
            result = backend_of(self.app).setup_save(fields)
        except BackendError as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        self.app.call_from_thread(self._saved, apply_outcome(result))

    def _saved(self, outcome: str) -> None:
        finish = getattr(self.app, "setup_finished", None)
        if callable(finish):
            finish(f"Setup saved: {outcome}")

    def _failed(self, message: str) -> None:
        self.saving = False
        self._validate()
        self.app.push_screen(MessageScreen("Not saved — nothing was changed", message, error=True))


def _echo_failed(message: str, fields: dict[str, Any]) -> str:
    return (
        f"FAILED — {message}. Check the PACS's AE title, address and port with its team, and that the PACS "
        f"knows this router (AE title {fields.get('ae_title') or '?'}, this appliance's address). "
        "You can still save and echo again later (Endpoints, e)."
    )


def _summary(fields: dict[str, Any]) -> str:
    a = SetupAnswers.from_fields(fields)
    net = (
        f"static {a.net_address}" + (f" via {a.net_gateway}" if a.net_gateway else "")
        if a.net_mode == "static"
        else "DHCP"
    )
    senders = f"{a.src_name} ({a.src_ae} at {a.src_host})" if a.has_source else "no named sender"
    if a.accept_unknown:
        senders += f"; unknown callers from {a.allow_from}"
    return (
        f"Router {a.ae_title} on port {a.port}; network {net}"
        + (f", DNS {a.net_dns}" if a.net_dns else "")
        + f"; time from {a.ntp_servers or 'the image default'}.\n"
        f"Everything to {a.dest_name} ({a.dest_ae} at {a.dest_host}:{a.dest_port}); senders: {senders}.\n\n"
        "This is recorded as version 1 in the config history under your name. A changed network address "
        "takes effect within seconds."
    )
