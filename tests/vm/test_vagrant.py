"""The Vagrantfile for real: `vagrant up` with vagrant-libvirt on the box
`python -m lab box` writes, `pyinfra inventory/vagrant.py deploys/overlay.py`,
who reaches whom from a container on each VM, `vagrant destroy -f`, and
nothing left behind. libvirtd runs in a namespace of its own (lab.vagrant).

Two VMs, not three: under TCG on two shared cores each one costs about a core
while it boots. KVM is used only with FLANNELETTE_VM_ACCEL=kvm (where /dev/kvm
exists but doesn't work, a guest hangs without a word).
"""

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from lab import demo
from lab import vagrant as vagrantmod

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
NODES = 2
NETNS = "vagc"  # the container on each VM
TIMINGS: dict = {}


@pytest.fixture(scope="module")
def cluster():
    reasons = vagrantmod.missing()
    if reasons:
        pytest.skip("the Vagrant test needs vagrant-libvirt and libvirt: " + "; ".join(reasons))
    driver = "kvm" if os.environ.get("FLANNELETTE_VM_ACCEL") == "kvm" else "qemu"
    the_cluster = vagrantmod.VagrantCluster(name=os.environ.get("FLANNELETTE_VAGRANT_NAME", "vagrant"),
                                            nodes=NODES, driver=driver, log=lambda _: None)
    started = time.monotonic()
    try:
        the_cluster.up()
        yield the_cluster
    finally:
        the_cluster.down()
        TIMINGS.update(the_cluster.timings)
        TIMINGS["total"] = time.monotonic() - started
        print("\nVagrant timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()), file=sys.stderr)


@pytest.fixture(scope="module")
def inventory(cluster, tmp_path_factory):
    """inventory/vagrant.py beside a copy of group_data, so its allocation file stays out of the checkout."""
    directory = tmp_path_factory.mktemp("vagrant-inventory")
    shutil.copy(ROOT / "inventory" / "vagrant.py", directory / "vagrant.py")
    shutil.copytree(ROOT / "inventory" / "group_data", directory / "group_data")
    return directory / "vagrant.py"


def run(cluster, host, command):
    proc = cluster.run(host, command, timeout=180)
    assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def test_vagrant_up_boots_the_vagrantfiles_vms_on_the_local_box(cluster):
    for host, address in cluster.hosts():
        TIMINGS[f"{host} up for"] = float(run(cluster, host, "cut -d' ' -f1 /proc/uptime"))
        print(f"\n{host}: " + run(cluster, host, "systemd-analyze time | head -1"), file=sys.stderr)
        assert run(cluster, host, "hostname") == host
        assert run(cluster, host, "uname -r").endswith("-cloud-amd64")
        assert f"inet {address}/24" in run(cluster, host, "ip -4 -o addr show dev eth1")
        # The box held every package: the provision installed nothing and needed no network.
        assert run(cluster, host, "dpkg-query -W -f='${Status}' iperf3 containernetworking-plugins") \
            .count("install ok installed") == 2
    assert cluster.run("node1", "ping -c1 -W5 192.168.56.12").returncode == 0


def test_pyinfra_deploys_the_overlay_and_every_container_reaches_every_other(cluster, inventory, monkeypatch):
    monkeypatch.setenv("NODES", str(NODES))  # what inventory/vagrant.py reads, as `vagrant up` did
    monkeypatch.setenv("VAGRANT_DOTFILE_PATH", str(cluster.dotfile))
    demo.allocate(str(inventory))
    started = time.monotonic()
    result = demo.deploy(str(inventory), "deploys/overlay.py", prefix=cluster.command_prefix())
    TIMINGS["deploy"] = time.monotonic() - started
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    addresses = {}
    for host, _ in cluster.hosts():
        assert run(cluster, host, "systemctl is-active flannelette") == "active"
        addresses[host] = demo.attach(cluster, host, NETNS)
    reached = demo.reachability(cluster, addresses, NETNS)
    print("\n" + demo.render_matrix(addresses, reached, NETNS), file=sys.stderr)
    assert all(reached.values()), demo.render_matrix(addresses, reached, NETNS)


def test_vagrant_destroy_leaves_nothing_behind(cluster):
    cluster.down()
    assert cluster.leftovers() == {}
