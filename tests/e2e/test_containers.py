"""Real containers on the overlay: a podman container on node1, a Docker
container on node2 and a namespace attached through the CNI conflist on node3
reach each other (ping and TCP) by overlay address, after a restart of the
runtime too, and teardown gives the runtimes' files back as they were."""

import shutil
from pathlib import Path

import pytest
from e2e_labs import E2E_SCRATCH_NETWORK, scratch_lab_name

from lab import Lab, demo
from lab import workloads as w

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"node1": "podman", "node2": "docker", "node3": "cni"}
NETNS = "ctrdemo"
# What an operator had before the deploy: Docker settings of their own, and a
# podman network of their own.
OPERATOR_SETUP = {
    "node1": "podman network create --subnet 10.99.0.0/24 --disable-dns theirs >/dev/null",
    "node2": "mkdir -p /etc/docker && printf '{\\n  \"log-level\": \"warn\"\\n}' > /etc/docker/daemon.json",
}
RUNTIME_FILES = ("find /etc/docker/daemon.json /etc/containers/networks /etc/systemd/system/docker.service.d "
                 "-type f -exec sha256sum {} + 2>/dev/null | sort")


class Fleet:
    def __init__(self, lab, directory: Path):
        self.lab, self.inventory = lab, directory / "ctr.py"
        (directory / "group_data").mkdir()
        shutil.copy(ROOT / "inventory" / "group_data" / "all.py", directory / "group_data" / "all.py")
        self.before, self.workloads = {}, {}

    def up(self):
        self.lab.up(hosts=3)
        for host, command in OPERATOR_SETUP.items():
            self.run(host, command)
        self.before = {host: self.run(host, RUNTIME_FILES) for host in RUNTIME}
        shutil.copy(self.lab.inventory_path, self.inventory)
        demo.with_runtimes(str(self.inventory), RUNTIME)
        demo.allocate(str(self.inventory))

    def deploy(self, script):
        result = demo.deploy(str(self.inventory), script)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def run(self, host, command):
        proc = self.lab.run(host, command, timeout=120)
        assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def start(self, host, name):
        runtime = RUNTIME[host]
        if runtime == "cni":
            self.workloads[host] = w.attach_namespace(self.lab, host, NETNS)
        else:
            self.workloads[host] = w.start_container(self.lab, host, runtime, name)

    def unreached(self):
        found = w.matrix(self.lab, list(self.workloads.values()))
        return {pair: result for pair, result in found.items() if not all(result.values())}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    lab = Lab(name=scratch_lab_name("c"), network=E2E_SCRATCH_NETWORK, log=lambda _: None)
    try:
        the_fleet = Fleet(lab, tmp_path_factory.mktemp("containers"))
        the_fleet.up()
        the_fleet.deploy("deploys/overlay.py")
        yield the_fleet
    finally:
        lab.down()


def test_podman_docker_and_cni_containers_reach_each_other(fleet):
    for host in RUNTIME:
        fleet.start(host, f"{RUNTIME[host]}1")
    assert fleet.unreached() == {}
    node2 = fleet.workloads["node2"]
    assert fleet.run("node2", f"docker inspect -f '{{{{.HostConfig.NetworkMode}}}}' {node2.name}").strip() == "default"
    for host, workload in fleet.workloads.items():  # the overlay's MTU, as the runtime gave flannel0
        inside = fleet.run(host, workload.exec("cat /sys/class/net/eth0/mtu"))
        assert inside == fleet.run(host, "cat /sys/class/net/flannel0/mtu"), workload.label

    fleet.run("node2", "systemctl restart flannelette")
    fleet.run("node2", "systemctl is-active flannelette")
    assert fleet.unreached() == {}

    # netavark deletes cni0 with its last container; the next one is on the overlay again.
    w.remove_container(fleet.lab, "node1", "podman", "podman1")
    fleet.start("node1", "podman2")
    assert "cni0: removed by someone else" in fleet.run("node1", "journalctl -u flannelette")
    assert fleet.unreached() == {}


def test_teardown_gives_the_runtimes_files_back(fleet):
    for host, workload in list(fleet.workloads.items()):
        if workload.runtime == "cni":
            w.detach_namespace(fleet.lab, host, workload.name)
        else:
            w.remove_container(fleet.lab, host, workload.runtime, workload.name)
    fleet.deploy("deploys/teardown.py")
    for host in RUNTIME:
        assert fleet.run(host, RUNTIME_FILES) == fleet.before[host], host
        assert "cni0" not in fleet.run(host, "ip -br link")
    assert fleet.run("node1", "podman network ls --format '{{.Name}}' | sort").split() == ["podman", "theirs"]
    assert fleet.run("node2", "systemctl is-active docker").strip() == "active"
    assert "docker0" in fleet.run("node2", "ip -br link")  # Docker is back on a bridge of its own
