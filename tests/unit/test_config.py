"""appliance.router.config: the example loads; every kind of mistake is reported with its line and a fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.router.config import (
    ConfigError,
    Priority,
    Problem,
    RouterConfig,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "router.yaml"

# Two nodes most error cases build on; each test appends the part that is wrong.
NODES = """\
nodes:
  CT1_NODE: {ae_title: CT1, host: 10.0.0.1, port: 104, role: source}
  PACS_MAIN: {ae_title: PACS, host: 10.0.0.2, port: 104, role: destination}
"""


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line containing `needle` (so tests don't hard-code numbers)."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in test YAML")


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml")
    assert info.value.problems, "a ConfigError must carry at least one problem"
    return info.value.problems


def only_problem(text: str) -> Problem:
    problems = problems_of(text)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# -- the good path --------------------------------------------------------------------------------


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, RouterConfig)
    assert cfg.router.ae_title == "DICOM_ROUTER"
    assert cfg.router.port == 11112
    assert set(cfg.nodes) == {"CT_SCANNER_1", "MR_SCANNER_1", "STORESCU", "PACS_MAIN", "ARCHIVE"}
    assert set(cfg.destinations()) == {"PACS_MAIN", "ARCHIVE"}
    assert cfg.sources_by_ae() == {"CT1": "CT_SCANNER_1", "MR1": "MR_SCANNER_1", "STORESCU": "STORESCU"}
    assert [r.name for r in cfg.routes] == ["everything-to-pacs", "ct-and-mr-to-archive"]
    assert cfg.routes[0].match.is_empty()
    archive = cfg.routes[1]
    assert archive.priority is Priority.bulk
    assert archive.match.tests["Modality"].regex == "CT|MR"
    assert cfg.tag_keywords() == ["Modality"]
    assert cfg.nodes["PACS_MAIN"].max_associations == 4
    # Relative state/log dirs are anchored at the config file's folder (examples/ → ../run).
    assert cfg.spool_dir == EXAMPLE.resolve().parent.parent / "run" / "state" / "spool"
    assert cfg.router.log_dir == EXAMPLE.resolve().parent.parent / "run" / "log"


def test_shorthand_match_values() -> None:
    cfg = parse_config(
        NODES
        + yaml_text(
            """
            routes:
              - name: r
                match: {Modality: CT, StationName: "CT*", SeriesNumber: "5", PatientID: {present: false}}
                to: [PACS_MAIN]
                priority: stat
            """
        )
    )
    match = cfg.routes[0].match.tests
    assert match["Modality"].equals == "CT"
    assert match["StationName"].glob == "CT*"
    assert match["SeriesNumber"].equals == "5"
    assert match["PatientID"].present is False
    assert cfg.routes[0].priority is Priority.stat


def test_unquoted_number_in_match_is_refused_with_a_fix() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: r
            match: {StudyID: 0123}
            to: [PACS_MAIN]
        """
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    (problem,) = err.value.problems
    assert "is a number: write it in quotes" in problem.message
    assert problem.line == line_of(text, "match: {StudyID")


def test_empty_file_is_an_empty_but_valid_config() -> None:
    cfg = parse_config("")
    assert cfg.nodes == {} and cfg.routes == []
    assert cfg.router.ae_title == "DICOM_ROUTER"


def test_ae_title_is_stripped() -> None:
    cfg = parse_config("router: {ae_title: '  ROUTER  '}\n")
    assert cfg.router.ae_title == "ROUTER"


# -- one problem at a time ------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    text = yaml_text(
        """
        router:
          port: 11112
        nodez: {}
        """
    )
    p = only_problem(text)
    assert p.where == "nodez"
    assert p.line == line_of(text, "nodez")
    assert "not known" in p.message and "spelling" in p.message


def test_unknown_nested_key() -> None:
    text = yaml_text(
        """
        nodes:
          PACS_MAIN:
            ae_title: PACS
            host: 10.0.0.2
            port: 104
            role: destination
            max_assocations: 4
        """
    )
    p = only_problem(text)
    assert p.where == "nodes.PACS_MAIN.max_assocations"
    assert p.line == line_of(text, "max_assocations")
    assert "not known" in p.message


def test_unknown_key_in_router_section() -> None:
    text = yaml_text(
        """
        router:
          ae_title: R
          state_dri: /tmp/x
        """
    )
    p = only_problem(text)
    assert p.where == "router.state_dri"
    assert p.line == 3


