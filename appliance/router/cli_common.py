"""What every `dicom-router` command module shares: exit codes, JSON output, loading the config."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .config import ConfigError, RouterConfig, load_config

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def load_or_exit(args: argparse.Namespace) -> RouterConfig:
    """The config named by --config, or every problem in it on stderr and exit 2."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
