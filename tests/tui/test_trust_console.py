"""The console and issue 4's trust features: a node's TLS and storage commitment settings edited through
`config apply`; the queue's `committed` and sent-awaiting-commitment jobs and the advice for one the destination
did not commit (made by the router's own Store, not written into the database); the dashboard's new problems
(TLS listener, audit chain, commitment overdue, alerts) ranked and worded, and its certificate, commitment and
alert lines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import Button, DataTable, Label, Select, Static

from appliance.router.clock import ClockState
from appliance.router.store import InstanceFacts, NewJob, Store
from appliance.tui import problems as pr
from appliance.tui.backend import AWAITING_COMMITMENT, Backend, JobQuery
from appliance.tui.screens.dashboard import _alert_lines, _commitment_lines, _own_cert
from appliance.tui.screens.job import JobScreen
from appliance.tui.screens.node_form import NodeFormScreen
from appliance.tui.screens.queue import QueueScreen
from tests.tui.fixtures_config import Site, make_site
from tests.tui.fixtures_queue import QueueApp, utc
from tests.tui.test_endpoints import dialog_text, give_reason, open_endpoints, type_into
from tests.tui.test_queue import settle
from tests.tui.test_queue_states import plain

__all__ = ["utc"]  # a fixture, used by name
NOW = 1_800_000_000.0
NO_CHRONY = ClockState(False, message="chrony not available")
PACS = {"ae_title": "PACS", "host": "10.1.2.10", "port": "104", "role": "destination", "max_associations": "4"}


# -- node settings through config apply (backend) -------------------------------------------------------------
@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


def node_in_file(site: Site, name: str) -> dict[str, Any]:
    return dict(yaml.safe_load(site.config_path.read_text())["nodes"][name])


def test_tls_and_commitment_round_trip_and_keep_what_the_console_does_not_show(site: Site) -> None:
    backend = site.backend()
    on = {**PACS, "tls_enabled": True, "tls_peer_name": "pacs.hospital.example", "commitment_enabled": True,
          "commitment_deadline": "90"}  # fmt: skip
    result = backend.save_node("PACS_MAIN", on, "PACS needs TLS and commitment", editing="PACS_MAIN", ticket="CHG7")
    assert result.outcome == "applied" and site.metas()[-1]["ticket"] == "CHG7"
    node = backend.nodes()["PACS_MAIN"]
    assert (node.tls.enabled, node.tls.peer_name, node.commitment.enabled, node.commitment.deadline_minutes) == (
        True, "pacs.hospital.example", True, 90
    )  # fmt: skip

    # Settings the form does not show (a CA bundle Ansible set) survive a console edit that turns TLS off.
    doc = yaml.safe_load(site.config_path.read_text())
    doc["nodes"]["PACS_MAIN"]["tls"]["ca"] = "pacs-ca.crt"
    site.apply(yaml.safe_dump(doc, sort_keys=False), "PACS CA", author="ansible", source="ansible",
               at="2026-11-27T02:00:00Z")  # fmt: skip
    off = {**on, "tls_enabled": False, "tls_peer_name": "", "commitment_deadline": "60"}
    backend.save_node("PACS_MAIN", off, "TLS later", editing="PACS_MAIN")
    assert node_in_file(site, "PACS_MAIN")["tls"] == {"ca": "pacs-ca.crt"}
    assert node_in_file(site, "PACS_MAIN")["commitment"] == {"enabled": True}  # 60 is the default: not written

    # A caller that does not know the new fields leaves them as they are.
    backend.save_node("PACS_MAIN", PACS, "AE title only", editing="PACS_MAIN")
    assert node_in_file(site, "PACS_MAIN")["commitment"] == {"enabled": True}


def test_tls_and_commitment_problems_are_named_at_their_field(site: Site) -> None:
    backend = site.backend()
    ct = {"ae_title": "CT1", "host": "10.1.2.3", "port": "104", "role": "source"}
    problems = backend.validate_node("CT_SCANNER_1", {**ct, "tls_enabled": True, "commitment_enabled": True},
                                     editing="CT_SCANNER_1")  # fmt: skip
    assert problems["tls_enabled"].startswith("source CT_SCANNER_1 must use TLS, but the router has no TLS listener")
    assert problems["commitment_enabled"] == "storage commitment is asked of destinations: this node has role source"
    bad = backend.validate_node("PACS_MAIN", {**PACS, "commitment_enabled": True, "commitment_deadline": "soon"},
                                editing="PACS_MAIN")  # fmt: skip
    assert list(bad) == ["commitment_deadline"] and "valid number" in bad["commitment_deadline"]


def test_the_form_shows_and_saves_tls_and_commitment(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")

    async def go() -> None:
        app = site.app()
        async with app.run_test(size=(100, 40)) as pilot:
            await open_endpoints(pilot, highlight="PACS_MAIN")
            await pilot.press("e")
            await settle(pilot)
            form = app.screen
            assert isinstance(form, NodeFormScreen)
            form.query_one("#tls_enabled", Select).value = True
            form.query_one("#commitment_enabled", Select).value = True
            await type_into(pilot, "tls_peer_name", "pacs.hospital.example")
            await type_into(pilot, "commitment_deadline", "ninety")
            deadline_problem = str(form.query_one("#problem-commitment_deadline", Label).visual)
            assert deadline_problem.startswith("minutes until a warning")  # the field's hint, not pydantic's words
            assert form.query_one("#save", Button).disabled
            await type_into(pilot, "commitment_deadline", "90")
            await pilot.press("ctrl+s")
            await settle(pilot)
            assert "TLS (peer name pacs.hospital.example), storage commitment (warning after 90 min)" in (
                dialog_text(pilot)
            )
            await give_reason(pilot, "PACS moves to TLS")
            await pilot.press("enter")
            await settle(pilot)
            detail = str(app.screen.query_one("#ep-detail", Static).visual)
            assert "DICOM over TLS, its certificate must name pacs.hospital.example" in detail
            assert "storage commitment: a warning when no report after 90 min" in detail
            assert str(app.screen.query_one("#nodes", DataTable).get_cell("PACS_MAIN", "addr")) == "10.1.2.10:104 TLS"
            await pilot.press("e")  # the form opens with what was saved
            await settle(pilot)
            values = app.screen.values()[1]  # type: ignore[attr-defined]
            assert (values["tls_enabled"], values["tls_peer_name"], values["commitment_enabled"],
                    values["commitment_deadline"]) == (True, "pacs.hospital.example", True, "90")  # fmt: skip

    asyncio.run(go())
    assert node_in_file(site, "PACS_MAIN")["tls"] == {"enabled": True, "peer_name": "pacs.hospital.example"}


# -- the queue: committed, sent (awaiting), commitment failed ---------------------------------------------------
def _facts(n: int) -> InstanceFacts:
    return InstanceFacts(
        sop_instance_uid=f"1.2.826.0.1.3680043.10.89.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1", size_bytes=1000, study_uid="1.2.826.0.1.3680043.10.89",
        series_uid="1.2.826.0.1.3680043.10.89.1", patient_id="PID-89", accession="ACC-89", modality="CT",
        calling_ae="CT1", called_ae="DICOM_ROUTER", source_node="CT_SCANNER_1", content_sha256=f"{n:064d}",
    )  # fmt: skip


def build_committing_queue(root: Path) -> tuple[Path, dict[str, int]]:
    """Three objects sent to a PACS that commits: one committed, one it did not commit, one awaiting its report."""
    cfg = {
        "router": {"ae_title": "DICOM_ROUTER", "state_dir": str(root / "state"), "log_dir": str(root / "log")},
        "nodes": {
            "CT_SCANNER_1": {"ae_title": "CT1", "host": "10.1.2.3", "port": 104, "role": "source"},
            "PACS_MAIN": {"ae_title": "PACS", "host": "10.1.2.10", "port": 104, "role": "destination",
                          "commitment": {"enabled": True}},
        },
        "routes": [{"name": "ct-to-pacs", "to": ["PACS_MAIN"]}],
    }  # fmt: skip
    root.mkdir(parents=True)
    config = root / "router.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    store = Store(root / "state" / "queue.sqlite3", durable=False)
    store.init()
    try:
        ids = [store.add_instance(f"k{n}", _facts(n), [NewJob("PACS_MAIN", "ct-to-pacs", 1)], NOW - 600).job_ids[0]
               for n in (1, 2, 3)]  # fmt: skip
        for job in store.claim("PACS_MAIN", "fwd-1", 10, 60, NOW - 590):
            store.ack(job.id, 0x0000, "stored by PACS_MAIN", NOW - 589, keep_spool=False, commit=True)
        items = store.begin_commitment("PACS_MAIN", "2.25.1", "test:1:PACS_MAIN:0", NOW - 588, 2)
        store.commitment_sent("2.25.1", NOW - 588)
        store.record_commitment_report(
            "2.25.1", [items[0].sop_instance_uid], [(items[1].sop_instance_uid, 0x0112, "no such object instance")],
            "same association", NOW - 580, keep_spool=False,
        )  # fmt: skip
    finally:
        store.close()
    return config, {"committed": ids[0], "uncommitted": ids[1], "sent": ids[2]}


def test_the_queue_knows_committed_sent_and_a_commitment_failure(tmp_path: Path, utc: None) -> None:
    config, jobs = build_committing_queue(tmp_path / "site")
    backend = Backend(config, "night-nurse", clock=lambda: NOW)
    assert backend.count(JobQuery(states=(AWAITING_COMMITMENT,))) == 1

    async def go() -> None:
        app = QueueApp(backend, refresh_seconds=3600, theme="textual-dark")
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot)
            s = app.screen
            assert isinstance(s, QueueScreen)
            table = s.query_one("#jobs", DataTable)
            states = {r.id: str(table.get_cell(str(r.id), "State")) for r in s.rows}
            assert states == {jobs["committed"]: "committed", jobs["uncommitted"]: "failed", jobs["sent"]: "sent"}
            s.query_one("#f-state", Select).value = AWAITING_COMMITMENT
            await settle(pilot)
            assert [r.id for r in s.rows] == [jobs["sent"]]
            current = " ".join(str(s.query_one("#current", Static).render()).split())
            assert (
                f"job {jobs['sent']} sent" in current and "waiting for PACS_MAIN's storage commitment report" in current
            )
            s.query_one("#f-state", Select).value = "failed"
            await settle(pilot)
            await pilot.press("enter")
            await settle(pilot)
            detail = app.screen
            assert isinstance(detail, JobScreen)
            facts = " ".join(plain(detail, "#job-facts").split())
            assert "storage commitment FAILED at PACS_MAIN: no such object instance" in facts
            assert "the destination reported it does NOT keep this object" in facts and "r sends it again" in facts
            assert "last status Failure Reason 0x0112: no such object instance" in facts  # not a C-STORE status
            events = plain(detail, "#events")
            assert "commitment asked" in events and "COMMITMENT FAILED" in events

    asyncio.run(go())


def _report(problems: list[str], destinations: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"problems": problems, "destinations": destinations or [], **extra}


def _dest(name: str = "PACS_MAIN", **kw: Any) -> dict[str, Any]:
    d = {
        "name": name,
        "backlog": 0,
        "oldest_pending_age_seconds": None,
        "circuit": "closed",
        "circuit_since": None,
        "last_error": None,
        "counts": {"failed": 0},
        "paused": False,
        "configured": True,
        "failures_last_hour": 0,
    }
    return {**d, **kw}  # fmt: skip


# -- the dashboard: new problems, in order and in console words ---------------------------------------------------
def test_the_new_problems_are_ranked_and_worded_for_the_console() -> None:
    overdue = (
        "PACS_MAIN: 12 object(s) sent up to 75 min ago have no storage commitment report (deadline 60 min) — the "
        "destination may not have stored them; check its storage commitment log and that it can call back "
        "DICOM_ROUTER@0.0.0.0:11112, then `dicom-router queue retry --destination PACS_MAIN --state "
        "awaiting-commitment` sends them and asks again"
    )
    report = _report(
        [
            "metrics port 9104 on 127.0.0.1 is in use by another process — change metrics.port",
            overdue,
            "audit trail broken (seq 812): the last entry of audit.jsonl was edited — run `dicom-router audit verify`",
            "TLS listener: the router's private key (router.tls.key) /etc/dicom-router/tls/router.key has mode 0644",
            "1 object(s) matched no route (kept; see `queue ls --state unrouted`)",
        ]
    )
    ranked = pr.console_problems(report, NO_CHRONY, {}, NOW)
    assert [p.text.split(" ")[0] for p in ranked] == ["TLS", "audit", "PACS_MAIN:", "metrics", "1"]
    assert [p.level for p in ranked] == ["error", "error", "warning", "warning", "warning"]
    assert ranked[2].text.endswith(
        "then in the Queue (u) filter PACS_MAIN and state 'sent, awaiting commitment': A and r send them and ask again"
    )


def test_a_tls_listener_status_did_not_word_is_still_a_problem_once() -> None:
    tls = {"port": 2762, "plain": True, "ok": False, "problem": "the router's certificate … EXPIRED on 2027-01-01"}
    assert [p.text for p in pr.console_problems(_report([], tls=tls), NO_CHRONY, {}, NOW)] == [
        "TLS listener: the router's certificate … EXPIRED on 2027-01-01"
    ]
    worded = _report([f"TLS listener: {tls['problem']}"], tls=tls)
    assert len(pr.console_problems(worded, NO_CHRONY, {}, NOW)) == 1


def test_a_commitment_failure_is_not_called_a_refusal_and_a_repeated_backlog_alert_is_dropped() -> None:
    error = (
        "storage commitment FAILED at PACS_MAIN: no such object instance (the destination does not have it) "
        "(0x0112) (transaction 2.25.1) — the destination may not keep this object; `dicom-router queue retry 7` "
        "sends it again"
    )
    pacs = _dest(counts={"failed": 2}, backlog=40, oldest_pending_age_seconds=3 * 3600)
    refusal = pr.Refusal(NOW - 300, error)
    report = _report(["backlog to PACS_MAIN: 40 job(s) waiting, the oldest for 3.0 h (alert above 30 min)"], [pacs])
    texts = [p.text for p in pr.console_problems(report, NO_CHRONY, {"PACS_MAIN": refusal}, NOW)]
    assert texts[0] == (
        "PACS_MAIN did not commit 2 object(s) sent to it (storage commitment failed 5 min ago: no such object "
        "instance (the destination does not have it) (0x0112)): it may not keep them. Check on PACS_MAIN, then "
        "retry them (Enter: its jobs) — they are sent again and commitment is asked again."
    )
    assert not any(t.startswith("backlog to") for t in texts) and texts[1].startswith("PACS_MAIN is falling behind")


def test_the_facts_lines_for_certificates_commitment_and_alerts() -> None:
    sched: dict[str, Any] = {"jobs": []}
    ok = {"port": 2762, "plain": False, "ok": True, "subject": "ra1.hospital.example", "days_left": 12.4}
    assert _own_cert(ok, sched) == (
        "TLS port 2762 only: [$warning]router certificate ra1.hospital.example, 12 days left[/] · "
    )
    assert "NOT LOADED" in _own_cert({"port": 2762, "ok": False, "problem": "x"}, sched)
    assert _own_cert(None, sched) == ""
    cm = {"committed": 120, "awaiting": 4, "oldest_age_seconds": 4000.0, "deadline_minutes": 60.0}
    assert _commitment_lines([_dest(commitment=cm), _dest("ARCHIVE", commitment=None)]) == [
        "Commit    PACS_MAIN 120 committed, 4 awaiting a report [$warning b](oldest 66m, deadline 60 min)[/]"
    ]
    assert _commitment_lines([_dest()]) == []
    smtp = {"failing_since": NOW - 60, "waiting": 3, "last_error": "connection refused"}
    alerts = {
        "active": [{"level": "error", "message": "x"}, {"level": "warning", "message": "y"}],
        "channels": {"syslog": {"failing_since": None}, "smtp": smtp},
    }
    assert _alert_lines(alerts) == [
        "Alerts    2 active ([$error b]1 error[/]), delivered by smtp, syslog · [$error b]smtp delivery FAILING[/] "
        "(3 waiting): connection refused"
    ]
    assert _alert_lines({"active": [], "channels": {"syslog": {"failing_since": None}}}) == []
