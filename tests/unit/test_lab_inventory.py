"""The inventory `python -m lab up` writes for pyinfra."""

import runpy

from lab import inventory

HOSTS = [("node1", "192.168.56.11"), ("node2", "192.168.56.12")]
KEY = "/var/lib/flannelette-lab/lab/id_ed25519"


def test_rendered_inventory_is_what_pyinfra_reads(tmp_path):
    path = tmp_path / "lab.py"
    inventory.write(path, inventory.render("lab", HOSTS, KEY))
    nodes = runpy.run_path(str(path))["nodes"]
    assert nodes[1] == ("node2", {
        "ssh_hostname": "192.168.56.12",
        "ssh_user": "root",
        "ssh_key": KEY,
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "flannel_public_ip": "192.168.56.12",
        "flannel_iface": "eth0",
    })
    assert [name for name, _ in nodes] == ["node1", "node2"]


def test_remove_leaves_a_file_the_lab_did_not_write(tmp_path):
    ours, theirs = tmp_path / "lab.py", tmp_path / "prod.py"
    inventory.write(ours, inventory.render("lab", HOSTS, KEY))
    theirs.write_text("hosts = ['node1']\n")
    inventory.remove(ours)
    inventory.remove(theirs)
    inventory.remove(tmp_path / "missing.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.py"]
