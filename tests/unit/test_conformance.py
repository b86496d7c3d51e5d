"""The DICOM Conformance Statement is generated from the code: the committed copy must be what the code
generates now, and what it says must come from the receiver's AE, the forwarder's proposals and the TLS
profile rather than from hand-kept lists."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
from pynetdicom import AllStoragePresentationContexts

from appliance.router import conformance, tls
from appliance.router.cli import build_parser
from appliance.router.config import RouterConfig

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / conformance.DEFAULT_OUTPUT


@pytest.fixture(scope="module")
def generated() -> str:
    return conformance.statement()


def test_the_committed_statement_is_what_the_code_generates(generated: str) -> None:
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    if committed != generated:
        diff = "\n".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(), generated.splitlines(), "committed", "code", n=0, lineterm=""
                )
            )[:30]
        )
        pytest.fail(
            f"{conformance.DEFAULT_OUTPUT} is stale (the code now supports something else): run "
            f"`{conformance.REGENERATE}` in the checkout and commit the result.\nFirst differences:\n{diff}"
        )


def test_the_output_is_deterministic(generated: str) -> None:
    assert conformance.statement() == generated
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", generated)  # no generation date


def test_it_lists_what_the_receiver_accepts_and_the_forwarder_proposes(generated: str) -> None:
    facts = conformance.gather(RouterConfig())
    # Every storage SOP class the receiver's AE supports, in PS3.2's SOP class table.
    for cx in AllStoragePresentationContexts:
        assert f"`{cx.abstract_syntax}` | Yes | Yes |" in generated, cx.abstract_syntax
    assert len(facts.storage) == len(AllStoragePresentationContexts)
    assert f"`{facts.implementation_class_uid}`" in generated and facts.implementation_version_name in generated
    # The forwarder also proposes Explicit, then Implicit VR Little Endian for a JPEG 2000 object; nothing
    # for a syntax it cannot decode (MPEG-2).
    fallbacks = dict(facts.fallbacks)
    assert fallbacks["1.2.840.10008.1.2.4.90"] == ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert fallbacks["1.2.840.10008.1.2.4.100"] == ()
    # The TLS profile is tls.py's.
    for suite in tls.CIPHERS_TLS12.split(":"):
        assert f"`{suite}`" in generated
    assert "Storage Commitment Push Model SOP Class" in generated


def test_a_site_statement_names_its_ae_title_ports_and_nodes(tmp_path: Path) -> None:
    cfg = tmp_path / "router.yaml"
    cfg.write_text(
        "router: {ae_title: RA1_ROUTER, port: 11112, tls: {port: 2762}, state_dir: state, log_dir: log}\n"
        "nodes:\n"
        "  PACS_MAIN: {ae_title: PACS, host: 10.1.2.10, port: 104, role: destination,\n"
        "              tls: {enabled: true}, commitment: {enabled: true}}\n"
    )
    text = conformance.statement(cfg)
    assert "AE title `RA1_ROUTER`" in text and "here 2762" in text
    assert "| PACS_MAIN | PACS | 10.1.2.10:104 | destination | yes | yes |" in text


def run_cli(*argv: str) -> int:
    """`dicom-router conformance …` as registered in cli.py (without main(), which sets the process umask)."""
    args = build_parser().parse_args(["conformance", *argv])
    return int(args.func(args))


def test_check_names_the_command_when_the_file_is_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "conformance-statement.md"
    stale.write_text("# an old statement\n")
    assert run_cli("--check", str(stale)) == 1
    assert conformance.REGENERATE in capsys.readouterr().err
    assert run_cli("--output", str(stale)) == 0
    assert run_cli("--check", str(stale)) == 0