@pytest.mark.parametrize("port", [0, 70000, -1, 65536])
def test_impossible_node_port(port: int) -> None:
    text = yaml_text(
        f"""
        nodes:
          PACS_MAIN:
            ae_title: PACS
            host: 10.0.0.2
            port: {port}
            role: destination
        """
    )
    p = only_problem(text)
    assert p.where == "nodes.PACS_MAIN.port"
    assert p.line == line_of(text, "port:")
    assert p.message == f"port {port} is impossible: use 1-65535"


def test_impossible_router_port() -> None:
    text = yaml_text(
        """
        router:
          ae_title: R
          port: 0
        """
    )
    p = only_problem(text)
    assert p.where == "router.port"
    assert p.line == 3
    assert "port 0 is impossible" in p.message and "1-65535" in p.message


@pytest.mark.parametrize("port", [1, 104, 65535])
def test_port_bounds_are_inclusive(port: int) -> None:
    cfg = parse_config(f"nodes:\n  A: {{ae_title: A, host: h, port: {port}, role: destination}}\n")
    assert cfg.nodes["A"].port == port


@pytest.mark.parametrize(
    "title_yaml",
    [
        "ABCDEFGHIJKLMNOPQ",  # 17 characters
        "'AB\\CD'",  # backslash (single-quoted YAML: the backslash is literal)
        "''",  # empty
        "'    '",  # only spaces
    ],
    ids=["17-chars", "backslash", "empty", "spaces"],
)
def test_invalid_ae_title(title_yaml: str) -> None:
    text = yaml_text(
        f"""
        nodes:
          PACS_MAIN:
            host: 10.0.0.2
            ae_title: {title_yaml}
            port: 104
            role: destination
        """
    )
    p = only_problem(text)
    assert p.where == "nodes.PACS_MAIN.ae_title"
    assert p.line == line_of(text, "ae_title")
    assert "not a valid AE title" in p.message
    assert "1-16" in p.message and "backslash" in p.message


def test_sixteen_char_ae_title_is_fine() -> None:
    cfg = parse_config("nodes:\n  A: {ae_title: ABCDEFGHIJKLMNOP, host: h, port: 104, role: destination}\n")
    assert cfg.nodes["A"].ae_title == "ABCDEFGHIJKLMNOP"


def test_invalid_router_ae_title() -> None:
    text = "router:\n  bind: 0.0.0.0\n  ae_title: 'A\\B'\n"
    p = only_problem(text)
    assert p.where == "router.ae_title"
    assert p.line == 3
    assert "not a valid AE title" in p.message


def test_duplicate_ae_titles() -> None:
    text = yaml_text(
        """
        nodes:
          CT1_NODE: {ae_title: SAME, host: 10.0.0.1, port: 104, role: source}
          PACS_MAIN: {ae_title: SAME, host: 10.0.0.2, port: 104, role: destination}
        """
    )
    p = only_problem(text)
    assert p.where == "nodes.PACS_MAIN.ae_title"
    assert p.line == line_of(text, "PACS_MAIN")
    assert "'SAME'" in p.message and "CT1_NODE" in p.message
    assert "unique" in p.message and "role: both" in p.message


def test_duplicate_ae_titles_after_stripping_spaces() -> None:
    text = yaml_text(
        """
        nodes:
          A: {ae_title: 'X ', host: h, port: 104, role: source}
          B: {ae_title: X, host: h, port: 105, role: destination}
        """
    )
    p = only_problem(text)
    assert p.where == "nodes.B.ae_title"


def test_route_to_undefined_node() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: to-nowhere
            to:
              - PACS_MAIN
              - PACS_MIAN
        """
    )
    p = only_problem(text)
    assert p.where == "routes[0].to[1]"
    assert p.line == line_of(text, "PACS_MIAN")
    assert "'PACS_MIAN' is not a node" in p.message
    assert "destinations: PACS_MAIN" in p.message  # tells the operator what would be valid


def test_route_to_source_only_node() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: loop
            to:
              - CT1_NODE
        """
    )
    p = only_problem(text)
    assert p.where == "routes[0].to[0]"
    assert p.line == line_of(text, "- CT1_NODE")
    assert "role source" in p.message and "destination or both" in p.message


def test_route_to_node_with_role_both_is_fine() -> None:
    cfg = parse_config("nodes:\n  W: {ae_title: W, host: h, port: 104, role: both}\nroutes:\n  - {name: r, to: [W]}\n")
    assert cfg.nodes["W"].is_source and cfg.nodes["W"].is_destination


