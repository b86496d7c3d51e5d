"""The first config from the console's setup answers: rendered text that `config check` accepts, problems filed
under the answer they came from, and `config apply` of it on a fresh appliance (no router.yaml, no router
running, not even the config directory): version 1, history and audit."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.router.cli import main
from appliance.router.config import load_config
from appliance.router.config_setup import SetupAnswers, problems, render
from appliance.router.history import ChangeRequest, apply_config

ANSWERS = SetupAnswers(
    dest_ae="PACS", dest_host="10.1.2.10", src_name="CT_1", src_ae="CT1", src_host="10.1.2.3",
    net_mode="static", net_address="10.1.2.50/24", net_gateway="10.1.2.1", net_dns="10.1.1.53, 10.1.1.54",
    ntp_servers="ntp1.hospital.example ntp2.hospital.example",
)  # fmt: skip


def base(root: Path) -> dict[str, str]:
    return {"state_dir": str(root / "state"), "log_dir": str(root / "log")}


def test_rendered_setup_passes_config_check(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(render(ANSWERS, "j.smith", base(tmp_path)))
    assert main(["config", "check", str(path)]) == 0
    cfg = load_config(path)
    assert list(cfg.nodes) == ["PACS", "CT_1"] and cfg.nodes["CT_1"].is_source
    assert cfg.routes[0].name == "everything-to-PACS" and cfg.routes[0].to == ["PACS"]
    assert cfg.router.port == 104 and not cfg.router.accept_unknown_callers
    assert cfg.appliance is not None and cfg.appliance.network is not None
    assert cfg.appliance.network.dns == ["10.1.1.53", "10.1.1.54"]
    assert cfg.appliance.firewall.enabled and cfg.appliance.firewall.allow_from == []
    assert path.read_text().startswith("# First-boot setup at the appliance console by j.smith.")


def test_unknown_callers_instead_of_a_named_sender(tmp_path: Path) -> None:
    a = SetupAnswers(dest_ae="PACS", dest_host="pacs.hospital.example", accept_unknown=True, allow_from="10.1.2.0/24")
    assert problems(a, tmp_path / "router.yaml", base(tmp_path)) == {}
    path = tmp_path / "router.yaml"
    path.write_text(render(a, "j.smith", base(tmp_path)))
    cfg = load_config(path)
    assert cfg.router.accept_unknown_callers and list(cfg.nodes) == ["PACS"]
    assert cfg.appliance is not None and cfg.appliance.firewall.allow_from == ["10.1.2.0/24"]


def test_problems_are_filed_under_their_answer(tmp_path: Path) -> None:
    a = SetupAnswers(ae_title="", port="0", dest_name="PACS MAIN", dest_ae="PACS", dest_host="", src_ae="PACS",
                     src_host="ct.example", net_mode="static", net_gateway="10.1.2.1")  # fmt: skip
    found = problems(a, tmp_path / "router.yaml", base(tmp_path))
    assert found["dest_name"].startswith("a name for it on this router")
    assert found["dest_host"].startswith("required")
    assert found["net_address"].startswith("required for a static address")
    assert "not a valid AE title" in found["ae_title"]
    assert found["port"] == "port 0 is impossible: use 1-65535"
    assert set(found) >= {"src_ae", "src_host"}
    assert "form" not in found, found
    nobody = SetupAnswers(dest_ae="PACS", dest_host="10.1.2.10")
    assert problems(nobody, tmp_path / "router.yaml", base(tmp_path)) == {
        "src_ae": "name the device that sends the first study (AE title and address), or accept unknown callers"
    }


def test_config_apply_on_a_fresh_appliance(tmp_path: Path) -> None:
    """No router.yaml, no config directory, no router running, no state yet: the first apply still works."""
    path = tmp_path / "etc" / "dicom-router" / "router.yaml"
    content = render(ANSWERS, "j.smith", base(tmp_path)).encode()
    result = apply_config(path, content, ChangeRequest("j.smith", "first-boot setup at the console", "console"))
    assert (result.outcome, result.version, result.parent_sha256) == ("applied", 1, None)
    assert result.daemon == "not running: takes effect when the router starts"
    assert path.read_bytes() == content
    meta = json.loads((tmp_path / "state" / "history" / "versions" / "000001.json").read_text())
    assert (meta["author"], meta["source"], meta["outcome"], meta["parent_version"]) == (
        "j.smith", "console", "applied", None
    )  # fmt: skip
    entries = [json.loads(ln) for ln in (tmp_path / "log" / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["outcome"], e["operator"]) for e in entries] == [("config.apply", "success", "j.smith")]
    # the same content again: nothing to do, nothing recorded
    again = apply_config(path, content, ChangeRequest("j.smith", "again", "console"))
    assert again.outcome == "unchanged" and len(list((tmp_path / "state" / "history" / "versions").glob("*.json"))) == 1
