"""The overlay on real VMs: Debian's cloud kernel, virtio NICs, qemu under KVM
where it works and TCG where it doesn't, at the Vagrantfile's names and
addresses (node1.. at 192.168.56.11..), provisioned by the real `pyinfra` over
SSH. Functional only: TCG is far too slow for a throughput to mean anything.

One VM lab goes through the tests in order (boot, deploy, traffic) and is
taken down by the last one, which checks that nothing is left; the fixture
takes it down too when a test fails.
"""

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from lab import demo, network
from lab import host as hostmod
from lab.vmlab import VMLab

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
# Overridable, so that two checkouts' VM tiers can run on one machine at once.
VM_LAB_NAME = os.environ.get("FLANNELETTE_VM_LAB", "vm")
VM_LAB_NETWORK = os.environ.get("FLANNELETTE_VM_NETWORK", "192.168.56.0/24")
NETNS = "vmc"  # the container on each VM
TIMINGS: dict = {}


class VMFleet:
    """The VM lab, its inventory beside a copy of group_data, and the qemu processes it started."""

    def __init__(self, lab, directory: Path):
        self.lab = lab
        self.inventory = directory / "vms.py"
        group_data = directory / "group_data" / "all.py"
        group_data.parent.mkdir(parents=True)
        shutil.copy(ROOT / "inventory" / "group_data" / "all.py", group_data)
        self.processes: list = []
        self.addresses: dict = {}

    def up(self, count: int) -> None:
        started = time.monotonic()
        self.lab.up(hosts=count)
        TIMINGS[f"{count} VMs up ({self.lab.accelerator})"] = time.monotonic() - started
        self.processes = [(pid, start) for _, pid, start in self.lab.processes()]
        shutil.copy(self.lab.inventory_path, self.inventory)
        demo.allocate(str(self.inventory))

    def hosts(self) -> list:
        return [name for name, _ in self.lab.hosts()]

    def deploy(self, script: str = "deploys/overlay.py"):
        started = time.monotonic()
        result = demo.deploy(str(self.inventory), script, prefix=self.lab.command_prefix())
        TIMINGS[script] = time.monotonic() - started
        result.output = result.stdout + result.stderr
        return result

    def run(self, host: str, command: str) -> str:
        proc = self.lab.run(host, command, timeout=180)
        assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout.strip()

    def leftovers(self) -> dict:
        """Everything of the lab still on this machine, by kind; empty when clean."""
        prefix = f"{self.lab.name}-"
        found = {
            "netns": [ns for ns in network.netns_list() if ns.startswith(prefix)],
            "links": [name for name in network.links_in(None) if name.startswith(prefix)],
            "qemu": [pid for pid, start in self.processes if hostmod.is_running(pid, start)],
            "state": [str(self.lab.state_dir)] if self.lab.state_dir.exists() else [],
        }
        return {kind: items for kind, items in found.items() if items}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    lab = VMLab(name=VM_LAB_NAME, network=VM_LAB_NETWORK, log=lambda _: None)
    the_fleet = VMFleet(lab, tmp_path_factory.mktemp("inventory"))
    try:
        the_fleet.up(3)
        yield the_fleet
    finally:
        lab.down()
        print("\nVM tier timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()), file=sys.stderr)


def test_three_vms_run_debian_kernels_on_virtio_nics_and_reach_each_other(fleet):
    assert fleet.hosts() == ["node1", "node2", "node3"]
    addresses = dict(fleet.lab.hosts())
    assert addresses["node2"] == "192.168.56.12"  # the Vagrantfile's
    for host in fleet.hosts():
        assert fleet.run(host, "hostname") == host
        assert fleet.run(host, "uname -r").endswith("-cloud-amd64")
        assert fleet.run(host, "basename $(readlink /sys/class/net/eth0/device/driver)") == "virtio_net"
        for peer, address in addresses.items():
            assert fleet.lab.run(host, f"ping -c1 -W5 {address}").returncode == 0, f"{host} -> {peer}"


def test_the_deploy_connects_every_vm_and_containers_reach_each_other(fleet):
    result = fleet.deploy()
    assert result.returncode == 0, result.output[-6000:]
    for host in fleet.hosts():
        assert fleet.run(host, "systemctl is-active flannelette") == "active"
        assert "ready" in fleet.run(host, "flannelette status").splitlines()[0]
        fleet.addresses[host] = demo.attach(fleet.lab, host, NETNS)
    reached = demo.reachability(fleet.lab, fleet.addresses, NETNS)
    assert all(reached.values()), demo.render_matrix(fleet.addresses, reached, NETNS)


def test_a_tcp_stream_crosses_every_pair_of_vms_over_the_overlay(fleet):
    hosts = fleet.hosts()
    for source, target in zip(hosts, hosts[1:] + hosts[:1]):
        assert demo.tcp_transfer(fleet.lab, source, target, fleet.addresses[target], NETNS, megabytes=2), \
            f"{source} -> {target}"


def test_down_ends_every_vm_and_leaves_nothing_behind(fleet):
    assert len(fleet.processes) == 3
    fleet.lab.down()
    assert fleet.leftovers() == {}
