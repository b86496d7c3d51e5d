"""Is the clock right? chrony's view (sync state, offset), for `status` and the console.

Audit timestamps, retention and "oldest item age" all trust the clock; on the appliance chrony keeps it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

OFFSET_WARN_SECONDS = 1.0


@dataclass
class ClockState:
    available: bool
    synced: bool | None = None
    offset_seconds: float | None = None
    source: str | None = None
    stratum: int | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_tracking(csv_line: str) -> ClockState:
    """`chronyc -c tracking`: ref id, ref name, stratum, ref time, system time offset, …, leap status."""
    f = csv_line.strip().split(",")
    if len(f) < 14:
        return ClockState(True, None, message=f"unexpected chronyc output: {csv_line.strip()[:80]}")
    stratum = int(f[2]) if f[2].isdigit() else None
    offset = float(f[4]) if f[4] else None
    leap = f[13]
    synced = leap != "Not synchronised" and stratum is not None and 0 < stratum < 16
    if not synced:
        msg = "NOT synchronised: timestamps may be wrong — check the NTP servers and the firewall (UDP 123)"
    elif offset is not None and abs(offset) > OFFSET_WARN_SECONDS:
        msg = f"synchronised to {f[1]} but {offset:+.3f} s off — still converging"
    else:
        msg = f"synchronised to {f[1]} (stratum {stratum}), offset {offset or 0:+.6f} s"
    return ClockState(True, synced, offset, f[1], stratum, msg)


def clock_state(timeout: float = 2.0) -> ClockState:
    chronyc = shutil.which("chronyc")
    if chronyc is None:
        return ClockState(False, message="chrony is not installed here (the appliance image has it)")
    try:
        out = subprocess.run([chronyc, "-c", "tracking"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ClockState(True, None, message=f"chronyc did not answer: {exc}")
    if out.returncode != 0:
        return ClockState(True, None, message=f"chronyd is not running ({(out.stderr or out.stdout).strip()[:80]})")
    return parse_tracking(out.stdout)
