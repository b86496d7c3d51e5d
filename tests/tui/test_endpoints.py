"""Endpoints screen, driven by keys in a pilot: echo against real peers (DCMTK storescp, Orthanc checking the
called AE title, a closed port), the wrong-AE-title fix end to end, validation as you type, remove with
its confirmation (yes and no), refusals in words; snapshots at 80×24 and 120×40."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Label, Select, Static

from appliance.router.scu import EchoResult
from appliance.tui.screens.endpoints import EndpointsScreen
from appliance.tui.screens.node_form import NodeFormScreen
from appliance.tui.widgets import ConfirmScreen, HelpScreen, MessageScreen, ReasonScreen
from tests.support.peers import Orthanc, StoreSCP, free_port
from tests.tui.fixtures_config import OPERATOR, Site, make_site, run_async, settle, snap_site, wait_for


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Echo times show in local time: pin it, so text and snapshots do not depend on the machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def screen(pilot: Pilot[Any]) -> EndpointsScreen:
    s = pilot.app.screen
    assert isinstance(s, EndpointsScreen), f"expected the endpoints screen, got {s!r}"
    return s


def detail(pilot: Pilot[Any]) -> str:
    return str(screen(pilot).query_one("#ep-detail", Static).visual)


def dialog_text(pilot: Pilot[Any]) -> str:
    s = pilot.app.screen
    return " ".join(str(w.visual) for w in s.query("Label, Static"))


async def open_endpoints(pilot: Pilot[Any], highlight: str | None = None) -> EndpointsScreen:
    await pilot.press("e")
    await settle(pilot)
    if highlight:
        await go_to(pilot, highlight)
    return screen(pilot)


async def go_to(pilot: Pilot[Any], name: str) -> None:
    """Move the highlight with the arrow keys, as a person would."""
    ep = screen(pilot)
    names = [r.name for r in ep.rows]
    assert name in names, names
    step = "down" if names.index(name) > names.index(ep.current_name() or names[0]) else "up"
    while ep.current_name() != name:
        await pilot.press(step)
    await settle(pilot)


async def type_into(pilot: Pilot[Any], field: str, text: str, keys: bool = False) -> None:
    """Replace a field's text: key by key with `keys`, else at once (the same Input.Changed either way;
    a pilot key press costs ~60 ms, so long texts are pasted)."""
    box = pilot.app.screen.query_one(f"#{field}", Input)
    box.focus()
    if keys:
        await pilot.press("home", "ctrl+k", *text)
    else:
        box.value = text
    await settle(pilot)


async def give_reason(pilot: Pilot[Any], reason: str, ticket: str = "") -> None:
    dialog = pilot.app.screen
    assert isinstance(dialog, ReasonScreen)
    dialog.query_one("#reason", Input).value = reason
    await pilot.press("enter")  # on to the ticket
    dialog.query_one("#ticket", Input).value = ticket
    await pilot.press("enter")
    await settle(pilot)


@run_async
async def test_echo_shows_ok_with_rtt_and_the_reason_a_node_is_down(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, ae_title="PACS").start()
    closed = free_port()  # nothing listens here
    site = make_site(tmp_path / "site", story=False, pacs_host="127.0.0.1", pacs_port=scp.port,
                     archive=("127.0.0.1", closed))  # fmt: skip
    app = site.app()
    async with app.run_test(size=(100, 30)) as pilot:
        ep = await open_endpoints(pilot, highlight="PACS_MAIN")
        assert "not echoed from this console yet" in detail(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: ep.echoes["PACS_MAIN"].ok is not None, "the echo to PACS_MAIN")
        assert ep.echoes["PACS_MAIN"].ok is True
        assert "OK in" in detail(pilot) and "answered C-ECHO" in detail(pilot)
        assert str(ep.query_one("#nodes").get_cell("PACS_MAIN", "echo")).startswith("OK ")  # type: ignore[attr-defined]

        await pilot.press("T")  # every node at once; the two modalities are not reachable either
        await wait_for(pilot, lambda: all(e.ok is not None for e in ep.echoes.values()) and len(ep.echoes) == 4,
                       "echo all")  # fmt: skip
        archive = ep.echoes["ARCHIVE"]
        assert archive.ok is False
        assert f"connection refused by 127.0.0.1:{closed}" in archive.message
        assert "nothing listens on that port" in archive.message
        await go_to(pilot, "ARCHIVE")
        assert ep.current_name() == "ARCHIVE" and "FAILED" in detail(pilot) and "connection refused" in detail(pilot)
        assert str(ep.query_one("#nodes").get_cell("ARCHIVE", "echo")) == "FAILED"  # type: ignore[attr-defined]


@run_async
async def test_wrong_ae_title_fixed_at_the_console_lands_in_the_history(tmp_path: Path) -> None:
    """The night's incident: PACS_MAIN's AE title was typed wrong. Echo says so, edit, save with a reason,
    echo again: OK. The change is a console version under the operator's name."""
    pacs = Orthanc(tmp_path, ae_title="PACS").start()  # checks the called AE title, like most PACS
    site = make_site(tmp_path / "site", pacs_host="127.0.0.1", pacs_port=pacs.port)
    app = site.app()
    async with app.run_test(size=(100, 36)) as pilot:
        ep = await open_endpoints(pilot, highlight="PACS_MAIN")
        await pilot.press("t")
        await wait_for(pilot, lambda: ep.echoes["PACS_MAIN"].ok is not None, "the first echo")
        assert "called AE title not recognised — check the AE title on both ends" in detail(pilot)

        await pilot.press("enter")  # Enter (or e) edits the highlighted node
        await settle(pilot)
        assert isinstance(app.screen, NodeFormScreen)
        assert app.screen.query_one("#ae_title", Input).value == "PACS_OLD"
        await type_into(pilot, "ae_title", "PACS", keys=True)
        assert app.screen.query_one("#save", Button).disabled is False
        await pilot.press("ctrl+s")
        await settle(pilot)
        await give_reason(pilot, "PACS AE title is PACS, not PACS_OLD", "INC0042")
        assert isinstance(app.screen, MessageScreen)
        assert "node PACS_MAIN saved: version 5 applied; router not running" in dialog_text(pilot)
        await pilot.press("enter")
        await settle(pilot)

        ep = screen(pilot)
        assert ep.current_name() == "PACS_MAIN" and "PACS@127.0.0.1" in detail(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: ep.echoes["PACS_MAIN"].ok is not None, "the second echo")
        assert ep.echoes["PACS_MAIN"].ok is True

    last = site.metas()[-1]
    assert (last["version"], last["source"], last["author"], last["ticket"]) == (5, "console", OPERATOR, "INC0042")
    assert last["reason"] == "PACS AE title is PACS, not PACS_OLD" and last["outcome"] == "applied"
    assert "# where images go" in site.config_path.read_text()  # Ansible's comments are still there


