"""DICOM TLS against real DCMTK peers (`storescu`/`storescp`/`+tls`), both ways through one router.

storescu +tls → router's TLS port → storescp +tls with mutual authentication (certificates from `dicom-router
tls init/issue`); each way in is refused with one clear log line: another CA's certificate, an expired one,
a plain client on the TLS port, a TLS-only source on the plain port, a certificate without the expected
name. `echo` over TLS; a key readable by others stops TLS from starting (no plain fallback); `tls rotate`
reaches the running router.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from appliance.router import cli, tls_ca
from tests.support import peers
from tests.support.data import make_ct_series
from tests.support.peers import Router, StoreSCP, dest_node, free_port, storescu, wait_until


def _issue(config: Path, *argv: str) -> None:
    assert cli.main(["tls", *argv, "--config", str(config)]) == 0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One router (plain + TLS ports), a storescp +tls PACS, a storescp +tls with an expired certificate."""
    work = tmp_path_factory.mktemp("tls")
    tls_dir = work / "tls"
    router = Router(
        work,
        destinations={},
        routes=[],
        sources={"STORESCU": "STORESCU", "PLAINSCU": "PLAINSCU"},
        router_extra={"tls_dir": str(tls_dir), "tls": {"port": free_port()}},
    )
    router.write_config()
    # The material the way an operator makes it: the CLI (in-process, to keep the test quick).
    _issue(router.config_path, "init", "--dns", "localhost", "--ip", "127.0.0.1")
    _issue(router.config_path, "issue", "STORESCU", "--dns", "storescu.example", "--key-type", "rsa2048")
    _issue(router.config_path, "issue", "PACS", "--dns", "localhost", "--ip", "127.0.0.1", "--key-type", "rsa2048")
    issued = tls_dir / "issued"
    ca = tls_ca.load_ca(tls_dir / "ca.crt", tls_dir / "ca.key")
    other_ca = tls_ca.make_ca("Somebody else's CA", "rsa2048")
    stranger = tls_ca.make_node(other_ca, "stranger", ["storescu.example"], [], "rsa2048")
    expired = tls_ca.make_node(
        ca, "expired", ["localhost"], ["127.0.0.1"], "rsa2048", days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(3)
    )
    for name, pair in (("stranger", stranger), ("expired", expired)):
        tls_ca.write_cert(issued / f"{name}.crt", pair.cert)
        tls_ca.write_key(issued / f"{name}.key", pair.key)

    def tls_args(name: str) -> list[str]:
        return ["+tls", str(issued / f"{name}.key"), str(issued / f"{name}.crt"), "+cf", str(tls_dir / "ca.crt")]

    pacs = StoreSCP(work, "PACS", extra=tls_args("PACS")).start()
    old_pacs = StoreSCP(work, "OLDPACS", extra=tls_args("expired")).start()
    router.config["nodes"].update(
        PACS=dest_node("PACS", pacs.port, tls={"enabled": True}),  # name checked: IP SAN 127.0.0.1
        OLDPACS=dest_node("OLDPACS", old_pacs.port, tls={"enabled": True}),
    )
    router.config["nodes"]["STORESCU"]["tls"] = {"enabled": True, "peer_name": "storescu.example"}
    router.config["routes"] = [{"name": "all", "to": ["PACS"]}]
    router.write_config()
    router.start()
    # Shared by the module's tests: keep them off the per-test cleanup list.
    for peer in (pacs, old_pacs, router):
        peers.RUNNING.remove(peer)
    files = make_ct_series(work / "in", 3, rows=64, cols=64)
    try:
        yield {"router": router, "pacs": pacs, "tls_args": tls_args, "files": files, "tls_dir": tls_dir}
    finally:
        for peer in (router, pacs, old_pacs):
            peer.stop()


def _log(router: Router, level: str | None = None) -> list[str]:
    path = router.workdir / "log" / "router.log"
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e["message"] for e in entries if level is None or e["level"] == level]


