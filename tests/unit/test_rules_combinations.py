"""Routing rules beyond one flat match: all/any/not, time windows, sequence paths, hold, per-study
forwarding, morph resolution, and the test/production segregation `config check` enforces."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime

import pytest

from appliance.router.config import ConfigError, RouterConfig, parse_config
from appliance.router.rules import Facts, TagValue, Target, evaluate

NODES = """\
nodes:
  CT1_NODE: {ae_title: CT1, host: 10.0.0.1, port: 104, role: source}
  PACS_MAIN: {ae_title: PACS, host: 10.0.0.2, port: 104, role: destination}
  TELERAD: {ae_title: TELE, host: 10.0.0.7, port: 104, role: destination, morph: [deid]}
morph_profiles:
  deid: {steps: [{remove: {tag: PatientName}}]}
  prefix: {steps: [{prefix: {tag: PatientID, value: "N-"}}]}
"""

# Added by the segregation tests: a test scanner and a test PACS beside the production nodes.
TEST_NODES = """\
  CT_TEST: {ae_title: CTTEST, host: 10.0.0.9, port: 104, role: source, environment: test}
  PACS_TEST: {ae_title: PACST, host: 10.0.0.8, port: 104, role: destination, environment: test}
"""

FRIDAY_NOON = datetime(2026, 11, 27, 12, 0)
FRIDAY_NIGHT = datetime(2026, 11, 27, 22, 30)
SATURDAY_MORNING = datetime(2026, 11, 28, 6, 59)


def config(routes_yaml: str, with_test_nodes: bool = False) -> RouterConfig:
    nodes = NODES.replace("morph_profiles:", TEST_NODES + "morph_profiles:") if with_test_nodes else NODES
    return parse_config(nodes + "routes:\n" + textwrap.indent(textwrap.dedent(routes_yaml), "  "))


def facts(tags: Mapping[str, TagValue] | None = None, source_node: str | None = "CT1_NODE") -> Facts:
    ae = {"CT1_NODE": "CT1", "CT_TEST": "CTTEST"}.get(source_node or "")
    return Facts(calling_ae=ae, called_ae="DICOM_ROUTER", source_node=source_node, tags=dict(tags or {}))


def dests(cfg: RouterConfig, f: Facts, now: datetime = FRIDAY_NOON) -> set[str]:
    return {t.destination for t in evaluate(cfg, f, now)[0]}


# -- all / any / not --------------------------------------------------------------------------------


def test_any_matches_when_one_member_holds() -> None:
    cfg = config(
        """\
        - name: r
          match: {any: [{Modality: CT}, {Modality: MR}]}
          to: [PACS_MAIN]
        """
    )
    assert dests(cfg, facts({"Modality": "MR"})) == {"PACS_MAIN"}
    assert dests(cfg, facts({"Modality": "US"})) == set()
    _, decisions = evaluate(cfg, facts({"Modality": "US"}), FRIDAY_NOON)
    assert decisions[0].reasons == (
        "none of the `any` conditions holds: Modality is 'US', wanted == 'CT' / Modality is 'US', wanted == 'MR'",
    )


def test_not_excludes_and_explains() -> None:
    cfg = config(
        """\
        - name: r
          match: {Modality: CT, not: {ImageType: '*LOCALIZER*'}}
          to: [PACS_MAIN]
        """
    )
    assert dests(cfg, facts({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\AXIAL"})) == {"PACS_MAIN"}
    assert dests(cfg, facts({"Modality": "CT", "ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"})) == set()
    _, decisions = evaluate(cfg, facts({"Modality": "CT", "ImageType": "X\\LOCALIZER"}), FRIDAY_NOON)
    assert decisions[0].reasons == ("the `not` condition holds (ImageType is 'X\\LOCALIZER')",)
    # An absent tag does not match the glob, so `not` holds as a whole.
    assert dests(cfg, facts({"Modality": "CT"})) == {"PACS_MAIN"}


def test_all_nested_inside_any() -> None:
    cfg = config(
        """\
        - name: r
          match:
            any:
              - all: [{Modality: CT}, {BodyPartExamined: HEAD}]
              - {Modality: MR, source_node: CT1_NODE}
          to: [PACS_MAIN]
        """
    )
    assert dests(cfg, facts({"Modality": "CT", "BodyPartExamined": "HEAD"})) == {"PACS_MAIN"}
    assert dests(cfg, facts({"Modality": "CT", "BodyPartExamined": "CHEST"})) == set()
    assert dests(cfg, facts({"Modality": "MR"})) == {"PACS_MAIN"}
    assert dests(cfg, facts({"Modality": "MR"}, source_node=None)) == set()
    assert cfg.tag_keywords() == ["Modality", "BodyPartExamined"]


def test_empty_any_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config("- {name: r, match: {any: []}, to: [PACS_MAIN]}\n")
    assert "'any' takes a list of one or more conditions" in str(info.value)


# -- sequence paths -------------------------------------------------------------------------------


def test_sequence_path_matches_any_item() -> None:
    cfg = config(
        """\
        - name: r
          match: {RequestAttributesSequence.RequestedProcedureID: 'RP7*'}
          to: [PACS_MAIN]
        """
    )
    assert cfg.tag_keywords() == ["RequestAttributesSequence.RequestedProcedureID"]
    key = "RequestAttributesSequence.RequestedProcedureID"
    assert dests(cfg, facts({key: ("RP1", "RP77")})) == {"PACS_MAIN"}
    assert dests(cfg, facts({key: ("RP1",)})) == set()
    assert dests(cfg, facts({key: ()})) == set()
    _, decisions = evaluate(cfg, facts({key: ("RP1", "RP2")}), FRIDAY_NOON)
    assert decisions[0].reasons == (f"{key} is ['RP1', 'RP2'], wanted matches glob 'RP7*'",)


def test_sequence_path_present() -> None:
    cfg = config(
        "- {name: r, match: {ReferencedStudySequence.ReferencedSOPInstanceUID: {present: true}}, to: [PACS_MAIN]}\n"
    )
    key = "ReferencedStudySequence.ReferencedSOPInstanceUID"
    assert dests(cfg, facts({key: ("1.2.3",)})) == {"PACS_MAIN"}
    assert dests(cfg, facts({key: ()})) == set()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("RequestAttributesSequence.RequestedProcedureId", "did you mean RequestedProcedureID?"),
        ("Modality.Foo", "'Modality' in 'Modality.Foo' is not a sequence"),
        ("RequestAttributeSequence.RequestedProcedureID", "did you mean RequestAttributesSequence?"),
    ],
)
def test_bad_sequence_path_is_refused(path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(f"- {{name: r, match: {{{path}: X}}, to: [PACS_MAIN]}}\n")
    assert message in str(info.value)


def test_unknown_keyword_inside_nested_block_has_its_line() -> None:
    routes = """\
        - name: r
          match:
            any:
              - {Modality: CT}
              - not: {StudyDescripton: X}
          to: [PACS_MAIN]
        """
    with pytest.raises(ConfigError) as info:
        config(routes)
    (problem,) = info.value.problems
    assert problem.where == "routes[0].match.any[1].not.StudyDescripton"
    assert "did you mean StudyDescription?" in problem.message
    text = NODES + "routes:\n" + textwrap.indent(textwrap.dedent(routes), "  ")
    assert problem.line == next(n for n, line in enumerate(text.splitlines(), 1) if "StudyDescripton" in line)


def test_invalid_regex_deep_inside_is_refused_with_its_place() -> None:
    with pytest.raises(ConfigError) as info:
        config("- {name: r, match: {all: [{PatientID: {regex: 'N-(['}}]}, to: [PACS_MAIN]}\n")
    (problem,) = info.value.problems
    assert problem.where == "routes[0].match.all[0].PatientID"
    assert "does not compile" in problem.message


# -- time windows ---------------------------------------------------------------------------------


def test_off_hours_window_crossing_midnight() -> None:
    cfg = config(
        """\
        - name: off-hours
          when: {between: "18:00-07:00"}
          to: [PACS_MAIN]
        """
    )
    assert dests(cfg, facts(), FRIDAY_NOON) == set()
    assert dests(cfg, facts(), FRIDAY_NIGHT) == {"PACS_MAIN"}
    assert dests(cfg, facts(), SATURDAY_MORNING) == {"PACS_MAIN"}
    assert dests(cfg, facts(), datetime(2026, 11, 28, 7, 0)) == set()  # the end is exclusive
    _, decisions = evaluate(cfg, facts(), FRIDAY_NOON)
    assert decisions[0].reasons == ("outside its time window (18:00-07:00); it is Fri 12:00",)


def test_several_windows_are_alternatives() -> None:
    cfg = config(
        """\
        - name: weekend-or-night
          when: [{days: [sat, sun]}, {days: [mon, tue, wed, thu, fri], between: "20:00-23:59"}]
          to: [PACS_MAIN]
        """
    )
    assert dests(cfg, facts(), FRIDAY_NOON) == set()
    assert dests(cfg, facts(), FRIDAY_NIGHT) == {"PACS_MAIN"}
    assert dests(cfg, facts(), SATURDAY_MORNING) == {"PACS_MAIN"}


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ('{between: "25:00-07:00"}', "is not a time range like 18:00-07:00"),
        ('{between: "07:00-07:00"}', "starts and ends at the same minute"),
        ("{days: [funday]}", "days"),
        ("{}", "a time window needs days, between, or both"),
    ],
)
def test_bad_time_window(window: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(f"- {{name: r, when: {window}, to: [PACS_MAIN]}}\n")
    assert message in str(info.value)
    assert "routes[0].when" in str(info.value)


# -- what a matching route asks for ----------------------------------------------------------------


def test_hold_route_wins_over_forwarding_route_for_the_same_destination() -> None:
    cfg = config(
        """\
        - name: everything
          to: [PACS_MAIN]
          priority: stat
        - name: no-patient-id
          match: {PatientID: {present: false}}
          to: [PACS_MAIN]
          action: hold
          hold_reason: "no Patient ID: check the worklist before releasing"
          priority: bulk
        """
    )
    (target,) = evaluate(cfg, facts({}), FRIDAY_NOON)[0]
    assert target.route == "no-patient-id"
    assert target.hold_reason == "no Patient ID: check the worklist before releasing"
    (target,) = evaluate(cfg, facts({"PatientID": "P1"}), FRIDAY_NOON)[0]
    assert (target.route, target.hold_reason) == ("everything", None)


def test_hold_without_reason_names_the_route() -> None:
    cfg = config("- {name: quarantine, action: hold, to: [PACS_MAIN]}\n")
    (target,) = evaluate(cfg, facts(), FRIDAY_NOON)[0]
    assert target.hold_reason == "held by route 'quarantine' for review: release it to send"


def test_forward_mode_morph_and_transcode_reach_the_target() -> None:
    cfg = config(
        """\
        - name: to-telerad
          to: [TELERAD, PACS_MAIN]
          forward: study
          morph: [prefix]
          transcode: never
        """
    )
    targets = {t.destination: t for t in evaluate(cfg, facts(), FRIDAY_NOON)[0]}
    # The destination's own profile (deid) applies after the route's, to every object it gets.
    assert targets["TELERAD"] == Target("TELERAD", "to-telerad", 1, None, "study", ("prefix", "deid"), "never")
    assert targets["PACS_MAIN"].morph == ("prefix",)


def test_unknown_morph_profile_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config("- {name: r, to: [PACS_MAIN], morph: [site-prefx]}\n")
    (problem,) = info.value.problems
    assert problem.where == "routes[0].morph[0]"
    assert "morph profile 'site-prefx' is not defined under morph_profiles (defined: deid, prefix)" in problem.message


# -- test / production segregation ----------------------------------------------------------------


def test_route_mixing_environments_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config("- {name: all-to-pacs, to: [PACS_MAIN]}\n", with_test_nodes=True)
    (problem,) = info.value.problems
    assert problem.where == "routes[0].to[0]"
    assert "could carry objects from test source 'CT_TEST' to production destination 'PACS_MAIN'" in problem.message
    assert "allow_environment_crossing: true" in problem.message


def test_production_source_to_test_destination_is_refused_too() -> None:
    with pytest.raises(ConfigError) as info:
        config("- {name: r, match: {source_node: CT1_NODE}, to: [PACS_TEST]}\n", with_test_nodes=True)
    assert "from production source 'CT1_NODE' to test destination 'PACS_TEST'" in str(info.value)


@pytest.mark.parametrize(
    "match",
    [
        "{source_node: CT1_NODE}",
        "{calling_ae: CT1}",
        "{any: [{source_node: CT1_NODE}, {calling_ae: CT1}]}",
        "{not: {source_node: CT_TEST}}",
        "{Modality: CT, source_node: {regex: 'CT1_.*'}}",
    ],
)
def test_a_route_restricted_to_production_sources_is_fine(match: str) -> None:
    config(f"- {{name: r, match: {match}, to: [PACS_MAIN]}}\n", with_test_nodes=True)


def test_explicit_crossing_is_allowed() -> None:
    cfg = config(
        "- {name: copy-to-test, match: {source_node: CT1_NODE}, to: [PACS_TEST], allow_environment_crossing: true}\n",
        with_test_nodes=True,
    )
    assert dests(cfg, facts()) == {"PACS_TEST"}


def test_a_dataset_condition_does_not_narrow_the_sources() -> None:
    # Modality says nothing about who sent the object: the test scanner could send CT too.
    with pytest.raises(ConfigError):
        config("- {name: r, match: {Modality: CT}, to: [PACS_MAIN]}\n", with_test_nodes=True)


def test_morph_profile_problems_are_reported_with_their_lines() -> None:
    text = BAD_MORPH
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    found = {p.where: (p.line, p.message) for p in info.value.problems}
    lines = text.splitlines()
    assert found["morph_profiles.fix-date.steps[0].set"][1].startswith(
        "value '2024-01-31' does not fit StudyDate (VR DA): DA must be a date written YYYYMMDD"
    )
    assert "did you mean PatientName?" in found["morph_profiles.fix-date.steps[1].prefix.tag"][1]
    assert "does not compile" in found["morph_profiles.fix-date.steps[2].regex"][1]
    for where, needle in (
        ("steps[0].set", "2024-01-31"),
        ("steps[1].prefix.tag", "PatientNme"),
        ("steps[2].regex", "(["),
    ):
        line, _ = found[f"morph_profiles.fix-date.{where}"]
        assert needle in lines[line - 1]


BAD_MORPH = """\
nodes:
  CT: {ae_title: CT1, host: 10.0.0.1, port: 104, role: source}
  PACS: {ae_title: PACS, host: 10.0.0.2, port: 104, role: destination, morph: [fix-date]}
