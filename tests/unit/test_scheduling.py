"""The suite's xdist scheduling: the boot test's groups wait for the appliance image (tests/support/scheduling.py)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from xdist.scheduler import LoadGroupScheduling

from tests.e2e import image_build
from tests.support.scheduling import ImageAwareScheduling


def scheduler(monkeypatch: pytest.MonkeyPatch, scopes: list[str], handed_out: list[str]) -> ImageAwareScheduling:
    # Only the queue matters here: handing a unit to a worker is xdist's, replaced by taking the queue's head.
    monkeypatch.setattr(LoadGroupScheduling, "_assign_work_unit",
                        lambda self, node: handed_out.append(self.workqueue.popitem(last=False)[0]))  # fmt: skip
    sched = ImageAwareScheduling.__new__(ImageAwareScheduling)
    sched.workqueue = OrderedDict((scope, {}) for scope in scopes)
    return sched


def test_the_boot_test_waits_for_the_image_then_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    handed_out: list[str] = []
    sched = scheduler(monkeypatch, ["appliance-image", "appliance-image-uefi", "t1", "t2", "t3"], handed_out)
    monkeypatch.setattr(image_build, "building", lambda: True)
    sched._assign_work_unit(None)
    sched._assign_work_unit(None)
    assert handed_out == ["t1", "t2"]
    monkeypatch.setattr(image_build, "building", lambda: False)  # the image is built
    sched._assign_work_unit(None)
    sched._assign_work_unit(None)
    sched._assign_work_unit(None)
    assert handed_out == ["t1", "t2", "appliance-image", "appliance-image-uefi", "t3"]


def test_with_nothing_else_left_the_boot_test_is_handed_out_while_the_image_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed_out: list[str] = []
    sched = scheduler(monkeypatch, ["appliance-image", "t1"], handed_out)
    monkeypatch.setattr(image_build, "building", lambda: True)
    sched._assign_work_unit(None)
    sched._assign_work_unit(None)
    assert handed_out == ["t1", "appliance-image"]
