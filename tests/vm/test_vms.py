"""The overlay on real VMs: Debian's cloud kernel, virtio NICs, qemu under KVM
where it works and TCG where it doesn't, at the Vagrantfile's names and
addresses (node1.. at 192.168.56.11..), provisioned by the real `pyinfra` over
SSH. Functional only: TCG is far too slow for a throughput to mean anything.

node1..3 run Debian 12; node4 runs Debian 11, the oldest kernel (5.10) and
python3 (3.9) the runtime supports, in the same deploy as the others. What
its runtime chose on that kernel is printed with the timings.

One VM lab goes through the tests in order (boot, deploy, traffic) and is
taken down by the last one, which checks that nothing is left; the fixture
takes it down too when a test fails.
"""

import ipaddress
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from lab import demo, network, rootfs
from lab import host as hostmod
from lab.vmlab import VMLab

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
# Overridable, so that two checkouts' VM tiers can run on one machine at once.
VM_LAB_NAME = os.environ.get("FLANNELETTE_VM_LAB", "vm")
VM_LAB_NETWORK = os.environ.get("FLANNELETTE_VM_NETWORK", "192.168.56.0/24")
NETNS = "vmc"  # the container on each VM
OLDEST = "node4"  # Debian 11: Linux 5.10, python3 3.9
SUITES = {OLDEST: rootfs.OLDEST_SUITE}
HOSTS = ["node1", "node2", "node3", OLDEST]
TIMINGS: dict = {}
REPORT: list = []  # what the runtime on the oldest kernel chose, for the summary


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

    def up(self, count: int, suites: dict) -> None:
        started = time.monotonic()
        self.lab.up(hosts=count, suites=suites)
        TIMINGS[f"{count} VMs up ({self.lab.accelerator})"] = time.monotonic() - started
        for name, seconds in self.lab.boot_seconds.items():
            TIMINGS[f"{name} boot"] = seconds
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

    def status(self, host: str) -> dict:
        return json.loads(self.run(host, "flannelette status --json"))

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
        the_fleet.up(len(HOSTS), SUITES)
        yield the_fleet
    finally:
        lab.down()
        print("\nVM tier timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()), file=sys.stderr)
        print("\n".join(REPORT), file=sys.stderr)


def test_four_vms_run_debian_kernels_on_virtio_nics_and_reach_each_other(fleet):
    assert fleet.hosts() == HOSTS
    addresses = dict(fleet.lab.hosts())
    network_ = ipaddress.ip_network(VM_LAB_NETWORK)
    assert (addresses["node2"], addresses[OLDEST]) == (str(network_[12]), str(network_[14]))  # the Vagrantfile's
    for host in fleet.hosts():
        assert fleet.run(host, "hostname") == host
        assert fleet.run(host, "uname -r").endswith("-cloud-amd64")
        assert fleet.run(host, "basename $(readlink /sys/class/net/eth0/device/driver)") == "virtio_net"
        for peer, address in addresses.items():
            assert fleet.lab.run(host, f"ping -c1 -W5 {address}").returncode == 0, f"{host} -> {peer}"


def test_the_oldest_vm_runs_debian_11_with_linux_5_10_and_python_3_9(fleet):
    assert fleet.run(OLDEST, "cut -d. -f1 /etc/debian_version") == "11"
    assert fleet.run(OLDEST, "uname -r").startswith("5.10.")
    assert fleet.run(OLDEST, "python3 --version").startswith("Python 3.9.")
    assert fleet.run("node1", "cut -d. -f1 /etc/debian_version") == "12"


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
    # A ring, and back from the oldest VM to node1: it sends to and takes from Debian 12 both ways.
    for source, target in [*zip(hosts, hosts[1:] + hosts[:1]), ("node1", OLDEST)]:
        assert demo.tcp_transfer(fleet.lab, source, target, fleet.addresses[target], NETNS, megabytes=2), \
            f"{source} -> {target}"


def test_the_oldest_kernel_encrypts_to_every_peer_and_says_what_it_lacks(fleet):
    status = fleet.status(OLDEST)
    peers = {peer["peer"]: peer for peer in status["peers"]}
    REPORT.append(f"{OLDEST} ({fleet.run(OLDEST, 'uname -r')}, {fleet.run(OLDEST, 'python3 --version')}) peers: "
                  + ", ".join(f"{name} {p.get('format')} ({p.get('exchange')}, tx {p['tx']} rx {p['rx']})"
                              for name, p in sorted(peers.items())))
    for host in ("node1", OLDEST):  # what each kernel let the runtime set on flannel0
        gso = fleet.run(host, "ip -d link show dev flannel0 | grep -o 'gso_max_s[a-z]* [0-9]*' | xargs")
        REPORT.append(f"{host} flannel0: {gso}")
    journal = fleet.run(OLDEST, "journalctl -u flannelette -b -o cat --no-pager")
    REPORT.append(f"{OLDEST} runtime log:\n  " + "\n  ".join(journal.splitlines()[-40:]))
    assert sorted(peers) == [h for h in HOSTS if h != OLDEST]
    assert all(p.get("format") in ("sealed", "wireguard") for p in peers.values()), peers
    assert status["ready"], status


def test_down_ends_every_vm_and_leaves_nothing_behind(fleet):
    assert len(fleet.processes) == len(HOSTS)
    fleet.lab.down()
    assert fleet.leftovers() == {}
