"""First-boot setup, driven in a pilot: a console started without router.yaml opens the setup screen (the
other screens' keys do nothing), every field is checked with `config check`'s rules and the problem shows at
the field, the C-ECHO test reaches a real DCMTK storescp (and says in words why a closed port failed), and
Save writes version 1 through `config apply` under the operator's name, then the dashboard follows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Label, Select, Static

from appliance.router.config import load_config
from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend, BackendError
from appliance.tui.screens.setup import SetupScreen
from appliance.tui.widgets import ConfirmScreen, MessageScreen
from tests.support.peers import StoreSCP, free_port
from tests.tui.fixtures_config import OPERATOR, run_async, settle, wait_for

GOOD = {
    "dest_ae": "PACS",
    "dest_host": "10.1.2.10",
    "src_name": "CT_SCANNER_1",
    "src_ae": "CT1",
    "src_host": "10.1.2.3",
}


def backend(root: Path) -> Backend:
    base = {"state_dir": str(root / "state"), "log_dir": str(root / "log")}
    return Backend(root / "etc" / "router.yaml", OPERATOR, setup_base=base)


def app(root: Path) -> ConsoleApp:
    return ConsoleApp(backend(root), refresh_seconds=3600, theme="textual-dark")


def setup_screen(pilot: Pilot[Any]) -> SetupScreen:
    s = pilot.app.screen
    assert isinstance(s, SetupScreen), f"expected the setup screen, got {s!r}"
    return s


def problem(pilot: Pilot[Any], field: str) -> str:
    label = setup_screen(pilot).query_one(f"#problem-{field}", Label)
    return "" if label.has_class("-empty") else str(label.visual)


async def fill(pilot: Pilot[Any], **values: str) -> None:
    s = setup_screen(pilot)
    for key, value in values.items():
        s.query_one(f"#{key}", Input).value = value
    await settle(pilot)


async def choose(pilot: Pilot[Any], select: str, value: Any) -> None:
    setup_screen(pilot).query_one(f"#{select}", Select).value = value
    await settle(pilot)


def test_the_backend_knows_when_setup_is_needed(tmp_path: Path) -> None:
    b = backend(tmp_path)
    assert b.needs_setup()
    assert b.setup_problems({**GOOD}) == {}
    b.config_path.parent.mkdir(parents=True)
    b.config_path.write_text("router: {}\n")
    assert not b.needs_setup()
    with pytest.raises(BackendError, match="appeared while you typed"):
        b.setup_save({**GOOD})  # another writer got there first: never overwritten


@run_async
async def test_setup_opens_instead_of_the_dashboard_and_other_screens_wait(tmp_path: Path) -> None:
    async with app(tmp_path).run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        s = setup_screen(pilot)
        assert str(tmp_path / "etc" / "router.yaml") in str(s.query_one("#setup-intro", Static).visual)
        assert s.query_one("#port", Input).value == "104" and s.query_one("#ae_title", Input).value == "DICOM_ROUTER"
        assert s.query_one("#net_mode", Select).value == "dhcp"
        assert s.query_one("#net_address", Input).disabled  # static only
        s.query_one("#echo", Button).focus()
        await pilot.press("e", "d", "u")  # screen keys: not while there is no config
        await settle(pilot)
        setup_screen(pilot)
        assert pilot.app.screen.query_one("#save", Button).disabled  # the destination is still missing
        assert problem(pilot, "dest_ae").startswith("required: the AE title the PACS answers to")
        assert "name the device that sends the first study" in problem(pilot, "src_ae")


@run_async
async def test_every_field_is_checked_with_config_checks_rules(tmp_path: Path) -> None:
    async with app(tmp_path).run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await fill(pilot, **GOOD)
        assert setup_screen(pilot).problems == {}
        assert not pilot.app.screen.query_one("#save", Button).disabled
        await fill(pilot, ae_title="THIS AE TITLE IS FAR TOO LONG", port="1o4", dest_port="70000")
        assert "is not a valid AE title: use 1-16 printable characters" in problem(pilot, "ae_title")
        assert problem(pilot, "port") == "a port number 1-65535 (DICOM is usually 104)"
        assert problem(pilot, "dest_port") == "port 70000 is impossible: use 1-65535"
        assert pilot.app.screen.query_one("#save", Button).disabled
        await fill(pilot, ae_title="DICOM_ROUTER", port="104", dest_port="104", src_ae="PACS")
        assert "AE title 'PACS' is already used by node PACS" in problem(pilot, "src_ae")
        await fill(pilot, src_ae="CT1", src_host="ct1.radiology.example")
        assert "is a name, but the appliance firewall admits senders by IP address" in problem(pilot, "src_host")
        await fill(pilot, src_host="10.1.2.3")
        await choose(pilot, "net_mode", "static")
        assert not setup_screen(pilot).query_one("#net_address", Input).disabled
        assert problem(pilot, "net_address").startswith("required for a static address")
        await fill(pilot, net_address="10.1.2.50", net_gateway="10.1.3.1", net_dns="dns1.example")
        assert "has no prefix length: write it as address/prefix, e.g. 10.1.2.50/24" in problem(pilot, "net_address")
        assert "is not an IP address (a DNS server" in problem(pilot, "net_dns")
        await fill(pilot, net_address="10.1.2.50/24", net_dns="10.1.1.53")
        assert (
            problem(pilot, "net_gateway")
            == "the gateway 10.1.3.1 is not in the appliance's network 10.1.2.0/24: check both"
        )
        await fill(pilot, net_gateway="10.1.2.1", ntp_servers="ntp one!")
        assert "is not a host name or IP address" in problem(pilot, "ntp_servers")
        await fill(pilot, ntp_servers="ntp1.hospital.example")
        assert setup_screen(pilot).problems == {}


@run_async
async def test_unknown_callers_need_the_senders_network(tmp_path: Path) -> None:
    async with app(tmp_path).run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await fill(pilot, dest_ae="PACS", dest_host="10.1.2.10")
        await choose(pilot, "accept_unknown", True)
        assert problem(pilot, "allow_from").startswith("required with unknown callers: the network they send from")
        assert problem(pilot, "src_ae") == ""  # no named sender is fine now
        await fill(pilot, allow_from="10.1.2.0/33")
        assert "is not an IP address or network" in problem(pilot, "allow_from")
        await fill(pilot, allow_from="10.1.2.0/24")
        assert setup_screen(pilot).problems == {}


@run_async
async def test_echo_test_reaches_a_real_pacs_and_explains_a_failure(tmp_path: Path) -> None:
    scp = StoreSCP(tmp_path, ae_title="PACS").start()
    try:
        async with app(tmp_path).run_test(size=(100, 40)) as pilot:
            await settle(pilot)
            await fill(pilot, **{**GOOD, "dest_host": "127.0.0.1", "dest_port": str(scp.port)})
            await pilot.press("ctrl+t")
            result = setup_screen(pilot).query_one("#echo-result", Static)
            await wait_for(pilot, lambda: str(result.visual).startswith(("OK", "FAILED")), "the echo")
            assert str(result.visual).startswith(f"OK — PACS (PACS@127.0.0.1:{scp.port}) answered C-ECHO in")
            assert result.has_class("ok")
            closed = free_port()
            await fill(pilot, dest_port=str(closed))
            assert str(result.visual) == "not tested with these values yet"
            await pilot.click("#echo")
            await wait_for(pilot, lambda: str(result.visual).startswith(("OK", "FAILED")), "the echo")
            text = str(result.visual)
            assert text.startswith("FAILED — ") and f"127.0.0.1:{closed}" in text and result.has_class("error")
            assert "Check the PACS's AE title, address and port with its team" in text
            await fill(pilot, dest_port="abc")
            await pilot.press("ctrl+t")
            await settle(pilot)
            assert str(result.visual).startswith("not tested: destination port: a port number")
    finally:
        scp.stop()


@run_async
async def test_save_applies_version_one_and_the_dashboard_follows(tmp_path: Path) -> None:
    async with app(tmp_path).run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+s")  # nothing typed yet: refused, the first wrong field gets the focus
        await settle(pilot)
        setup_screen(pilot)
        assert pilot.app.focused is not None and pilot.app.focused.id == "dest_ae"
        await fill(pilot, **GOOD, ntp_servers="ntp1.hospital.example ntp2.hospital.example")
        await choose(pilot, "net_mode", "static")
        await fill(pilot, net_address="10.1.2.50/24", net_gateway="10.1.2.1", net_dns="10.1.1.53")
        await pilot.press("ctrl+s")
        await settle(pilot)
        confirm = pilot.app.screen
        assert isinstance(confirm, ConfirmScreen)
        assert "network static 10.1.2.50/24 via 10.1.2.1" in confirm.body and "version 1" in confirm.body
        await pilot.press("n")  # not yet: nothing written
        await settle(pilot)
        assert not (tmp_path / "etc" / "router.yaml").exists()
        await pilot.press("ctrl+s")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert pilot.app.current_mode == "dashboard"
        assert not isinstance(pilot.app.screen, MessageScreen)
        await pilot.press("e")  # the screen keys work again
        await settle(pilot)
        assert pilot.app.current_mode == "endpoints"
    cfg = load_config(tmp_path / "etc" / "router.yaml")
    assert cfg.router.ae_title == "DICOM_ROUTER" and cfg.router.port == 104
    assert cfg.nodes["PACS"].address == "PACS@10.1.2.10:104" and cfg.nodes["CT_SCANNER_1"].is_source
    assert [r.to for r in cfg.routes] == [["PACS"]]
    assert cfg.appliance is not None and cfg.appliance.network is not None
    assert cfg.appliance.network.address == "10.1.2.50/24" and cfg.appliance.network.dns == ["10.1.1.53"]
    assert cfg.appliance.ntp_servers == ["ntp1.hospital.example", "ntp2.hospital.example"]
    meta = json.loads((tmp_path / "state" / "history" / "versions" / "000001.json").read_text())
    assert (meta["version"], meta["author"], meta["source"], meta["outcome"]) == (1, OPERATOR, "console", "applied")
    assert meta["reason"] == "first-boot setup at the console"
    audit = [json.loads(ln) for ln in (tmp_path / "log" / "audit.jsonl").read_text().splitlines()]
    applied = [e for e in audit if e["event"] == "config.apply"]
    assert applied[-1]["operator"] == OPERATOR and applied[-1]["outcome"] == "success"
    text = (tmp_path / "etc" / "router.yaml").read_text()
    assert text.startswith(f"# First-boot setup at the appliance console by {OPERATOR}.")


@run_async
async def test_a_console_with_a_config_never_shows_setup(tmp_path: Path) -> None:
    b = backend(tmp_path)
    b.setup_save({**GOOD})
    async with ConsoleApp(b, refresh_seconds=3600, theme="textual-dark").run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        assert pilot.app.current_mode == "dashboard"


@run_async
async def test_help_is_f1_and_names_only_what_works_during_setup(tmp_path: Path) -> None:
    async with app(tmp_path).run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        await settle(pilot)
        help_screen = pilot.app.screen
        assert isinstance(help_screen, MessageScreen)
        text = str(help_screen.query_one("#dialog-body", Static).visual)
        assert "ctrl+t C-ECHO test" in text and "SCREENS (any screen)" not in text
        await pilot.press("escape")
        await settle(pilot)
        setup_screen(pilot)


def test_later_senders_need_an_address_while_the_appliance_firewall_is_on(tmp_path: Path) -> None:
    b = backend(tmp_path)
    b.setup_save({**GOOD})
    node = {"ae_title": "MR1", "host": "mr1.hospital.example", "port": "104", "role": "source"}
    assert b.validate_node("MR_1", node)["host"].startswith("the appliance firewall admits senders by IP address")
    assert "host" not in b.validate_node("MR_1", {**node, "host": "10.1.2.4"})
    assert "host" not in b.validate_node("ARCHIVE", {**node, "ae_title": "ARCH", "role": "destination"})
