"""The appliance image's manifest (tools/build-image.sh): what is in the image and how to check it.

Prints JSON: the image file, its sha256 and sizes, the project's version, the build time, the Debian packages
(name → version) and the firmwares it boots with."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packages(tsv: Path) -> dict[str, str]:
    found = {}
    for line in tsv.read_text().splitlines():
        name, version, arch = line.split("\t")
        found[name if arch in ("all", "amd64") else f"{name}:{arch}"] = version
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--packages", type=Path, required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--accelerator", required=True)
    ap.add_argument("--base", choices=["offline", "cloud"], required=True)
    ap.add_argument("--site-vars", type=Path, required=True)
    ap.add_argument("--seconds", type=int, required=True)
    args = ap.parse_args()

    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(args.image)], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    pkgs = packages(args.packages)
    manifest = {
        "image": args.image.name,
        "format": "qcow2",
        "sha256": sha256(args.image),
        "size_bytes": args.image.stat().st_size,
        "virtual_size_bytes": info["virtual-size"],
        "version": args.version,
        "built_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "build_seconds": args.seconds,
        "build_host": os.uname().nodename,
        "accelerator": args.accelerator,
        "site_vars": args.site_vars.name,
        "base": {
            "offline": "Debian 12 (bookworm) amd64, built with mmdebstrap from the Debian mirror (tools/mkdisk.sh)",
            "cloud": "Debian 12 (bookworm) amd64 generic cloud image, checked against Debian's SHA512SUMS",
        }[args.base],
        "kernel": next((v for k, v in pkgs.items() if k.startswith("linux-image-6")), None),
        "firmware": ["bios", "uefi"],
        "packages": pkgs,
    }
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