def _cli(router: Router, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`dicom-router …` in this process (a subprocess costs seconds of imports on a busy machine)."""
    code = cli.main([*argv, "--config", str(router.config_path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_echo_over_tls(site: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """First in the module: DCMTK storescp serves one association at a time, and the forwarder keeps its
    association open for a few seconds after sending."""
    router = site["router"]
    code, out = _cli(router, capsys, "echo", "PACS")
    assert code == 0 and out.startswith("OK: PACS (PACS@127.0.0.1:") and ", TLS)" in out, out
    code, out = _cli(router, capsys, "echo", "OLDPACS")
    assert code == 1
    assert "TLS handshake failed: certificate verify failed: certificate has expired" in out
    assert "Traceback" not in out


def test_storescu_tls_to_router_to_storescp_tls(site: dict[str, Any]) -> None:
    router, pacs = site["router"], site["pacs"]
    res = storescu(
        router.config["router"]["tls"]["port"], site["files"], "STORESCU", extra=site["tls_args"]("STORESCU")
    )
    assert res.returncode == 0, res.stdout + res.stderr
    wait_until(lambda: len(pacs.files()) >= 3, 60, "3 objects at storescp")
    sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).PixelData for f in site["files"]}
    got = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).PixelData for f in pacs.files()}
    assert got == sent
    assert any(m.startswith("listening for DICOM over TLS") for m in _log(router))


REFUSALS = {
    # case: (calling AE, TLS port?, storescu TLS options (name of an issued pair or None), the log line says)
    "another CA": ("STORESCU", True, "stranger", r"TLS handshake from 127\.0\.0\.1:\d+ on port \d+ failed: "
                   r"certificate verify failed: .*not signed by a CA we trust"),
    "expired": ("STORESCU", True, "expired", r"TLS handshake from .* failed: certificate verify failed: "
                "certificate has expired"),
    "plain on TLS port": ("PLAINSCU", True, None, r"TLS handshake from .* failed: the caller sent plain DICOM"),
    "TLS source on plain port": ("STORESCU", False, None, r"association rejected: source STORESCU must use TLS"),
    "wrong name": ("STORESCU", True, "PACS", r"association rejected: source STORESCU's client certificate names "
                   r"localhost, 127\.0\.0\.1, not 'storescu\.example'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_with_one_clear_log_line(site: dict[str, Any], case: str) -> None:
    router = site["router"]
    calling, on_tls, pair, pattern = REFUSALS[case]
    port = router.config["router"]["tls"]["port"] if on_tls else router.port
    before = len(_log(router, "warning"))
    received = sum(e["event"] == "receive" for e in router.audit())
    extra = site["tls_args"](pair) if pair else []
    res = storescu(port, site["files"][:1], calling, extra=extra, timeout=60)
    assert res.returncode != 0, res.stdout
    new = wait_until(lambda: _log(router, "warning")[before:], 10, f"a warning about the {case} attempt")
    assert len(new) == 1 and re.search(pattern, new[0]), new
    assert sum(e["event"] == "receive" for e in router.audit()) == received
    rejected = [e for e in router.audit() if e["event"] == "association_rejected"]
    assert (
        rejected
        and rejected[-1]["outcome"] == "failure"
        and rejected[-1]["reason"].removeprefix("TLS handshake: ") in new[0]
    )


def test_key_readable_by_others_stops_tls_without_plain_fallback(site: dict[str, Any], tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    shutil.copytree(site["tls_dir"], tls_dir)
    (tls_dir / "router.key").chmod(0o644)
    router = Router(tmp_path, {}, routes=[], router_extra={"tls_dir": str(tls_dir), "tls": {"port": free_port()}})
    # The receiver alone (the supervisor stops the whole router on its exit 3, as for a port in use).
    receiver = subprocess.run(
        [sys.executable, "-m", "appliance.router", "_run", "receiver", "--config", str(router.config_path)],
        cwd=peers.REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert receiver.returncode == 3
    messages = _log(router)
    critical = _log(router, "critical")
    assert len(critical) == 1 and re.fullmatch(
        r"TLS listener on port \d+ not started: the router's private key \(router.tls.key\) "
        rf"{re.escape(str(tls_dir / 'router.key'))} has mode 0644: group or others may read it — `chmod 600 .*",
        critical[0],
    ), critical
    assert not any(m.startswith("listening for DICOM") for m in messages)


def test_rotate_reaches_the_running_router(site: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    router, pacs = site["router"], site["pacs"]
    code, out = _cli(router, capsys, "tls", "rotate", "--reason", "yearly renewal")
    assert code == 0 and "now presents the new certificate" in out, out
    # The rotated certificate is from the same CA: the TLS modality keeps working without a change.
    res = storescu(router.config["router"]["tls"]["port"], site["files"][:1], "STORESCU",
                   extra=site["tls_args"]("STORESCU"))  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "TLS material reloaded" in _log(router)
    assert [e for e in router.audit() if e["event"] == "tls_rotate"][-1]["reloaded"] is True
    assert pacs.proc is not None and pacs.proc.poll() is None
