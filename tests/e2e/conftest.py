"""The e2e tier: booted lab hosts. Skips, saying why, where the machine can't
run a lab; gives tests a lab that is taken down even when they fail."""

import os
import shutil

import pytest

from e2e_labs import E2E_LAB_NAME, E2E_LAB_NETWORK
from lab import Lab


def missing_for_lab():
    """What this machine lacks to run a lab, as reasons a person can act on."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root")
    for tool, package in (("debootstrap", "debootstrap"),
                          ("systemd-nspawn", "systemd-container"),
                          ("ip", "iproute2"), ("ssh-keygen", "openssh-client"), ("ethtool", "ethtool")):
        if shutil.which(tool) is None:
            reasons.append(f"{tool} missing (apt-get install {package})")
    if not os.path.exists("/dev/net/tun"):
        reasons.append("/dev/net/tun missing")
    return reasons


def pytest_collection_modifyitems(config, items):
    reasons = missing_for_lab()
    if not reasons:
        return
    skip = pytest.mark.skip(
        reason="e2e needs root, debootstrap and systemd-nspawn: " + "; ".join(reasons))
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab():
    """A 3-host lab, shared by the session's e2e tests, on its own name and
    network so it runs beside a user's `python -m lab up`."""
    the_lab = Lab(name=E2E_LAB_NAME, network=E2E_LAB_NETWORK, log=lambda _: None)
    try:
        the_lab.up(hosts=3)
        yield the_lab
    finally:
        the_lab.down()
