"""The router package never imports Textual (DESIGN.md): the daemon and the CLI must run, and stay small, on a
box where the console is never started. Checked in a fresh interpreter so this test run's imports don't count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, pkgutil, sys
import appliance.router as pkg
# __main__ only runs the CLI (it would exit asking for a command); the CLI's modules are imported anyway.
found = pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
names = sorted(m.name for m in found if not m.name.endswith(".__main__"))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps({"modules": names, "failed": failed,
                  "textual": sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))}))
"""


def test_no_router_module_imports_textual() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "appliance.router.cli" in result["modules"] and len(result["modules"]) > 20
    assert result["failed"] == {}
    assert result["textual"] == [], f"Textual was imported by the router package: {result['textual'][:5]}"


def test_the_console_command_imports_textual_only_when_run() -> None:
    """`dicom-router --help` (and so every other subcommand) parses without loading the console."""
    probe = (
        "import sys; from appliance.router.cli import build_parser; build_parser(); "
        "print(any(m.startswith('textual') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
