"""The same image booted with UEFI firmware (OVMF): GRUB from the EFI system partition's removable path, the
system up with nothing failed. Its own xdist group, so it can boot beside the BIOS appliance of
test_appliance_boot.py instead of after it."""

from __future__ import annotations

import pytest

from tests.e2e import vm
from tests.e2e.test_appliance_boot import _need_image

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("appliance-image-uefi"), pytest.mark.timeout(3600)]


def test_uefi_boot(tmp_path_factory: pytest.TempPathFactory) -> None:
    _need_image()
    box = vm.Appliance(tmp_path_factory.mktemp("appliance-uefi"), firmware="uefi").start()
    try:
        box.wait_ready()
        print(f"\nappliance (UEFI, {vm.accelerator()}) ready {box.booted_after:.0f} s after qemu started")
        assert box.ssh("test -d /sys/firmware/efi && echo efi").stdout.strip() == "efi"
        assert box.sudo("systemctl --failed --no-legend --plain").stdout.strip() == ""
    finally:
        box.stop()