def test_unknown_dicom_keyword_suggests_the_right_one() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: ct
            match:
              Modalty: CT
            to: [PACS_MAIN]
        """
    )
    p = only_problem(text)
    assert p.where == "routes[0].match.Modalty"
    assert p.line == line_of(text, "Modalty")
    assert "'Modalty' is not a DICOM keyword" in p.message
    assert "did you mean Modality?" in p.message
    assert "calling_ae" in p.message  # the association keys are offered too


def test_unknown_keyword_without_close_match_has_no_hint() -> None:
    text = NODES + "routes:\n  - name: r\n    match: {Zzqxv: CT}\n    to: [PACS_MAIN]\n"
    p = only_problem(text)
    assert "not a DICOM keyword" in p.message
    assert "did you mean" not in p.message


def test_match_on_unknown_source_node() -> None:
    text = NODES + "routes:\n  - name: r\n    match: {source_node: CT9_NODE}\n    to: [PACS_MAIN]\n"
    p = only_problem(text)
    assert p.where == "routes[0].match.source_node"
    assert "'CT9_NODE' is not a node" in p.message


def test_bad_regex() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: ct
            match:
              Modality: {regex: "CT("}
            to: [PACS_MAIN]
        """
    )
    p = only_problem(text)
    assert p.where == "routes[0].match.Modality"
    assert p.line == line_of(text, "regex")
    assert "regex 'CT(' does not compile" in p.message


def test_two_operators_in_one_match_op() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: ct
            match:
              Modality: {equals: CT, glob: "C*"}
            to: [PACS_MAIN]
        """
    )
    p = only_problem(text)
    assert p.where == "routes[0].match.Modality"
    assert p.line == line_of(text, "equals")
    assert "exactly one of equals / glob / regex / present" in p.message
    assert "got equals, glob" in p.message


def test_match_op_with_no_operator() -> None:
    text = NODES + "routes:\n  - name: r\n    match: {Modality: {}}\n    to: [PACS_MAIN]\n"
    p = only_problem(text)
    assert "got none" in p.message


def test_duplicate_route_names() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: ct
            to: [PACS_MAIN]
          - name: other
            to: [PACS_MAIN]
          - name: ct
            to: [PACS_MAIN]
        """
    )
    p = only_problem(text)
    assert p.where == "routes[2].name"
    assert p.line == line_of(text, "name: ct", occurrence=2)
    assert "'ct' is used twice" in p.message


def test_routes_without_names_are_not_called_duplicates() -> None:
    text = NODES + "routes:\n  - to: [PACS_MAIN]\n  - to: [PACS_MAIN]\n"
    problems = problems_of(text)
    assert [(p.where, p.message) for p in problems] == [
        ("routes[0].name", "this key is required"),
        ("routes[1].name", "this key is required"),
    ]


def test_invalid_yaml_syntax() -> None:
    text = yaml_text(
        """
        router:
          ae_title: R
          port: [1, 2
        nodes: {}
        """
    )
    p = only_problem(text)
    assert p.message.startswith("not valid YAML")
    # ruamel notices the unclosed flow sequence where the next key starts
    assert p.line in (line_of(text, "port:"), line_of(text, "nodes:"))


def test_tab_indentation_is_invalid_yaml_with_its_line() -> None:
    p = only_problem("router:\n  ae_title: R\n\tport: 1\n")
    assert "not valid YAML" in p.message
    assert p.line == 3


def test_duplicate_yaml_keys_are_an_error() -> None:
    p = only_problem(
        "nodes:\n  A: {ae_title: X, host: h, port: 104, role: destination}\n"
        "  A: {ae_title: Y, host: h, port: 104, role: destination}\n"
    )
    assert "duplicate key" in p.message
    assert p.line == 3


def test_document_that_is_not_a_mapping() -> None:
    p = only_problem("- router\n- nodes\n")
    assert "must be a mapping" in p.message


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.path == missing
    assert len(info.value.problems) == 1
    assert "file not found" in info.value.problems[0].message
    assert "--config" in info.value.problems[0].message
    assert str(missing) in str(info.value)


def test_cap_seconds_below_base_seconds() -> None:
    text = yaml_text(
        """
        nodes:
          PACS_MAIN:
            ae_title: PACS
            host: 10.0.0.2
            port: 104
            role: destination
            retry:
              base_seconds: 60
              cap_seconds: 10
        """
    )
    p = only_problem(text)
    assert p.where == "nodes.PACS_MAIN.retry"
    assert p.line == line_of(text, "retry:")
    assert "cap_seconds (10.0) is below base_seconds (60.0)" in p.message


