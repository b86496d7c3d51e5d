"""End to end: the real `dicom-router console` in tmux against a running daemon with a stuck destination.

The on-call person opens the console, sees the failed destination on the dashboard, presses Enter to see its jobs,
selects all of them, retries with confirmation and a reason — and `dicom-router queue ls` shows the jobs moved,
with an audit entry under the operator's name. Keys go in with `tmux send-keys`; the screen is read with
`tmux capture-pane`, polled until the expected text appears (no fixed sleeps)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.tui.backend import Backend, JobQuery
from tests.support.data import make_ct_series
from tests.support.peers import REPO, Router, StoreSCP, dest_node, storescu, wait_until

TMUX = shutil.which("tmux") or "/usr/bin/tmux"
# Off CI a missing tmux skips (a developer box); under CI it must fail, since .ci/run installs tmux.
pytestmark = pytest.mark.skipif(
    not Path(TMUX).exists() and not os.environ.get("CI"), reason="tmux is not installed (apt-get install tmux)"
)


class Pane:
    """One tmux session on a private server socket (never the user's own tmux)."""

    def __init__(self, command: list[str], width: int = 120, height: int = 40):
        self.socket = f"dicom-router-e2e-{uuid.uuid4().hex[:8]}"
        self.command = command
        self.size = (width, height)

    def tmux(self, *args: str) -> str:
        res = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {res.stderr}")
        return res.stdout

    def start(self) -> Pane:
        env = ["-e", "TERM=xterm-256color", "-e", "COLORTERM=truecolor"]
        width, height = self.size
        self.tmux("new-session", "-d", "-s", "console", "-x", str(width), "-y", str(height), "-c", str(REPO), *env,
                  " ".join(self.command))  # fmt: skip
        return self

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "console")

    def wait_for(self, *needles: str, timeout: float = 20) -> str:
        def shown() -> str | None:
            screen = self.text()
            return screen if all(n in screen for n in needles) else None

        return str(wait_until(shown, timeout, f"{needles} on the console screen", interval=0.1))

    def cursor_row(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", "console", "#{cursor_y}").strip())

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "console", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "console", "-l", text)

    def stop(self) -> None:
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def stuck_router(tmp_path: Path) -> Iterator[tuple[Router, StoreSCP]]:
    """PACS_MAIN gives up after one attempt (max_attempts 1) and nothing listens yet: 3 objects fail."""
    scp = StoreSCP(tmp_path, "PACS")  # port reserved, not started
    router = Router(
        tmp_path,
        destinations={"PACS_MAIN": dest_node("PACS", scp.port, retry={"base_seconds": 0.2, "max_attempts": 1},
                                             circuit={"open_after_failures": 50})},
        router_extra={"drain_seconds": 0.5},
    ).start()  # fmt: skip
    try:
        files = make_ct_series(tmp_path / "in", 3, rows=16, cols=16, accession="ACC_E2E")
        assert storescu(router.port, files).returncode == 0
        backend = Backend(router.config_path, "test")
        wait_until(lambda: backend.count(JobQuery(states=("failed",))) == 3, 30, "3 failed jobs")
        yield router, scp
    finally:
        router.stop()
        scp.stop()


def test_console_in_tmux_finds_the_failed_destination_and_retries_it(stuck_router: tuple[Router, StoreSCP]) -> None:
    router, scp = stuck_router
    scp.start()  # the PACS is back; its 3 jobs stay failed until someone retries them
    console = Path(sys.executable).with_name("dicom-router")
    cmd = [str(console)] if console.exists() else [sys.executable, "-m", "appliance.router"]
    pane = Pane([*cmd, "console", "--config", str(router.config_path), "--operator", "e2e-tester"]).start()
    try:
        pane.wait_for("Dashboard", "PACS_MAIN")  # the dashboard names the destination with failed jobs
        pane.keys("Enter")  # its jobs, in the queue screen, filtered to PACS_MAIN
        pane.wait_for("3 jobs match", "destination PACS_MAIN", "failed")
        pane.keys("A")  # all jobs matching the filter
        pane.wait_for("ALL MATCHING SELECTED")
        pane.keys("r")
        pane.wait_for("Retry 3 jobs (all matching: destination PACS_MAIN)?")
        pane.keys("y")
        pane.wait_for("Why retry 3 jobs")
        pane.type("PACS is back")
        pane.wait_for("PACS is back")
        row = pane.cursor_row()  # the terminal cursor sits in the focused field
        pane.keys("Tab")  # to the ticket field; wait until focus is there, or the ticket would land in the reason
        wait_until(lambda: pane.cursor_row() != row, 10, "the ticket field to take focus")
        pane.type("INC0042")
        pane.wait_for("INC0042")
        pane.keys("Enter")
        pane.wait_for("retry: 3 job(s) changed")

        def moved() -> bool:
            out = router.cli("queue", "ls", "--json", "--destination", "PACS_MAIN").stdout
            return {j["state"] for j in json.loads(out)["jobs"]} <= {"queued", "sending", "done"}

        wait_until(moved, 20, "the jobs to leave `failed`")
        router.wait_delivered(3, timeout=30)
        jobs = json.loads(router.cli("queue", "ls", "--json", "--destination", "PACS_MAIN").stdout)
        assert jobs["total"] == 3 and {j["state"] for j in jobs["jobs"]} == {"done"}
        retry = [e for e in router.audit() if e["event"] == "queue_retry"]
        assert len(retry) == 1 and retry[0]["operator"] == "e2e-tester" and retry[0]["process"] == "console"
        assert retry[0]["reason"] == "INC0042: PACS is back" and retry[0]["changed"] == 3
        pane.keys("C-q")
        wait_until(lambda: not _server_up(pane), 10, "the console to quit (its tmux session ends with it)")
    finally:
        pane.stop()


def _server_up(pane: Pane) -> bool:
    res = subprocess.run([TMUX, "-L", pane.socket, "ls"], capture_output=True, text=True, timeout=10)
    return res.returncode == 0
