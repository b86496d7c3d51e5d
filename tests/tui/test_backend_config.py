"""The console backend's config operations without Textual: nodes changed through `config apply` (shared
history, source console, the operator as author, Ansible's comments kept), validation in words, removal refused
while a route uses the node, rollback, and backups made, verified and restored from real bundles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.tui.backend import Backend, BackendError
from tests.support.peers import Router, StoreSCP, dest_node
from tests.tui.fixtures_config import OPERATOR, Site, make_site

PACS = {"ae_title": "PACS", "host": "10.1.2.10", "port": "104", "role": "destination", "max_associations": "4"}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


def changed_lines(diff: str) -> list[str]:
    return [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def nodes_of(site: Site) -> dict[str, dict[str, object]]:
    return dict(yaml.safe_load(site.config_path.read_text())["nodes"])


def test_node_add_edit_remove_go_through_config_apply(site: Site) -> None:
    backend = site.backend()
    before = len(site.metas())

    added = backend.save_node("CT_2", {"ae_title": "CT2", "host": "10.1.2.5", "port": "104", "role": "source"},
                              "new CT in room 2", ticket="CHG0100")  # fmt: skip
    assert added.outcome == "applied" and added.version == before + 1
    assert "router not running" in added.message
    # The history shows just the line that changed: the new node in its neighbours' style, nothing re-indented.
    assert changed_lines(added.diff) == ["+  CT_2: {ae_title: CT2, host: 10.1.2.5, port: 104, role: source}"]
    assert nodes_of(site)["CT_2"] == {"ae_title": "CT2", "host": "10.1.2.5", "port": 104, "role": "source"}

    # The night's fix: PACS_MAIN's AE title back to PACS. Untouched keys and Ansible's comments survive.
    fixed = backend.save_node("PACS_MAIN", PACS, "PACS AE title is PACS (vendor confirmed)", editing="PACS_MAIN")
    assert fixed.version == before + 2
    assert changed_lines(fixed.diff) == [
        "-  PACS_MAIN: {ae_title: PACS_OLD, host: 10.1.2.10, port: 104, role: destination, max_associations: 4}",
        "+  PACS_MAIN: {ae_title: PACS, host: 10.1.2.10, port: 104, role: destination, max_associations: 4}",
    ]
    text = site.config_path.read_text()
    assert "# where images go" in text and "# every study to the PACS" in text and text.startswith("# Site config")
    assert nodes_of(site)["PACS_MAIN"]["ae_title"] == "PACS" and nodes_of(site)["PACS_MAIN"]["max_associations"] == 4

    removed = backend.remove_node("CT_2", "room 2 CT not delivered after all")
    assert removed.version == before + 3 and "CT_2" not in nodes_of(site)

    metas = site.metas()[before:]
    assert [(m["source"], m["author"], m["outcome"]) for m in metas] == [("console", OPERATOR, "applied")] * 3
    assert [m["reason"] for m in metas] == [
        "new CT in room 2",
        "PACS AE title is PACS (vendor confirmed)",
        "room 2 CT not delivered after all",
    ]
    assert metas[0]["ticket"] == "CHG0100"
    audit = [e for e in site.audit("config.apply") if e["version"] > before]
    assert [(e["outcome"], e["author"]) for e in audit] == [("success", OPERATOR)] * 3


def test_a_block_style_file_keeps_its_style_and_other_node_settings(site: Site) -> None:
    """A file written by a YAML dumper (block style, lists at the key's indent, per-node timeouts): an edit
    changes the edited values only; a field left empty goes back to its default."""
    doc = yaml.safe_load(site.config_path.read_text())
    doc["nodes"]["ARCHIVE"]["timeouts"] = {"connect": 5.0}
    site.apply(yaml.safe_dump(doc, sort_keys=False), "archive timeouts", author="ansible", source="ansible",
               at="2026-11-27T02:00:00Z")  # fmt: skip
    result = site.backend().save_node(
        "ARCHIVE", {"ae_title": "ARCHIVE2", "host": "10.1.2.20", "port": "104", "role": "destination",
                    "max_associations": ""}, "new AE title", editing="ARCHIVE")  # fmt: skip
    assert changed_lines(result.diff) == ["-    ae_title: ARCHIVE", "+    ae_title: ARCHIVE2"]
    assert nodes_of(site)["ARCHIVE"]["timeouts"] == {"connect": 5.0}


def test_validation_says_what_is_wrong_per_field(site: Site) -> None:
    backend = site.backend()
    problems = backend.validate_node("", {"ae_title": "A_TITLE_LONGER_THAN_16", "host": "", "port": "70000",
                                          "role": "destination", "max_associations": "0"})  # fmt: skip
    assert problems["name"].startswith("give the node a name")
    assert "not a valid AE title" in problems["ae_title"]
    assert "65535" in problems["port"]
    assert "greater than or equal to 1" in problems["max_associations"]
    assert (
        backend.validate_node("ARCHIVE", {**PACS, "ae_title": "NEW"})["name"] == "a node named ARCHIVE exists already"
    )
    assert backend.validate_node("PACS_2", {**PACS, "ae_title": "ARCHIVE"})["ae_title"] == (
        "AE title ARCHIVE is already used by ARCHIVE"
    )
    assert backend.validate_node("PACS_MAIN", PACS, editing="PACS_MAIN") == {}

    live, versions = site.config_path.read_bytes(), len(site.metas())
    with pytest.raises(BackendError, match="port"):
        backend.save_node("PACS_2", {**PACS, "ae_title": "PACS2", "port": "0"}, "typo")
    assert site.config_path.read_bytes() == live and len(site.metas()) == versions  # refused before apply


def test_a_change_the_whole_config_rejects_is_refused_in_words(site: Site) -> None:
    """The node alone is valid, but a route sends to it: as a source it would break the config."""
    live = site.config_path.read_bytes()
    with pytest.raises(BackendError) as err:
        site.backend().save_node("PACS_MAIN", {**PACS, "role": "source"}, "wrong role", editing="PACS_MAIN")
    assert "nothing was changed" in str(err.value) and "a route can only send to a node with role destination" in str(
        err.value
    )
    assert site.config_path.read_bytes() == live
    assert site.metas()[-1]["outcome"] == "failed" and site.metas()[-1]["author"] == OPERATOR  # the attempt is kept


def test_removing_or_renaming_a_node_a_route_uses_is_refused(site: Site) -> None:
    backend = site.backend()
    live, versions = site.config_path.read_bytes(), len(site.metas())
    assert backend.routes_using("PACS_MAIN") == ["everything-to-pacs"]
    assert [(name, routes) for name, _, routes in backend.nodes_with_routes()] == [
        ("ARCHIVE", ["ct-to-archive"]), ("CT_SCANNER_1", []), ("MR_1", []), ("PACS_MAIN", ["everything-to-pacs"])
    ]  # fmt: skip
    with pytest.raises(BackendError, match="used by route\\(s\\) everything-to-pacs: change or remove those routes"):
        backend.remove_node("PACS_MAIN", "decommission")
    with pytest.raises(BackendError, match="renaming it would break them"):
        backend.save_node("PACS_NEW", PACS, "rename", editing="PACS_MAIN")
    assert site.config_path.read_bytes() == live and len(site.metas()) == versions


def test_rollback_records_a_new_version_and_refuses_never_applied_ones(site: Site) -> None:
    backend = site.backend()
    assert [v.outcome for v in backend.versions()] == ["applied", "applied", "applied", "failed"]
    assert backend.live() == {"sha256": site.metas()[2]["sha256"], "version": 3, "drifted": False,
                              "daemon_runs_live": None}  # fmt: skip
    assert "+  PACS_MAIN: {ae_title: PACS_OLD" in backend.diff(2, 3)

    with pytest.raises(BackendError, match="never applied"):
        backend.rollback(4, "try the failed one")
    result = backend.rollback(2, "PACS_OLD was wrong: back to the last good config", ticket="INC0042")
    assert result.outcome == "applied" and result.version == 5
    assert site.config_path.read_text() == backend.version_text(2)
    last = site.metas()[-1]
    assert (last["source"], last["author"], last["rollback_of"], last["ticket"]) == ("rollback", OPERATOR, 2, "INC0042")
    assert backend.live()["version"] == 5


def test_a_hand_edit_shows_as_drift(site: Site) -> None:
    site.config_path.write_text(site.config_path.read_text().replace("port: 11112", "port: 11113"))
    live = site.backend().live()
    assert live["drifted"] is True and live["version"] is None


def test_backup_create_verify_restore_with_a_real_bundle(site: Site) -> None:
    backend = site.backend()
    run = backend.backup_create()  # the key file the config names
    assert [b.name for b in backend.backups()] == [run.bundle.name]
    contents = backend.backup_verify(run.bundle.name)
    assert contents.parts[:2] == ["config", "history"] and contents.files > 4

    with pytest.raises(BackendError, match="encrypted with a key file"):
        backend.backup_verify(run.bundle.name, "a guessed passphrase")

    good = site.config_path.read_text()
    backend.save_node("PACS_MAIN", {**PACS, "port": "105"}, "vendor says 105", editing="PACS_MAIN")
    plan = backend.restore_plan(run.bundle.name)
    assert plan.config_only and "Restore plan (config only)" in plan.render()
    assert "-  PACS_MAIN:" in plan.render() and "port: 105" in plan.render()
    work = plan.work
    result = backend.restore_confirmed(plan)
    assert result.restored == ["config"] and result.config_outcome == "applied"
    assert site.config_path.read_text() == good and not work.exists()
    last = site.metas()[-1]
    assert (last["source"], last["author"], last["reason"]) == ("restore", OPERATOR, f"restore from {run.bundle.name}")
    audit = site.audit("backup.")
    assert [(e["event"], e["outcome"]) for e in audit] == [
        ("backup.create", "success"),
        ("backup.verify", "success"),
        ("backup.verify", "failure"),
        ("backup.restore", "success"),
    ]
    assert audit[-1]["operator"] == OPERATOR and audit[-1]["mode"] == "config-only"


def test_a_corrupt_bundle_is_refused_and_nothing_changes(site: Site) -> None:
    backend = site.backend()
    bundle = backend.backup_create().bundle.path
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    backend.save_node("PACS_MAIN", PACS, "fix AE", editing="PACS_MAIN")
    live, metas = site.config_path.read_bytes(), site.metas()

    with pytest.raises(BackendError, match="altered|damaged"):
        backend.backup_verify(bundle.name)
    with pytest.raises(BackendError, match="altered|damaged"):
        backend.restore_plan(bundle.name)
    assert site.config_path.read_bytes() == live and site.metas() == metas
    assert not list(site.state.glob(".restore-*"))  # the partly decrypted copy is gone
    refusal = site.audit("backup.restore")[-1]
    assert refusal["outcome"] == "failure" and refusal["operator"] == OPERATOR


def test_a_declined_restore_changes_nothing_and_is_noted(site: Site) -> None:
    backend = site.backend()
    name = backend.backup_create().bundle.name
    live = site.config_path.read_bytes()
    plan = backend.restore_plan(name, config_only=False)
    assert "Restore plan (full):" in plan.render()
    backend.restore_declined(plan)
    assert not plan.work.exists() and site.config_path.read_bytes() == live
    entry = site.audit("backup.restore")[-1]
    assert (entry["outcome"], entry["mode"]) == ("refused", "full")


def test_a_broken_live_file_can_still_be_rolled_back(site: Site) -> None:
    """At 3 a.m. the file may be broken by hand: endpoints and backups refuse to work on it (and say why),
    the history still lists the versions and rolls back to a good one."""
    backend = site.backend()
    site.config_path.write_text(site.config_path.read_text().replace("port: 104,", "port: 0,"))
    with pytest.raises(BackendError, match="the live config has 4 problem\\(s\\); fix it first \\(Config history"):
        backend.nodes()
    assert len(backend.versions()) == 4 and backend.live()["drifted"] is True
    result = backend.rollback(3, "undo the hand edit")
    assert result.outcome == "applied" and "the live config is itself invalid" in " ".join(result.warnings)
    assert site.config_path.read_text() == backend.version_text(3) and len(backend.nodes()) == 4


def test_with_the_router_running_a_console_change_is_reloaded_and_confirmed(tmp_path: Path) -> None:
    """Against the real daemon: the change is live in the running router (its processes report the new
    version) before the console says so; an echo then goes out as the router's AE title."""
    scp = StoreSCP(tmp_path, ae_title="PACS").start()
    (tmp_path / "router").mkdir()
    router = Router(tmp_path / "router", {"PACS_MAIN": dest_node("PACS_OLD", scp.port)},
                    router_extra={"drain_seconds": 0}).start()  # fmt: skip
    backend = Backend(router.config_path, OPERATOR)
    fields = {"ae_title": "PACS", "host": "127.0.0.1", "port": str(scp.port), "role": "destination"}
    first = backend.save_node("PACS_MAIN", fields, "AE title is PACS", editing="PACS_MAIN")
    assert first.outcome == "applied" and first.message.startswith(f"version {first.version} applied; router reloaded")
    assert backend.live()["daemon_runs_live"] is True
    assert backend.echo("PACS_MAIN").ok
    back = backend.rollback(first.version - 1, "try the old one again")  # type: ignore[operator]
    assert "router reloaded" in back.message and backend.live()["daemon_runs_live"] is True
    router.stop()