@run_async
async def test_the_add_form_validates_as_you_type(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    versions = len(site.metas())
    app = site.app()
    async with app.run_test(size=(100, 40)) as pilot:
        await open_endpoints(pilot)
        await pilot.press("a")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, NodeFormScreen)
        save = form.query_one("#save", Button)

        def problem(field: str) -> str:
            return str(form.query_one(f"#problem-{field}", Label).visual)

        assert save.disabled and problem("name").startswith("give the node a name")
        await type_into(pilot, "name", "ARCHIVE")
        assert problem("name") == "a node named ARCHIVE exists already" and save.disabled
        await type_into(pilot, "name", "CT_2")
        assert problem("name") == ""
        await type_into(pilot, "ae_title", "A_TITLE_LONGER_THAN_16")
        assert "is not a valid AE title: use 1-16 printable characters" in problem("ae_title") and save.disabled
        await type_into(pilot, "host", "10.1.2.5")
        await type_into(pilot, "port", "1o4", keys=True)
        assert problem("port").startswith("a port number 1-65535") and save.disabled
        await type_into(pilot, "port", "104")
        await type_into(pilot, "ae_title", "CT1")
        assert problem("ae_title") == "AE title CT1 is already used by CT_SCANNER_1" and save.disabled
        await type_into(pilot, "ae_title", "CT2")
        assert problem("ae_title") == problem("port") == "" and save.disabled is False

        await pilot.press("ctrl+s")  # the reason dialog, then cancel it: nothing is saved
        await settle(pilot)
        assert isinstance(app.screen, ReasonScreen)
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is form and len(site.metas()) == versions

        await pilot.press("ctrl+s")
        await settle(pilot)
        await pilot.press("enter", "enter")  # reason, ticket: an empty reason is not accepted
        await settle(pilot)
        assert isinstance(app.screen, ReasonScreen) and "a reason is required" in dialog_text(pilot)
        await give_reason(pilot, "new CT in room 2")
        assert isinstance(app.screen, MessageScreen) and "node CT_2 saved: version 5 applied" in dialog_text(pilot)
    assert site.metas()[-1]["source"] == "console" and "CT_2" in site.config_path.read_text()


