"""appliance.router.rules: instance facts → one target per destination, with reasons for every miss."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from appliance.router.config import Priority, RouterConfig, parse_config
from appliance.router.rules import Facts, RouteDecision, Target, evaluate

NODES = """\
nodes:
  CT1_NODE: {ae_title: CT1, host: 10.0.0.1, port: 104, role: source}
  MR1_NODE: {ae_title: MR1, host: 10.0.0.3, port: 104, role: source}
  PACS_MAIN: {ae_title: PACS, host: 10.0.0.2, port: 104, role: destination}
  ARCHIVE: {ae_title: ARCH, host: 10.0.0.4, port: 104, role: destination}
  AI_BOX: {ae_title: AI, host: 10.0.0.5, port: 104, role: destination}
"""


def config(routes_yaml: str) -> RouterConfig:
    return parse_config(NODES + "routes:\n" + routes_yaml)


def facts(
    tags: Mapping[str, str | None] | None = None,
    calling_ae: str | None = "CT1",
    called_ae: str | None = "DICOM_ROUTER",
    source_node: str | None = "CT1_NODE",
) -> Facts:
    return Facts(calling_ae=calling_ae, called_ae=called_ae, source_node=source_node, tags=dict(tags or {}))


def one_route(match_yaml: str) -> RouterConfig:
    return config(f"  - name: r\n    match: {match_yaml}\n    to: [PACS_MAIN]\n")


def destinations(targets: list[Target]) -> set[str]:
    return {t.destination for t in targets}


# -- operators ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match_yaml", "value", "hit"),
    [
        ("{Modality: CT}", "CT", True),
        ("{Modality: CT}", "MR", False),
        ("{Modality: CT}", "ct", False),  # case matters
        ("{Modality: CT}", "CTX", False),  # whole value, not a prefix
        ("{Modality: CT}", None, False),  # missing tag never equals anything
        ("{Modality: {equals: CT}}", "CT", True),
        ("{StationName: 'CT*'}", "CT_ROOM_2", True),
        ("{StationName: 'CT*'}", "XCT_ROOM", False),
        ("{StationName: {glob: 'CT?'}}", "CT2", True),
        ("{StationName: {glob: 'CT?'}}", "CT22", False),
        ("{StationName: {glob: 'CT*'}}", "ct_room", False),  # glob is case-sensitive
        ("{StationName: {glob: 'CT*'}}", None, False),
        ("{Modality: {regex: 'CT|MR'}}", "MR", True),
        ("{Modality: {regex: 'CT|MR'}}", "PT", False),
        ("{Modality: {regex: 'C'}}", "CT", False),  # regex must match the whole value
        ("{Modality: {regex: 'C.*'}}", "CT", True),
        ("{Modality: {regex: '.*'}}", None, False),
        ("{AccessionNumber: {present: true}}", "A1", True),
        ("{AccessionNumber: {present: true}}", "", True),  # present but empty is present
        ("{AccessionNumber: {present: true}}", None, False),
        ("{AccessionNumber: {present: false}}", None, True),  # 'absent'
        ("{AccessionNumber: {present: false}}", "A1", False),
    ],
)
def test_operator(match_yaml: str, value: str | None, hit: bool) -> None:
    cfg = one_route(match_yaml)
    key = next(iter(cfg.routes[0].match.tests))
    targets, decisions = evaluate(cfg, facts({key: value}))
    assert decisions[0].matched is hit
    assert destinations(targets) == ({"PACS_MAIN"} if hit else set())


def test_all_conditions_of_a_route_must_hold() -> None:
    cfg = one_route("{Modality: CT, StationName: 'CT*'}")
    assert evaluate(cfg, facts({"Modality": "CT", "StationName": "CT1"}))[0]
    targets, decisions = evaluate(cfg, facts({"Modality": "CT", "StationName": "MR1"}))
    assert targets == []
    assert decisions[0].reasons == ("StationName is 'MR1', wanted matches glob 'CT*'",)


# -- association facts ----------------------------------------------------------------------------


def test_calling_ae() -> None:
    cfg = one_route("{calling_ae: CT1}")
    assert destinations(evaluate(cfg, facts(calling_ae="CT1"))[0]) == {"PACS_MAIN"}
    assert evaluate(cfg, facts(calling_ae="MR1"))[0] == []


def test_called_ae() -> None:
    cfg = one_route("{called_ae: {glob: 'ROUTER_*'}}")
    assert destinations(evaluate(cfg, facts(called_ae="ROUTER_AI"))[0]) == {"PACS_MAIN"}
    assert evaluate(cfg, facts(called_ae="DICOM_ROUTER"))[0] == []


def test_source_node() -> None:
    cfg = one_route("{source_node: MR1_NODE}")
    assert destinations(evaluate(cfg, facts(source_node="MR1_NODE"))[0]) == {"PACS_MAIN"}
    assert evaluate(cfg, facts(source_node="CT1_NODE"))[0] == []
    # An unknown caller has no source node: absent never equals a name.
    targets, decisions = evaluate(cfg, facts(source_node=None))
    assert targets == []
    assert decisions[0].reasons == ("source_node is absent, wanted == 'MR1_NODE'",)


def test_association_keys_are_not_looked_up_in_tags() -> None:
    cfg = one_route("{calling_ae: CT1}")
    # A tag dictionary that happens to hold the key must not be consulted.
    assert evaluate(cfg, facts({"calling_ae": "CT1"}, calling_ae="XX"))[0] == []


# -- combining routes -----------------------------------------------------------------------------


def test_route_without_match_matches_everything() -> None:
    cfg = config("  - name: all\n    to: [PACS_MAIN]\n")
    for f in (facts(), facts({"Modality": "MR"}, calling_ae=None, called_ae=None, source_node=None)):
        targets, decisions = evaluate(cfg, f)
        assert targets == [Target("PACS_MAIN", "all", int(Priority.routine))]
        assert decisions == [RouteDecision("all", True, ())]


def test_one_target_per_destination_with_best_priority() -> None:
    cfg = config(
        """\
  - name: bulk-copy
    to: [PACS_MAIN, ARCHIVE]
    priority: bulk
  - name: ct-stat
    match: {Modality: CT}
    to: [PACS_MAIN]
    priority: stat
  - name: ct-routine
    match: {Modality: CT}
    to: [PACS_MAIN, ARCHIVE]