def test_unknown_priority_name() -> None:
    text = NODES + yaml_text(
        """
        routes:
          - name: ct
            to: [PACS_MAIN]
            priority: urgent
        """
    )
    p = only_problem(text)
    assert p.where == "routes[0].priority"
    assert p.line == line_of(text, "priority")
    assert "'urgent' is unknown" in p.message
    assert "stat, routine, bulk" in p.message


def test_problem_str_names_line_and_place() -> None:
    assert str(Problem("routes[0].to[1]", "bad", 7)) == "line 7: routes[0].to[1]: bad"
    assert str(Problem("", "file not found")) == "file not found"


# -- many problems at once ------------------------------------------------------------------------

MANY_PROBLEMS = yaml_text(
    """
    router:
      ae_title: ROUTER
      port: 70000
      colour: blue
    nodes:
      CT1_NODE: {ae_title: CT1, host: 10.0.0.1, port: 104, role: source}
      PACS_MAIN:
        ae_title: CT1
        host: 10.0.0.2
        port: 104
        role: destination
        retry: {base_seconds: 60, cap_seconds: 1}
    routes:
      - name: a
        match:
          Modalty: CT
          StudyDescription: {regex: "(("}
        to: [PACS_MAIN, NOWHERE, CT1_NODE]
        priority: asap
      - name: a
        to: [PACS_MAIN]
    """
)


def test_every_problem_is_reported_in_one_error() -> None:
    problems = problems_of(MANY_PROBLEMS)
    by_where = {p.where: p for p in problems}
    expected = {
        "router.port": "port 70000 is impossible",
        "router.colour": "not known",
        "nodes.PACS_MAIN.ae_title": "already used by node CT1_NODE",
        "nodes.PACS_MAIN.retry": "cap_seconds (1.0) is below base_seconds (60.0)",
        "routes[0].match.Modalty": "did you mean Modality?",
        "routes[0].match.StudyDescription": "does not compile",
        "routes[0].to[1]": "'NOWHERE' is not a node",
        "routes[0].to[2]": "role source",
        "routes[0].priority": "'asap' is unknown",
        "routes[1].name": "used twice",
    }
    for where, fragment in expected.items():
        assert where in by_where, f"missing problem at {where}; got {[str(p) for p in problems]}"
        assert fragment in by_where[where].message
    assert len(problems) == len(expected), [str(p) for p in problems]
    # Each carries its own line, and the list reads top to bottom.
    for where, needle in {
        "router.port": "port: 70000",
        "router.colour": "colour",
        "routes[0].match.Modalty": "Modalty",
        "routes[1].name": "- name: a",
    }.items():
        occurrence = 2 if where == "routes[1].name" else 1
        assert by_where[where].line == line_of(MANY_PROBLEMS, needle, occurrence)
    lines = [p.line or 0 for p in problems]
    assert lines == sorted(lines)


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MANY_PROBLEMS)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {len(info.value.problems)} problem(s):")
    for p in info.value.problems:
        assert str(p) in text


# -- the CLI --------------------------------------------------------------------------------------


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.router", "config", "check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_config_check_good_file() -> None:
    result = run_check(EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "5 node(s), 2 route(s)" in result.stdout
    assert result.stderr == ""


def test_cli_config_check_bad_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MANY_PROBLEMS)
    result = run_check(path)
    assert result.returncode == 1
    assert "OK" not in result.stdout
    problems = problems_of(MANY_PROBLEMS)
    assert f"{len(problems)} problem(s)" in result.stderr
    for p in problems:
        assert str(p) in result.stderr


def test_cli_config_check_missing_file(tmp_path: Path) -> None:
    result = run_check(tmp_path / "missing.yaml")
    assert result.returncode == 1
    assert "file not found" in result.stderr


def test_state_locations_survive_a_broken_config(tmp_path: Path) -> None:
    from appliance.router.config import load_state_locations

    cfg_path = tmp_path / "etc" / "router.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text("router:\n  state_dir: ../state\n  port: 99999\nnodes:\n  X: {role: nonsense}\n")
    with pytest.raises(ConfigError):
        load_config(cfg_path)
    cfg = load_state_locations(cfg_path)
    assert cfg.router.state_dir == (tmp_path / "state").resolve()
    assert cfg.router.port == 11112  # the invalid value is dropped, not used
    assert cfg.nodes == {} and cfg.routes == []