morph_profiles:
  fix-date:
    steps:
      - set: {tag: StudyDate, value: "2024-01-31"}
      - prefix: {tag: PatientNme, value: "N-"}
      - regex: {tag: PatientID, pattern: "([", replace: ""}
routes:
  - {name: r, match: {Modality: CT}, to: [PACS]}
"""


def test_the_receivers_fast_path_decides_exactly_like_the_explained_one() -> None:
    import random

    from tests.bench.bench_relay import fifty_rules

    routes = fifty_rules() + [
        {"name": "night", "when": {"between": "18:00-07:00"}, "to": ["TELERAD"], "action": "hold"},
        {"name": "seq", "match": {"RequestAttributesSequence.RequestedProcedureID": "RP*"}, "to": ["TELERAD"]},
    ]
    cfg = RouterConfig.model_validate(
        {
            "nodes": {
                "PACS_MAIN": {"ae_title": "PACS", "host": "h", "port": 104, "role": "destination"},
                "TELERAD": {"ae_title": "TELE", "host": "h", "port": 104, "role": "destination"},
            },
            "routes": routes,
        }
    )
    rng = random.Random(7)
    values = {
        "Modality": ["CT", "MR", "US", "SR", None],
        "StationName": ["ROOM0A", "ROOM5", None],
        "StudyDescription": ["Protocol 2 head", "x", None],
        "AccessionNumber": ["X0003A", "A1", None],
        "PatientID": ["P1", None],
        "InstitutionName": ["Hospital 4", None],
        "ReferringPhysicianName": ["DR^X", None],
        "RequestAttributesSequence.RequestedProcedureID": [("RP1",), (), ("X", "RP9")],
    }
    for _ in range(500):
        tags = {k: rng.choice(v) for k, v in values.items()}
        ae = rng.choice(["MOD1", "MOD6B", "STORESCU", None])
        f = Facts(calling_ae=ae, called_ae="DICOM_ROUTER", source_node=None, tags=tags)
        at = rng.choice([FRIDAY_NOON, FRIDAY_NIGHT])
        explained, _ = evaluate(cfg, f, at)
        fast, decisions = evaluate(cfg, f, at, explain=False)
        assert sorted(fast, key=lambda t: t.destination) == sorted(explained, key=lambda t: t.destination)
        assert decisions == []
