"""The Vagrantfile and its inventory: the lab's cluster as real VMs."""

import os
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

needs_vagrant = pytest.mark.skipif(
    shutil.which("vagrant") is None,
    reason="vagrant not installed (apt-get install --no-install-recommends vagrant)")


def validate(tmp_path, nodes):
    """`vagrant validate` on a copy, so no .vagrant/ lands in the project."""
    shutil.copy(ROOT / "Vagrantfile", tmp_path)
    env = dict(os.environ, NODES=str(nodes), VAGRANT_HOME=str(tmp_path / "home"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


@needs_vagrant
@pytest.mark.parametrize("nodes", [3, 4])
def test_vagrant_validates_the_vagrantfile(tmp_path, nodes):
    result = validate(tmp_path, nodes)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"node{nodes}:" in result.stdout


@needs_vagrant
def test_a_bad_node_count_is_refused(tmp_path):
    result = validate(tmp_path, 0)
    assert result.returncode != 0
    assert "NODES must be between 1 and 244, not 0" in result.stdout + result.stderr


def test_the_inventory_has_the_vagrantfiles_hosts(monkeypatch):
    monkeypatch.setenv("NODES", "4")
    nodes = runpy.run_path(str(ROOT / "inventory" / "vagrant.py"))["nodes"]
    assert [(name, data["ssh_hostname"]) for name, data in nodes] == [
        (f"node{i}", f"192.168.56.{10 + i}") for i in range(1, 5)]
    node2 = nodes[1][1]
    assert node2["flannel_public_ip"] == "192.168.56.12"
    assert node2["ssh_key"].endswith("/.vagrant/machines/node2/libvirt/private_key")
    assert (node2["ssh_user"], node2["_sudo"]) == ("vagrant", True)
    assert node2["ssh_known_hosts_file"] == "/dev/null"