"""
    )
    targets, decisions = evaluate(cfg, facts({"Modality": "CT"}))
    assert all(d.matched for d in decisions)
    by_dest = {t.destination: t for t in targets}
    assert len(targets) == len(by_dest) == 2  # one target per destination, never two
    assert by_dest["PACS_MAIN"] == Target("PACS_MAIN", "ct-stat", int(Priority.stat))
    assert by_dest["ARCHIVE"] == Target("ARCHIVE", "ct-routine", int(Priority.routine))


def test_best_priority_wins_even_when_listed_first() -> None:
    cfg = config(
        """\
  - name: first-stat
    to: [PACS_MAIN]
    priority: stat
  - name: later-bulk
    to: [PACS_MAIN]
    priority: bulk
"""
    )
    targets, _ = evaluate(cfg, facts())
    assert targets == [Target("PACS_MAIN", "first-stat", 0)]


def test_equal_priority_keeps_the_first_route() -> None:
    cfg = config("  - {name: one, to: [PACS_MAIN]}\n  - {name: two, to: [PACS_MAIN]}\n")
    assert evaluate(cfg, facts())[0] == [Target("PACS_MAIN", "one", int(Priority.routine))]


def test_missed_route_contributes_nothing() -> None:
    cfg = config(
        """\
  - name: ct-to-ai
    match: {Modality: CT}
    to: [AI_BOX]
    priority: stat
  - name: all-to-pacs
    to: [PACS_MAIN]
"""
    )
    targets, decisions = evaluate(cfg, facts({"Modality": "MR"}))
    assert targets == [Target("PACS_MAIN", "all-to-pacs", 1)]
    assert [(d.route, d.matched) for d in decisions] == [("ct-to-ai", False), ("all-to-pacs", True)]


# -- explaining -----------------------------------------------------------------------------------


def test_decisions_explain_every_miss_in_words() -> None:
    cfg = config(
        """\
  - name: picky
    match:
      Modality: {regex: 'CT|MR'}
      StationName: 'CT*'
      AccessionNumber: {present: true}
      PatientID: {present: false}
      calling_ae: CT1
    to: [PACS_MAIN]
"""
    )
    targets, decisions = evaluate(
        cfg, facts({"Modality": "PT", "StationName": "PET1", "PatientID": "P1"}, calling_ae="PET")
    )
    assert targets == []
    (decision,) = decisions
    assert decision.route == "picky" and decision.matched is False
    assert decision.reasons == (
        "Modality is 'PT', wanted matches regex 'CT|MR'",
        "StationName is 'PET1', wanted matches glob 'CT*'",
        "AccessionNumber is absent, wanted present",
        "PatientID is 'P1', wanted absent",
        "calling_ae is 'PET', wanted == 'CT1'",
    )


def test_a_match_has_no_reasons() -> None:
    cfg = one_route("{Modality: CT}")
    _, decisions = evaluate(cfg, facts({"Modality": "CT"}))
    assert decisions == [RouteDecision("r", True, ())]


def test_unrouted_means_no_targets() -> None:
    cfg = config(
        "  - {name: ct, match: {Modality: CT}, to: [PACS_MAIN]}\n  - {name: mr, match: {Modality: MR}, to: [ARCHIVE]}\n"
    )
    targets, decisions = evaluate(cfg, facts({"Modality": "US"}))
    assert targets == []
    assert len(decisions) == 2 and not any(d.matched for d in decisions)
    assert decisions[1].reasons == ("Modality is 'US', wanted == 'MR'",)


def test_no_routes_at_all_is_unrouted() -> None:
    cfg = parse_config(NODES)
    assert evaluate(cfg, facts({"Modality": "CT"})) == ([], [])
