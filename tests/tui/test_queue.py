"""The queue screen and the job detail, driven by keys with `App.run_test()` against a real queue database:
paging, filters, selection, every action with its confirmation (yes changes the database, no does not),
errors in words, the unrouted list, evidence — and snapshots at 80×24 and 120×40."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, Static
from textual.worker import WorkerState

from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend, BackendError
from appliance.tui.screens.job import JobScreen
from appliance.tui.screens.queue import QueueScreen
from appliance.tui.screens.queue_dialogs import ChooseManyScreen, ChooseScreen
from appliance.tui.widgets import ConfirmScreen, HelpScreen, MessageScreen, ReasonScreen
from tests.tui.fixtures_queue import COUNTS, NOW, QueueApp, QueueState, build_queue, make_app, queue_state, utc

__all__ = ["queue_state", "utc"]  # fixtures used by name below

Script = Callable[[Pilot[Any]], Awaitable[None]]
SNAP_ROOT = Path("/tmp/dicom-router-snap-queue")
TOTAL = sum(v for k, v in COUNTS.items() if k != "unrouted")


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until every worker except an open dialog flow (which waits for keys) is done, then repaint."""
    for _ in range(500):
        await pilot.pause()
        busy = [w for w in pilot.app.workers if w.group != "dialog" and w.state in (WorkerState.PENDING,
                                                                                     WorkerState.RUNNING)]  # fmt: skip
        if not busy:
            break
        await asyncio.sleep(0.005)
    await pilot.pause()


