"""The VM tier: qemu VMs with Debian's kernel and virtio NICs. Skips, saying
why, where the machine can't run them."""

import pytest

from lab import vmlab


def pytest_collection_modifyitems(config, items):
    reasons = vmlab.missing()
    if not reasons:
        return
    skip = pytest.mark.skip(reason="the VM tier needs root and qemu: " + "; ".join(reasons))
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)
