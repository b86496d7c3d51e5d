"""appliance.router.clock: chrony's `chronyc -c tracking` line → is the clock right, in words."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.router import clock
from appliance.router.clock import clock_state, parse_tracking

# Real `chronyc -c tracking` output (chrony 4.3, Debian 12): ref id, ref name, stratum, ref time, system time
# offset, last offset, RMS offset, frequency, residual freq, skew, root delay, root dispersion, update
# interval, leap status.
SYNCED = (
    "C0A80A05,ntp1.hospital.example,3,1800000000.123456789,-0.000012345,-0.000009876,0.000023456,"
    "-12.345,-0.001,0.052,0.012345678,0.001234567,1024.3,Normal\n"
)
UNSYNCED = (
    "00000000,,0,0.000000000,+0.000000000,+0.000000000,+0.000000000,+0.000,+0.000,0.000,1.000000000,"
    "1.000000000,0.0,Not synchronised\n"
)
LARGE_OFFSET = (
    "C0A80A06,ntp2.hospital.example,2,1800000000.5,+2.345678901,+2.300000000,0.500000000,"
    "+3.210,+0.020,0.300,0.020000000,0.005000000,64.0,Normal\n"
)
LARGE_NEGATIVE = SYNCED.replace("-0.000012345", "-7.250000000", 1)
LEAP_PENDING = SYNCED.replace(",Normal", ",Insert second")


def test_synced_clock_names_its_source_stratum_and_offset() -> None:
    s = parse_tracking(SYNCED)
    assert s.available and s.synced is True
    assert s.source == "ntp1.hospital.example" and s.stratum == 3
    assert s.offset_seconds == pytest.approx(-0.000012345)
    assert s.message == "synchronised to ntp1.hospital.example (stratum 3), offset -0.000012 s"


def test_unsynchronised_clock_says_what_to_check() -> None:
    s = parse_tracking(UNSYNCED)
    assert s.available and s.synced is False
    assert s.stratum == 0 and s.source == ""  # no reference at all
    assert "NOT synchronised" in s.message and "UDP 123" in s.message


@pytest.mark.parametrize("line, offset", [(LARGE_OFFSET, 2.345678901), (LARGE_NEGATIVE, -7.25)])
def test_large_offset_is_synced_but_called_out(line: str, offset: float) -> None:
    s = parse_tracking(line)
    assert s.synced is True
    assert s.offset_seconds == pytest.approx(offset)
    assert f"{offset:+.3f} s off" in s.message and "converging" in s.message


def test_a_pending_leap_second_is_still_synchronised() -> None:
    assert parse_tracking(LEAP_PENDING).synced is True


def test_stratum_16_means_unsynchronised_even_if_leap_status_is_normal() -> None:
    line = SYNCED.replace(",3,", ",16,", 1)
    assert parse_tracking(line).synced is False


@pytest.mark.parametrize("garbage", ["", "506 Cannot talk to daemon", "a,b,c"])
def test_unexpected_output_is_reported_not_guessed(garbage: str) -> None:
    s = parse_tracking(garbage)
    assert s.available and s.synced is None
    assert s.message.startswith("unexpected chronyc output")


def _fake_chronyc(tmp_path: Path, body: str) -> None:
    script = tmp_path / "chronyc"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_clock_state_runs_chronyc_tracking_in_csv_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_chronyc(tmp_path, f'[ "$1 $2" = "-c tracking" ] || exit 3\nprintf "%s" "{SYNCED.strip()}"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    s = clock_state()
    assert s.synced is True and s.source == "ntp1.hospital.example"


def test_clock_state_when_chronyd_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_chronyc(tmp_path, 'echo "506 Cannot talk to daemon" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    s = clock_state()
    assert s.available and s.synced is None
    assert "chronyd is not running" in s.message and "506 Cannot talk to daemon" in s.message


def test_clock_state_without_chrony(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock.shutil, "which", lambda name: None)
    s = clock_state()
    assert not s.available and "not installed" in s.message