async def press(pilot: Pilot[Any], *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await settle(pilot)


async def type_text(pilot: Pilot[Any], text: str) -> None:
    await pilot.press(*text)
    await settle(pilot)


def run(app: ConsoleApp, script: Script, size: tuple[int, int] = (80, 24)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await script(pilot)

    asyncio.run(main())


def screen(pilot: Pilot[Any]) -> QueueScreen:
    s = pilot.app.screen
    assert isinstance(s, QueueScreen), type(s)
    return s


def summary(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#summary", Static).render())


def plain(where: Any, selector: str) -> str:
    """What a Static shows, as plain text (Rich tables and text alike), wide enough not to wrap."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(where.query_one(selector, Static).content)
    return console.export_text()


def notes(pilot: Pilot[Any]) -> list[str]:
    return [n.message for n in pilot.app._notifications]


def recorded_notes(pilot: Pilot[Any]) -> list[str]:
    """Every notification from now on, also those that already timed out by the time the test looks."""
    said: list[str] = []
    notify = pilot.app.notify

    def record(message: str, *args: Any, **kwargs: Any) -> Any:
        said.append(message)
        return notify(message, *args, **kwargs)

    pilot.app.notify = record  # type: ignore[method-assign]
    return said


def audit(state: QueueState) -> list[dict[str, Any]]:
    path = state.root / "log" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def answer_reason(pilot: Pilot[Any], reason: str, ticket: str = "", *, typed: bool = False) -> None:
    """Fill in the reason dialog (typed key by key, or set at once: typing is the Input's business) and submit."""
    dialog = pilot.app.screen
    assert isinstance(dialog, ReasonScreen)
    if typed:
        await type_text(pilot, reason)
    else:
        dialog.query_one("#reason", Input).value = reason
    await press(pilot, "enter")  # to the ticket field
    if ticket:
        if typed:
            await type_text(pilot, ticket)
        else:
            dialog.query_one("#ticket", Input).value = ticket
    await press(pilot, "enter")


# -- opening, paging, filters ---------------------------------------------------------------------------------
def test_opens_on_the_first_page_with_the_total(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        assert summary(pilot) == f"{TOTAL} jobs match · page 1 of 2"
        assert len(s.rows) == 100 and s.rows[0].id == 1
        current = str(s.query_one("#current", Static).render())
        assert current.startswith("job 1 failed, 3 tries → PACS_MAIN · MR from MR2 · ACC00010")
        assert "last error: rejected the association permanently: called AE title not recognised" in current

    run(make_app(queue_state), script)


def test_paging_forward_and_back_is_exact(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        await press(pilot, "pagedown")
        assert summary(pilot) == f"{TOTAL} jobs match · page 2 of 2"
        assert [r.id for r in s.rows] == list(range(101, TOTAL + 1))
        await press(pilot, "pagedown")
        assert "This is the last page." in notes(pilot) and s.pager.page == 2
        await press(pilot, "pageup")
        assert summary(pilot).endswith("page 1 of 2") and [r.id for r in s.rows] == list(range(1, 101))
        await press(pilot, "pageup")
        assert "This is the first page." in notes(pilot)

    run(make_app(queue_state), script)


@pytest.fixture
def store_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue's "older than" cut-off is taken from the wall clock inside the store; pin it to the fixture's NOW."""
    monkeypatch.setattr("appliance.router.store.time", SimpleNamespace(time=lambda: NOW))


def test_filter_bar_narrows_and_escape_clears(queue_state: QueueState, store_clock: None) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        await press(pilot, "slash")
        assert pilot.app.focused is s.query_one("#f-destination", Select)
        s.query_one("#f-destination", Select).value = "PACS_MAIN"  # as chosen from its list
        await settle(pilot)
        s.query_one("#f-state", Select).value = "failed"
        await settle(pilot)
        assert summary(pilot) == "14 jobs match · page 1 of 1 · destination PACS_MAIN, state failed"
        s.query_one("#f-age", Input).focus()
        await type_text(pilot, "4h50m")  # not an age this screen understands
        await press(pilot, "enter")
        assert summary(pilot).startswith("'4h50m' is not an age: write 30m, 2h or 7d")
        assert s.query_.older_than_seconds is None  # the bad value was not applied
        await press(pilot, *["backspace"] * 6)
        await type_text(pilot, "4.9h")
        await press(pilot, "enter")
        assert summary(pilot).startswith("12 jobs match") and "older than 4h54m" in summary(pilot)
        assert pilot.app.focused is s.query_one("#jobs")  # Enter applies and goes back to the table
        s.query_one("#f-accession", Input).focus()
        await type_text(pilot, "ACC00010")
        await press(pilot, "enter")
        assert summary(pilot).startswith("4 jobs match") and {r.accession for r in s.rows} == {"ACC00010"}
        await press(pilot, "escape")
        assert summary(pilot) == f"{TOTAL} jobs match · page 1 of 2"
        assert s.query_one("#f-destination", Select).value == Select.NULL
        assert s.query_one("#f-accession", Input).value == ""

    run(make_app(queue_state), script)


def test_apply_filter_is_what_the_dashboard_calls(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        s.apply_filter(destination="PACS_MAIN", state="failed")
        await settle(pilot)
        assert s.query_one("#f-destination", Select).value == "PACS_MAIN"
        assert s.query_one("#f-state", Select).value == "failed"
        assert [r.id for r in s.rows] == list(range(1, 15))
        s.apply_filter(patient_id="PID-MIX", older_than="30m")  # replaces the whole filter
        await settle(pilot)
        assert summary(pilot).startswith("0 jobs match") and s.query_one("#f-patient", Input).value == "PID-MIX"
        assert s.query_one("#f-age", Input).value == "30m"

    run(make_app(queue_state), script)


def test_action_keys_type_into_a_filter_field_instead_of_acting(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        s.query_one("#f-patient", Input).focus()
        await type_text(pilot, "rhsxo")
        assert isinstance(pilot.app.screen, QueueScreen)  # no confirmation dialog opened
        assert s.query_one("#f-patient", Input).value == "rhsxo"

    run(make_app(queue_state), script)


# -- actions: yes changes the queue, no does not ----------------------------------------------------------------
def test_retry_all_matching_after_confirm_and_reason(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        screen(pilot).apply_filter(destination="PACS_MAIN", state="failed")
        await settle(pilot)
        await press(pilot, "A")
        assert summary(pilot).startswith("ALL MATCHING SELECTED (A undoes) · 14 jobs match")
        await press(pilot, "r")
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen)
        assert dialog.title_text == "Retry 14 jobs (all matching: destination PACS_MAIN, state failed)?"
        await press(pilot, "y")
        await answer_reason(pilot, "AE title fixed on the PACS", "INC0042", typed=True)
        assert isinstance(pilot.app.screen, QueueScreen)
        assert "retry: 14 job(s) changed" in notes(pilot)
        assert summary(pilot).startswith("0 jobs match")  # reloaded: none failed any more

    run(make_app(queue_state), script)
    retried = queue_state.jobs(ids=list(range(1, 15)))
    assert {j.state for j in retried} == {"queued"} and {j.attempts for j in retried} == {0}
    entry = [e for e in audit(queue_state) if e["event"] == "queue_retry"][-1]
    assert entry["operator"] == "night-nurse" and entry["reason"] == "INC0042: AE title fixed on the PACS"
    assert entry["process"] == "console" and entry["changed"] == 14


def test_no_or_escape_at_any_step_changes_nothing(queue_state: QueueState) -> None:
    before = queue_state.states()

    async def script(pilot: Pilot[Any]) -> None:
        said = recorded_notes(pilot)  # each lasts 4 s on screen: a slow machine may outrun the first ones
        for key in ("r", "h", "x"):
            await press(pilot, key)
            assert isinstance(pilot.app.screen, ConfirmScreen)
            await press(pilot, "n")
            assert isinstance(pilot.app.screen, QueueScreen)
        await press(pilot, "x", "y")
        assert isinstance(pilot.app.screen, ReasonScreen)
        await press(pilot, "escape")  # at the reason
        assert isinstance(pilot.app.screen, QueueScreen)
        assert [n for n in said if "cancelled: nothing was changed" in n] == [
            "Retry cancelled: nothing was changed.",
            "Hold cancelled: nothing was changed.",
            "Cancel cancelled: nothing was changed.",
            "Cancel cancelled: nothing was changed.",
        ]
        await press(pilot, "A", "h")  # every job, no filter: the dialog says so in capitals
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen)
        assert dialog.title_text == f"Hold {TOTAL} jobs (all matching: no filter: every job in the queue)?"
        assert "EVERY job" in dialog.body
        await press(pilot, "escape")

    run(make_app(queue_state), script)
    assert queue_state.states() == before
    assert not [e for e in audit(queue_state) if e["event"].startswith("queue_")]


def test_hold_the_selected_jobs_then_release_them(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        await press(pilot, "pagedown", "space", "space", "down", "space")  # jobs 101, 102 and 104
        assert s.selected == {101, 102, 104} and summary(pilot).startswith("3 selected · ")
        await press(pilot, "h")
        assert pilot.app.screen.title_text == "Hold 3 selected jobs?"  # type: ignore[attr-defined]
        await press(pilot, "y")
        await answer_reason(pilot, "wrong patient?")
        assert "hold: 3 job(s) changed" in notes(pilot) and not s.selected
        s.apply_filter(state="held")
        await settle(pilot)
        await press(pilot, "A", "s")
        assert pilot.app.screen.title_text == "Release 3 jobs (all matching: state held)?"  # type: ignore[attr-defined]
        await press(pilot, "y")
        await answer_reason(pilot, "checked with RIS")
        assert "release: 3 job(s) changed" in notes(pilot)

    run(make_app(queue_state), script)
    assert {j.state for j in queue_state.jobs(ids=[101, 102, 104])} == {"queued"}
    events = [e["event"] for e in audit(queue_state)]
    assert events == ["queue_hold", "queue_release"]


def test_cancel_the_highlighted_job_is_marked_dangerous(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        await press(pilot, "down", "x")
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen) and dialog.danger and dialog.title_text == "Cancel job 2?"
        assert "NEVER send" in dialog.body
        await press(pilot, "y")
        await answer_reason(pilot, "duplicate")

    run(make_app(queue_state), script)
    assert queue_state.jobs(ids=[2])[0].state == "cancelled" and queue_state.jobs(ids=[1])[0].state == "failed"


# -- re-route, pause, errors ---------------------------------------------------------------------------------
def test_reroute_a_misrouted_study(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        screen(pilot).apply_filter(accession="ACC-MIX")
        await settle(pilot)
        await press(pilot, "A", "o")
        chooser = pilot.app.screen
        assert isinstance(chooser, ChooseScreen) and chooser.choices == ["ARCHIVE", "PACS_DR", "PACS_MAIN"]
        await press(pilot, "down", "enter")  # PACS_DR
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen)
        assert dialog.title_text == "Re-route 5 jobs (all matching: accession ACC-MIX) to PACS_DR?"
        await press(pilot, "y")
        await answer_reason(pilot, "study belongs to the DR site", "INC0077")
        assert "reroute: 5 job(s) changed; 5 jobs queued for PACS_DR" in notes(pilot)

    run(make_app(queue_state), script)
    assert queue_state.states(accession="ACC-MIX", destination="PACS_MAIN") == {"cancelled": 5}
    assert queue_state.states(accession="ACC-MIX", destination="PACS_DR") == {"queued": 5}


def test_reroute_to_a_destination_removed_meanwhile_is_refused_in_words(queue_state: QueueState) -> None:
    before = queue_state.states()

    async def script(pilot: Pilot[Any]) -> None:
        await press(pilot, "o")
        assert isinstance(pilot.app.screen, ChooseScreen)
        cfg = yaml.safe_load(queue_state.config_path.read_text())
        del cfg["nodes"]["PACS_DR"]  # someone changes the config while the chooser is open
        queue_state.config_path.write_text(yaml.safe_dump(cfg))
        await press(pilot, "down", "enter", "y")
        await answer_reason(pilot, "try DR")
        error = pilot.app.screen
        assert isinstance(error, MessageScreen) and error.error and error.title_text == "Re-route failed"
        assert error.body.startswith("PACS_DR is not a destination in the config (destinations: ARCHIVE, PACS_MAIN)")
        await press(pilot, "enter")
        assert isinstance(pilot.app.screen, QueueScreen)

    run(make_app(queue_state), script)
    assert queue_state.states() == before


@pytest.mark.parametrize(
    ("raised", "words"),
    [
        (BackendError("database is locked: the router is busy, try again"), "database is locked: the router is busy"),
        (RuntimeError("boom"), "unexpected error: RuntimeError: boom. The console keeps running"),
    ],
)
def test_a_backend_failure_becomes_a_dialog(queue_state: QueueState, raised: Exception, words: str) -> None:
    app = make_app(queue_state)

    def fail(*_a: Any, **_k: Any) -> Any:
        raise raised

    app.backend.act = fail  # type: ignore[method-assign]

    async def script(pilot: Pilot[Any]) -> None:
        await press(pilot, "r", "y")
        await answer_reason(pilot, "retry")
        error = pilot.app.screen
        assert isinstance(error, MessageScreen) and error.title_text == "Retry failed" and words in error.body

    run(app, script)


def test_pause_and_resume_the_filtered_destination(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        screen(pilot).apply_filter(destination="PACS_MAIN")
        await settle(pilot)
        await press(pilot, "p")
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen) and dialog.title_text == "Pause sending to PACS_MAIN?"
        assert "nothing is lost" in dialog.body
        await press(pilot, "y")
        await answer_reason(pilot, "PACS maintenance", "CHG0099")
        assert "PACS_MAIN paused: nothing is sent to it until you resume it" in notes(pilot)
        await press(pilot, "p")
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen) and dialog.title_text == "Resume sending to PACS_MAIN?"
        assert "paused by night-nurse: CHG0099: PACS maintenance" in dialog.body
        await press(pilot, "y")
        await answer_reason(pilot, "maintenance over")
        assert "PACS_MAIN resumed" in notes(pilot)

    run(make_app(queue_state), script)
    events = [(e["event"], e["destination"]) for e in audit(queue_state)]
    assert events == [("destination_pause", "PACS_MAIN"), ("destination_resume", "PACS_MAIN")]


def test_pause_needs_a_destination(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        screen(pilot).apply_filter(accession="NO-SUCH")
        await settle(pilot)
        await press(pilot, "p", "r", "v")
        assert isinstance(pilot.app.screen, QueueScreen)
        assert "Filter a destination (/) or highlight one of its jobs first." in notes(pilot)
        assert "No job here: change the filter (/) or press Esc to clear it." in notes(pilot)

    run(make_app(queue_state), script)


# -- detail, evidence, unrouted, help --------------------------------------------------------------------------
def test_job_detail_shows_the_history_and_acts_on_the_job(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        screen(pilot).query_one("#jobs", DataTable).move_cursor(row=13)
        await press(pilot, "enter")
        detail = pilot.app.screen
        assert isinstance(detail, JobScreen) and detail.job_id == 14
        text = plain(detail, "#job-facts") + plain(detail, "#events")
        assert "0x0122 (refused: the destination does not support this SOP class)" in text
        assert "re-route it with o" in text  # what to do, in words
        assert "FAILED: needs operator" in text
        await press(pilot, "r", "y")
        await answer_reason(pilot, "SOP class enabled on the PACS")
        assert isinstance(pilot.app.screen, JobScreen) and "retry: 1 job(s) changed" in notes(pilot)
        assert "retried by operator" in plain(pilot.app.screen, "#events")
        await press(pilot, "escape")
        assert isinstance(pilot.app.screen, QueueScreen)
        assert screen(pilot).rows[13].state == "queued"  # the queue reloaded on return

    run(make_app(queue_state), script)


def test_evidence_for_the_highlighted_jobs_study(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        await press(pilot, "v")
        message = pilot.app.screen
        assert isinstance(message, MessageScreen) and message.title_text == "Evidence written"
        path = Path(message.body.split("\n")[0])
        assert path.parent == queue_state.root / "state" / "evidence"
        content = path.read_text()
        assert "study 1.2.826.0.1.3680043.10.77.10" in content and "4 job(s) match" in content
        assert "PID00010" not in content  # no patient IDs in a file that leaves the building

    run(make_app(queue_state), script)
    assert [e["operator"] for e in audit(queue_state) if e["event"] == "evidence_export"] == ["night-nurse"]


def test_unrouted_objects_are_listed_and_routed(queue_state: QueueState) -> None:
    async def script(pilot: Pilot[Any]) -> None:
        s = screen(pilot)
        await press(pilot, "n")
        assert summary(pilot).startswith("UNROUTED objects (matched no route, kept on disk) · page 1: 3 shown")
        assert [r["id"] for r in s.rows] == [190, 191, 192]
        await press(pilot, "r")
        assert "That acts on jobs: press n to go back from the unrouted objects." in notes(pilot)
        await press(pilot, "space", "space", "o")
        chooser = pilot.app.screen
        assert isinstance(chooser, ChooseManyScreen)
        await press(pilot, "enter")  # nothing ticked yet: refused in words, still open
        assert isinstance(pilot.app.screen, ChooseManyScreen)
        await press(pilot, "space", "enter")  # ARCHIVE
        dialog = pilot.app.screen
        assert isinstance(dialog, ConfirmScreen) and dialog.title_text == "Route 2 unrouted object(s) to ARCHIVE?"
        await press(pilot, "y")
        await answer_reason(pilot, "US to archive")
        assert "2 unrouted object(s) queued for ARCHIVE" in notes(pilot)
        assert [r["id"] for r in s.rows] == [192]
        await press(pilot, "n")
        assert summary(pilot).startswith(f"{TOTAL + 2} jobs match")

    run(make_app(queue_state), script)
    assert queue_state.states(destination="ARCHIVE") == {"done": 40, "queued": 2}


def test_help_and_an_unreadable_queue(queue_state: QueueState) -> None:
    app = make_app(queue_state)

    async def script(pilot: Pilot[Any]) -> None:
        await press(pilot, "question_mark")
        help_screen = pilot.app.screen
        assert isinstance(help_screen, HelpScreen)
        for words in ("failed   refused for good", "called AE title not recognised", "A  select ALL jobs"):
            assert words in help_screen.body
        await press(pilot, "escape")

        def unreadable(*_a: Any, **_k: Any) -> Any:
            raise BackendError("no queue database at /var/lib/dicom-router/queue.sqlite3")

        app.backend.jobs = unreadable  # type: ignore[method-assign]
        await press(pilot, "pagedown")
        assert summary(pilot) == "Cannot read the queue: no queue database at /var/lib/dicom-router/queue.sqlite3"
        assert len(screen(pilot).rows) == 100  # what it showed before stays

    run(app, script)


def test_the_console_reaches_the_queue_with_u_and_from_the_dashboard(queue_state: QueueState) -> None:
    app = ConsoleApp(Backend(queue_state.config_path, "night-nurse", clock=lambda: NOW), refresh_seconds=3600)

    async def script(pilot: Pilot[Any]) -> None:
        await press(pilot, "u")
        assert isinstance(pilot.app.screen, QueueScreen) and summary(pilot).startswith(f"{TOTAL} jobs match")
        await press(pilot, "d")
        await pilot.app.switch_mode("queue")  # what the dashboard's Enter does, then apply_filter
        screen(pilot).apply_filter(destination="ARCHIVE")
        await settle(pilot)
        assert summary(pilot) == "40 jobs match · page 1 of 1 · destination ARCHIVE"

    run(app, script)


# -- snapshots ---------------------------------------------------------------------------------------------------
def snap_app() -> QueueApp:
    return make_app(build_queue(SNAP_ROOT))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_queue(snap_compare: Any, utc: None, size: tuple[int, int]) -> None:
    assert snap_compare(snap_app(), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_queue_filtered_all_selected(snap_compare: Any, utc: None, size: tuple[int, int]) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        screen(pilot).apply_filter(destination="PACS_MAIN", state="failed")
        await settle(pilot)
        await press(pilot, "A")

    assert snap_compare(snap_app(), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_job_detail(snap_compare: Any, utc: None, size: tuple[int, int]) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        screen(pilot).query_one("#jobs", DataTable).move_cursor(row=12)
        await press(pilot, "enter")

    assert snap_compare(snap_app(), terminal_size=size, run_before=before)