@run_async
async def test_a_change_apply_refuses_is_shown_and_nothing_changes(tmp_path: Path) -> None:
    """The node is valid alone, but a route sends to it: as a source the config would be invalid."""
    site = make_site(tmp_path / "site")
    live = site.config_path.read_bytes()
    app = site.app()
    async with app.run_test(size=(100, 40)) as pilot:
        await open_endpoints(pilot, highlight="PACS_MAIN")
        await pilot.press("e")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, NodeFormScreen)
        form.query_one("#role").focus()
        await pilot.press("enter", "down", "enter")  # open the role list, pick "source"
        await settle(pilot)
        assert form.values()[1]["role"] == "source" and not form.query_one("#save", Button).disabled
        await pilot.press("ctrl+s")
        await settle(pilot)
        await give_reason(pilot, "make it a source")
        assert isinstance(app.screen, MessageScreen) and app.screen.error
        text = dialog_text(pilot)
        assert "Not saved — nothing was changed" in text and "a route can only send to a node with role" in text
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is form  # still editing: fix it or Esc
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, EndpointsScreen)
    assert site.config_path.read_bytes() == live


@run_async
async def test_the_environment_is_set_in_the_form_and_a_crossing_route_is_named(tmp_path: Path) -> None:
    """A node's environment (production/test) is edited like its other fields; making a source TEST while a route
    carries everything to the production PACS is refused at the field, before Save, in config check's words."""
    site = make_site(tmp_path / "site", story=False)
    app = site.app()
    async with app.run_test(size=(100, 40)) as pilot:
        await open_endpoints(pilot, highlight="CT_SCANNER_1")
        await pilot.press("e")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, NodeFormScreen) and form.values()[1]["environment"] == "production"
        form.query_one("#environment", Select).value = "test"  # as picked from its list
        await settle(pilot)
        problem = str(form.query_one("#problem-environment", Label).visual)
        assert problem.startswith("route 'everything-to-pacs' could carry objects from test source 'CT_SCANNER_1' "
                                  "to production destination 'PACS_MAIN'")  # fmt: skip
        assert form.query_one("#save", Button).disabled
        await pilot.press("escape")
        await settle(pilot)

        await go_to(pilot, "ARCHIVE")  # any other change leaves the environment as it was
        await pilot.press("e")
        await settle(pilot)
        await type_into(pilot, "port", "11112")
        await pilot.press("ctrl+s")
        await settle(pilot)
        await give_reason(pilot, "ARCHIVE moved to port 11112")
        assert "node ARCHIVE saved" in dialog_text(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert "environment:" not in site.config_path.read_text()  # the default is not written into the file

        await pilot.press("a")
        await settle(pilot)
        await type_into(pilot, "name", "PACS_TEST")
        await type_into(pilot, "ae_title", "PACST")
        await type_into(pilot, "host", "10.1.2.11")
        await type_into(pilot, "port", "104")
        app.screen.query_one("#environment", Select).value = "test"
        await settle(pilot)
        assert app.screen.query_one("#save", Button).disabled is False  # no route sends to it yet
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert "TEST environment" in dialog_text(pilot)  # the reason dialog says what is being saved
        await give_reason(pilot, "test PACS for phantoms")
        await pilot.press("enter")
        await settle(pilot)
        await go_to(pilot, "PACS_TEST")
        assert "TEST environment" in detail(pilot)
        assert str(screen(pilot).query_one("#nodes").get_cell("PACS_TEST", "name")) == "PACS_TEST TEST"  # type: ignore[attr-defined]
    assert "PACS_TEST: {ae_title: PACST, host: 10.1.2.11, port: 104, role: destination, environment: test}" in (
        site.config_path.read_text()
    )


@run_async
async def test_remove_asks_no_means_no_and_a_node_in_use_is_refused(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    versions = len(site.metas())
    app = site.app()
    async with app.run_test(size=(100, 30)) as pilot:
        ep = await open_endpoints(pilot, highlight="PACS_MAIN")
        assert "used by route(s): everything-to-pacs" in detail(pilot)
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, MessageScreen) and app.screen.error
        assert "route(s) everything-to-pacs still use PACS_MAIN" in dialog_text(pilot)
        assert "Nothing was changed" in dialog_text(pilot)
        await pilot.press("enter")
        await settle(pilot)

        await go_to(pilot, "MR_1")
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen) and "Remove node MR_1?" in dialog_text(pilot)
        await pilot.press("n")
        await settle(pilot)
        assert app.screen is ep and len(site.metas()) == versions

        await pilot.press("x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        await give_reason(pilot, "MR_1 replaced by MR_2", "CHG0101")
        assert isinstance(app.screen, MessageScreen) and "node MR_1 removed: version 5 applied" in dialog_text(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert "MR_1" not in [r.name for r in ep.rows]
    assert site.metas()[-1]["reason"] == "MR_1 replaced by MR_2" and "MR_1" not in site.config_path.read_text()


@run_async
async def test_an_invalid_live_config_is_explained(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    site.config_path.write_text(site.config_path.read_text().replace("port: 104,", "port: 0,"))
    app = site.app()
    async with app.run_test(size=(100, 30)) as pilot:
        ep = await open_endpoints(pilot)
        banner = str(ep.query_one("#ep-banner", Static).visual)
        assert "the live config has" in banner and "roll back" in banner and ep.rows == []
        await pilot.press("question_mark")  # the screen explains itself
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen) and "C-ECHO every node at once" in dialog_text(pilot)


# -- snapshots -----------------------------------------------------------------------------------------
FIXED_ECHOES = {
    "PACS_MAIN": EchoResult(False, 0.012, "destination PACS_MAIN (PACS_OLD@10.1.2.10:104) rejected the association "
                            "permanently: called AE title not recognised — check the AE title on both ends"),
    "ARCHIVE": EchoResult(True, 0.004, "ARCHIVE (ARCHIVE@10.1.2.20:104) answered C-ECHO in 4 ms"),
    "CT_SCANNER_1": EchoResult(True, 0.003, "CT_SCANNER_1 (CT1@10.1.2.3:104) answered C-ECHO in 3 ms"),
}  # fmt: skip


def fixed_echo_app(site: Site) -> Any:
    """Round-trip times vary run to run: the snapshot uses recorded results (the pilot tests echo for real)."""
    app = site.app()

    def echo(target: str) -> EchoResult:
        if target in FIXED_ECHOES:
            return FIXED_ECHOES[target]
        return EchoResult(False, 3.001, f"destination {target}: no answer from 10.1.2.4:104 within 3 s")

    app.backend.echo = echo  # type: ignore[method-assign]
    return app


async def _echo_all_on_pacs(pilot: Pilot[Any]) -> None:
    ep = await open_endpoints(pilot)
    await pilot.press("T")
    await wait_for(pilot, lambda: len(ep.echoes) == 4 and all(e.ok is not None for e in ep.echoes.values()), "echoes")
    pilot.app.clear_notifications()
    await go_to(pilot, "PACS_MAIN")


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_snapshot_endpoints(snap_compare: Any, utc: None, size: tuple[int, int]) -> None:
    site = snap_site("endpoints")
    assert snap_compare(fixed_echo_app(site), terminal_size=size, run_before=_echo_all_on_pacs)


def test_snapshot_node_form(snap_compare: Any, utc: None) -> None:
    site = snap_site("endpoints")

    async def edit_pacs(pilot: Pilot[Any]) -> None:
        await open_endpoints(pilot, highlight="PACS_MAIN")
        await pilot.press("e")
        await settle(pilot)
        await type_into(pilot, "ae_title", "PACS MAIN\\")

    assert snap_compare(site.app(), terminal_size=(80, 24), run_before=edit_pacs)
