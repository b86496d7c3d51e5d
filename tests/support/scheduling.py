"""pytest-xdist's loadgroup scheduling, except that the boot test's groups wait for the appliance image.

The suite builds the image in the background (tests/e2e/image_build.py, ~13 minutes in CI). Plain loadgroup
hands out the largest group first, so one of the two workers took the boot test at once and sat in its set-up
waiting for the build while the other worker ran the rest of the suite alone. Here those groups go to the
back of the queue while the build runs and to the front once it is over, so the worker that takes them boots
the image straight away. With nothing else left they are handed out anyway (their set-up then waits).
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadGroupScheduling

from tests.e2e import image_build

IMAGE_GROUPS = ("appliance-image", "appliance-image-uefi")  # the xdist_group marks of tests/e2e


class ImageAwareScheduling(LoadGroupScheduling):
    def _assign_work_unit(self, node: Any) -> None:
        waiting = [scope for scope in self.workqueue if scope in IMAGE_GROUPS]
        others_left = len(waiting) < len(self.workqueue)
        hold_back = image_build.building() and others_left
        for scope in reversed(waiting) if not hold_back else waiting:
            self.workqueue.move_to_end(scope, last=hold_back)
        super()._assign_work_unit(node)
