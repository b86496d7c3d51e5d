"""`dicom-router system apply` without root: the three files rendered from `appliance:`, atomic writes, an
unchanged file neither rewritten nor reloaded, a failing step put back and the others still done, the audit
trail, and the command line."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.router.cli import main
from appliance.router.config import load_config
from appliance.router.system_apply import CommandResult, SystemApply, Targets

BASE = """\
router:
  ae_title: DICOM_ROUTER
  port: 104
  state_dir: {root}/state
  log_dir: {root}/log
nodes:
  CT1: {{ae_title: CT1, host: 10.1.2.3, port: 104, role: source}}
  MR1: {{ae_title: MR1, host: "fd00::7", port: 104, role: source}}
  PACS: {{ae_title: PACS, host: 10.1.2.10, port: 104, role: destination}}
routes:
  - name: all
    to: [PACS]
"""
APPLIANCE = """\
appliance:
  network: {network}
  ntp_servers: {ntp}
  firewall: {firewall}
"""
STATIC = "{mode: static, address: 10.1.2.50/24, gateway: 10.1.2.1, dns: [10.1.1.53, 10.1.1.54]}"


class FakeRunner:
    """Records every command; the ones named in `fail` exit 1 with a message."""

    def __init__(self, fail: Sequence[str] = (), links: str = "1 lo loopback\n2 ens18 ether\n3 wlan0 wlan\n"):
        self.calls: list[list[str]] = []
        self.fail = list(fail)
        self.links = links

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        line = " ".join(argv)
        if argv[:2] == ["networkctl", "list"]:
            return CommandResult(0, self.links)
        if any(line.startswith(f) for f in self.fail):
            return CommandResult(1, f"{argv[0]}: something broke\nJob failed: see the journal")
        return CommandResult(0, "")

    def ran(self, prefix: str) -> bool:
        return any(" ".join(c).startswith(prefix) for c in self.calls)


def write_config(root: Path, network: str | None = STATIC, ntp: str = "[ntp1.hospital.example, 10.1.1.1]",
                 firewall: str = "{allow_from: [10.9.0.0/16]}", extra: str = "") -> Path:  # fmt: skip
    text = BASE.format(root=root) + extra
    if network is not None or ntp or firewall:
        text += APPLIANCE.format(network=network or "null", ntp=ntp, firewall=firewall)
    path = root / "router.yaml"
    path.write_text(text)
    return path


def targets(root: Path) -> Targets:
    etc = root / "etc"
    return Targets(etc / "10-appliance.network", etc / "sources.d" / "appliance.sources", etc / "dicom-router.nft")


def apply(root: Path, runner: FakeRunner) -> dict[str, tuple[str, str]]:
    path = root / "router.yaml"
    results = SystemApply(load_config(path), path, targets(root), runner).apply()
    return {r.step: (r.outcome, r.message) for r in results}


def audit(root: Path) -> list[dict[str, object]]:
    path = root / "log" / "audit.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "system.apply"]


def test_static_network_ntp_and_firewall_rendered_and_activated(tmp_path: Path) -> None:
    write_config(tmp_path)
    runner = FakeRunner()
    result = apply(tmp_path, runner)
    assert {k: v[0] for k, v in result.items()} == {"network": "changed", "ntp": "changed", "firewall": "changed"}
    t = targets(tmp_path)
    network = t.network.read_text()
    assert "[Match]\nName=en* eth*\n" in network
    assert "Address=10.1.2.50/24\nGateway=10.1.2.1\nDNS=10.1.1.53\nDNS=10.1.1.54\n" in network
    assert "DHCP" not in network
    assert t.ntp.read_text().endswith("server ntp1.hospital.example iburst\nserver 10.1.1.1 iburst\n")
    nft = t.firewall.read_text()
    assert "chain dicom_router_sources {" in nft
    assert 'ip saddr 10.1.2.3 tcp dport { 104 } accept comment "DICOM from CT1"' in nft
    assert 'ip6 saddr fd00::7 tcp dport { 104 } accept comment "DICOM from MR1"' in nft
    assert 'ip saddr 10.9.0.0/16 tcp dport { 104 } accept comment "DICOM from allow_from"' in nft
    assert "10.1.2.10" not in nft  # a destination does not call in
    for path in (t.network, t.ntp, t.firewall):
        assert path.stat().st_mode & 0o777 == 0o644
        assert path.read_text().startswith("# Written by `dicom-router system apply`")
    # the firewall file is checked before it replaces anything; only the matching link is reconfigured
    assert runner.calls[0] == ["networkctl", "reload"]
    assert ["networkctl", "reconfigure", "ens18"] in runner.calls
    assert ["chronyc", "reload", "sources"] in runner.calls
    check = next(c for c in runner.calls if c[0] == "nft")
    assert check[:3] == ["nft", "-c", "-f"] and check[3] != str(t.firewall)
    assert runner.calls[-1] == ["systemctl", "reload", "nftables"]
    assert not list(t.firewall.parent.glob(".*"))  # no temporary files left behind
    entries = audit(tmp_path)
    assert [(e["step"], e["change"], e["outcome"]) for e in entries] == [
        ("network", "changed", "success"), ("ntp", "changed", "success"), ("firewall", "changed", "success")
    ]  # fmt: skip
    assert "static 10.1.2.50/24 via 10.1.2.1" in str(entries[0]["detail"])


def test_unchanged_files_are_not_rewritten_nor_reloaded(tmp_path: Path) -> None:
    write_config(tmp_path)
    apply(tmp_path, FakeRunner())
    t = targets(tmp_path)
    before = {p: p.stat().st_ino for p in (t.network, t.ntp, t.firewall)}
    runner = FakeRunner()
    result = apply(tmp_path, runner)
    assert {v[0] for v in result.values()} == {"unchanged"}
    assert runner.calls == []
    assert {p: p.stat().st_ino for p in before} == before  # the same files, not replaced by equal ones
    assert len(audit(tmp_path)) == 3  # nothing new to audit


def test_one_failing_step_is_put_back_and_the_others_still_run(tmp_path: Path) -> None:
    write_config(tmp_path)
    t = targets(tmp_path)
    t.ntp.parent.mkdir(parents=True)
    t.ntp.write_text("server old.example iburst\n")
    runner = FakeRunner(fail=["chronyc"])
    result = apply(tmp_path, runner)
    assert result["ntp"][0] == "failed"
    assert "chronyd did not reload its sources" in result["ntp"][1]
    assert "exited 1: Job failed: see the journal" in result["ntp"][1]
    assert "the previous appliance.sources was put back" in result["ntp"][1]
    assert t.ntp.read_text() == "server old.example iburst\n"  # the next run tries again
    assert result["network"][0] == "changed" and result["firewall"][0] == "changed"
    assert runner.ran("systemctl reload nftables")
    failed = [e for e in audit(tmp_path) if e["outcome"] == "failure"]
    assert [e["step"] for e in failed] == ["ntp"]
    # chrony is back: the step is done on the next run, the others are left alone
    runner = FakeRunner()
    result = apply(tmp_path, runner)
    assert result["ntp"][0] == "changed" and result["network"][0] == "unchanged"
    assert runner.calls == [["chronyc", "reload", "sources"]]


def test_rules_refused_by_nft_replace_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    runner = FakeRunner(fail=["nft -c"])
    result = apply(tmp_path, runner)
    assert result["firewall"][0] == "failed"
    assert "did not pass `nft -c`" in result["firewall"][1]
    assert not targets(tmp_path).firewall.exists()
    assert not runner.ran("systemctl reload nftables")


def test_dhcp_no_ntp_servers_and_firewall_off(tmp_path: Path) -> None:
    write_config(tmp_path, STATIC)
    apply(tmp_path, FakeRunner())
    write_config(tmp_path, "{mode: dhcp, dns: [10.1.1.53]}", ntp="[]", firewall="{enabled: false}")
    runner = FakeRunner()
    result = apply(tmp_path, runner)
    t = targets(tmp_path)
    assert "DHCP=yes\nDNS=10.1.1.53\n" in t.network.read_text()
    assert result["ntp"][0] == "removed" and not t.ntp.exists()  # back to the image's sources only
    assert "the image's time sources only" in result["ntp"][1]
    nft = t.firewall.read_text()
    assert "chain dicom_router_sources {" in nft and "accept" not in nft  # the ruleset still finds its chain
    assert result["firewall"][0] == "changed"


def test_tls_ports_and_commitment_destinations_are_opened(tmp_path: Path) -> None:
    extra = "  ARCHIVE: {ae_title: ARCH, host: 10.1.2.11, port: 104, role: destination, commitment: {enabled: true}}\n"
    path = write_config(tmp_path, firewall="{}")
    body = path.read_text().replace("routes:", extra + "routes:", 1)
    body = body.replace("  port: 104\n  state_dir", "  port: 104\n  tls: {port: 2762, plain: false}\n  state_dir", 1)
    path.write_text(body)
    apply(tmp_path, FakeRunner())
    nft = targets(tmp_path).firewall.read_text()
    assert 'ip saddr 10.1.2.3 tcp dport { 2762 } accept comment "DICOM from CT1"' in nft  # TLS only: no 104
    assert 'ip saddr 10.1.2.11 tcp dport { 2762 } accept comment "DICOM from ARCHIVE"' in nft


def test_without_an_appliance_section_nothing_is_touched(tmp_path: Path) -> None:
    (tmp_path / "router.yaml").write_text(BASE.format(root=tmp_path))
    t = targets(tmp_path)
    t.network.parent.mkdir(parents=True)
    t.network.write_text("managed by Ansible\n")
    runner = FakeRunner()
    assert apply(tmp_path, runner) == {}
    assert runner.calls == [] and t.network.read_text() == "managed by Ansible\n" and audit(tmp_path) == []


def test_no_network_section_removes_ours(tmp_path: Path) -> None:
    write_config(tmp_path)
    apply(tmp_path, FakeRunner())
    write_config(tmp_path, network=None)
    runner = FakeRunner()
    result = apply(tmp_path, runner)
    assert result["network"][0] == "removed" and not targets(tmp_path).network.exists()
    assert runner.calls[0] == ["networkctl", "reload"]


@pytest.mark.parametrize(
    ("appliance", "where", "words"),
    [
        ("network: {mode: static}", "appliance.network", "a static network needs address"),
        ("network: {mode: static, address: 10.1.2.50}", "appliance.network.address", "has no prefix length"),
        ("network: {mode: static, address: 10.1.2.0/24}", "appliance.network.address", "network address of"),
        ("network: {mode: static, address: 10.1.2.50/24, gateway: 10.1.3.1}", "appliance.network",
         "not in the appliance's network 10.1.2.0/24"),
        ("network: {mode: dhcp, dns: [dns.example]}", "appliance.network.dns", "is not an IP address"),
        ("network: {mode: dhcp, address: 10.1.2.50/24}", "appliance.network", "with dhcp the network assigns"),
        ("ntp_servers: ['ntp one']", "appliance.ntp_servers", "is not a host name or IP address"),
        ("firewall: {allow_from: [10.9.0.0/33]}", "appliance.firewall.allow_from", "not an IP address or network"),
        ("wifi: true", "appliance.wifi", "this key is not known here"),
    ],
)  # fmt: skip
def test_config_check_explains_bad_appliance_settings(tmp_path: Path, appliance: str, where: str, words: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    path = tmp_path / "router.yaml"
    path.write_text(BASE.format(root=tmp_path) + "appliance:\n" + textwrap.indent(appliance, "  ") + "\n")
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert where in err and words in err, err


def test_config_check_refuses_what_the_firewall_cannot_admit(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    path = tmp_path / "router.yaml"
    text = BASE.format(root=tmp_path).replace("host: 10.1.2.3", "host: ct1.hospital.example")
    text = text.replace("  port: 104\n  state_dir", "  port: 104\n  accept_unknown_callers: true\n  state_dir", 1)
    path.write_text(text + "appliance: {}\n")
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "nodes.CT1.host: 'ct1.hospital.example' is a name" in err
    assert "router.accept_unknown_callers: unknown callers are accepted" in err
    path.write_text(text + "appliance: {firewall: {enabled: false}}\n")
    assert main(["config", "check", str(path)]) == 0


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Never the real commands: run as root, they would reload this machine's network and firewall.
    monkeypatch.setattr("appliance.router.system_apply.run_command", FakeRunner(fail=["networkctl", "chronyc", "nft"]))
    path = write_config(tmp_path)
    t = targets(tmp_path)
    argv = ["system", "apply", "--config", str(path), "--network-file", str(t.network), "--ntp-file", str(t.ntp),
            "--firewall-file", str(t.firewall), "--json"]  # fmt: skip
    # Every command fails: each step fails on its own and says which command did.
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["managed"] is True and [s["step"] for s in out["steps"]] == ["network", "ntp", "firewall"]
    assert all(s["outcome"] == "failed" and "`" in s["message"] for s in out["steps"])
    (tmp_path / "router.yaml").write_text(BASE.format(root=tmp_path))
    assert main(argv[:-1]) == 0
    assert "no appliance: section" in capsys.readouterr().out
    (tmp_path / "router.yaml").write_text("router: {port: 0}\n")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_the_firewall_step_never_opens_another_system_port(tmp_path: Path) -> None:
    """router.yaml is the router user's to write: it must not open SSH (22) to someone through the firewall."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("  port: 104\n  state_dir", "  port: 22\n  state_dir", 1))
    runner = FakeRunner()
    result = apply(tmp_path, runner)
    assert (
        result["firewall"][0] == "failed" and "port 22 is a system port other than DICOM's 104" in result["firewall"][1]
    )
    assert not targets(tmp_path).firewall.exists() and not runner.ran("nft") and not runner.ran("systemctl")
    assert result["network"][0] == "changed"  # the other steps still run
