"""A site whose config went through change control, for the endpoints, config history and backups tests.

The history is real (`apply_config`, the router's one apply path) with fixed times, so snapshots do not move:
  1  2026-11-20 09:00  ansible  initial site config
  2  2026-11-25 14:10  ansible  add ARCHIVE destination
  3  2026-11-27 01:40  console  the bad change of the night: PACS_MAIN's AE title typed as PACS_OLD
  4  2026-11-27 01:52  cli      FAILED: a hand-made file with a port out of range (never live)
The live config keeps Ansible's comments, so tests can show a console change preserves them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import shutil
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

import appliance.router.history as history_mod
from appliance.router.bundle_crypto import write_key_file
from appliance.router.history import ApplyError, ChangeRequest, apply_config
from appliance.router.store import Store
from appliance.tui.app import ConsoleApp
from appliance.tui.backend import Backend

NOW = 1_795_748_400.0  # 2026-11-27 03:00:00 UTC: the night of the outage
OPERATOR = "nightops"

CONFIG = """\
# Site config for ra1 (managed by Ansible: roles/dicom_router, CHG0042)
router:
  ae_title: DICOM_ROUTER
  port: 11112
  state_dir: {state}
  log_dir: {log}
  drain_seconds: 0
nodes:
  # modalities that send to the router
  CT_SCANNER_1: {{ae_title: CT1, host: 10.1.2.3, port: 104, role: source}}
  MR_1: {{ae_title: MR1, host: 10.1.2.4, port: 104, role: source}}
  # where images go
  PACS_MAIN: {{ae_title: {pacs_ae}, host: {pacs_host}, port: {pacs_port}, role: destination, max_associations: 4}}
{extra_nodes}routes:
  - name: everything-to-pacs   # every study to the PACS
    to: [PACS_MAIN]
{extra_routes}backup:
  key_file: {key}
"""
ARCHIVE_NODE = "  ARCHIVE: {{ae_title: ARCHIVE, host: {host}, port: {port}, role: destination}}\n"
ARCHIVE_ROUTE = "  - name: ct-to-archive\n    match: {Modality: CT}\n    to: [ARCHIVE]\n"


@dataclass
class Site:
    root: Path
    config_path: Path
    state: Path
    log: Path
    key_file: Path

    def text(self, pacs_ae: str = "PACS", pacs_host: str = "10.1.2.10", pacs_port: int = 104,
             archive: tuple[str, int] | None = ("10.1.2.20", 104)) -> str:  # fmt: skip
        return CONFIG.format(
            state=self.state, log=self.log, key=self.key_file, pacs_ae=pacs_ae, pacs_host=pacs_host,
            pacs_port=pacs_port,
            extra_nodes=ARCHIVE_NODE.format(host=archive[0], port=archive[1]) if archive else "",
            extra_routes=ARCHIVE_ROUTE if archive else "",
        )  # fmt: skip

    def backend(self, operator: str = OPERATOR) -> Backend:
        return Backend(self.config_path, operator, clock=lambda: NOW)

    def app(self, operator: str = OPERATOR) -> ConsoleApp:
        # The tick never fires during a test: tests refresh by switching screens or pressing f5.
        return ConsoleApp(self.backend(operator), refresh_seconds=3600, theme="textual-dark")

    def metas(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.state / "history" / "versions").glob("*.json"))]

    def audit(self, prefix: str = "") -> list[dict[str, Any]]:
        path = self.log / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [e for e in map(json.loads, lines) if e["event"].startswith(prefix)]

    def apply(self, text: str, reason: str, *, author: str, source: str, ticket: str | None = None,
              at: str) -> None:  # fmt: skip
        with fixed_time(at):
            apply_config(self.config_path, text.encode(), ChangeRequest(author, reason, source, ticket))


@contextmanager
def fixed_time(iso: str) -> Iterator[None]:
    """History entries made inside get this time (the history module stamps versions with `_now_iso`)."""
    saved = history_mod._now_iso
    history_mod._now_iso = lambda: iso
    try:
        yield
    finally:
        history_mod._now_iso = saved


def make_site(root: Path, *, story: bool = True, pacs_host: str = "10.1.2.10", pacs_port: int = 104,
              archive: tuple[str, int] | None = ("10.1.2.20", 104)) -> Site:  # fmt: skip
    """A config applied through change control (with the night's history when `story`), a queue database
    and a backup key file."""
    root.mkdir(parents=True, exist_ok=True)
    site = Site(root, root / "router.yaml", root / "state", root / "log", root / "backup.key")
    write_key_file(site.key_file)
    first = site.text(pacs_host=pacs_host, pacs_port=pacs_port, archive=None if story else archive)
    site.apply(first, "initial site config", author="ansible", source="ansible", ticket="CHG0042",
               at="2026-11-20T09:00:00Z")  # fmt: skip
    if story:
        site.apply(site.text(pacs_host=pacs_host, pacs_port=pacs_port, archive=archive), "add ARCHIVE destination",
                   author="jdoe", source="ansible", ticket="CHG0057", at="2026-11-25T14:10:00Z")  # fmt: skip
        site.apply(site.text("PACS_OLD", pacs_host, pacs_port, archive), "PACS_MAIN AE title per vendor e-mail",
                   author=OPERATOR, source="console", ticket="INC0042", at="2026-11-27T01:40:00Z")  # fmt: skip
        bad = site.text("PACS_OLD", pacs_host, 104000, archive)
        try:
            site.apply(bad, "try the vendor's other port", author=OPERATOR, source="cli", at="2026-11-27T01:52:00Z")
        except ApplyError:
            pass  # recorded as failed: that is the point
    store = Store(site.state / "queue.sqlite3")
    store.init()
    store.close()
    return site


def snap_site(name: str, **kwargs: Any) -> Site:
    """A site at a fixed path (it shows in the header and in the screens), recreated for every snapshot."""
    root = Path(f"/tmp/dicom-router-snap-{name}")
    shutil.rmtree(root, ignore_errors=True)
    return make_site(root, **kwargs)


def fake_bundles(site: Site, host: str = "ra1") -> list[str]:
    """Bundle files with fixed names and sizes, for listing snapshots (they are not real bundles)."""
    out = site.state / "backups"
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for stamp, size in [("20261124T023000Z", 40_120_311), ("20261125T023000Z", 40_988_102),
                        ("20261126T023000Z", 41_203_554)]:  # fmt: skip
        name = f"dicom-router-{host}-{stamp}.drbk"
        with open(out / name, "wb") as f:
            f.write(b"DRBK")
            f.truncate(size)  # sparse: the listing shows a realistic size without writing 40 MB
        names.append(name)
    return names


async def settle(pilot: Pilot[Any]) -> None:
    """Let every worker finish and the screen catch up (no sleeps as synchronisation)."""
    await pilot.pause()
    for _ in range(20):  # a worker's result may start the next one (save → reload): until none is left
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if all(w.is_finished for w in pilot.app.workers):
            return


async def wait_for(pilot: Pilot[Any], predicate: Any, what: str, timeout: float = 20.0) -> None:
    """For things that finish outside Textual's workers (a real DICOM peer answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await settle(pilot)
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def utc(iso: str) -> float:
    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A pilot test written as a coroutine, run as a plain test (no async plugin; fixtures still injected)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper
