"""The one-pass inventory reader gives what pyinfra's CLI loader gives: the same hosts, groups and data.

Both loaders run in a child process: pyinfra's CLI monkey-patches the
interpreter for gevent when it is imported.
"""

import json
import subprocess
import sys
import textwrap

import pytest

COMPARE = """
import json, os, sys
from flannelette.controller import inventory, inventory_files

def view(loaded):
    hosts = [(h.name, list(h.groups), repr(sorted(h.data.dict().items(), key=repr))) for h in loaded]
    return {"hosts": hosts, "all": repr(sorted(loaded.data.items()))}

path = sys.argv[1]
ours = inventory_files.load(path, os.getcwd()) if inventory_files.reads_alike(path, os.getcwd()) else None
theirs = inventory.load_with_pyinfra(path, os.getcwd())
print(json.dumps({"ours": view(ours) if ours is not None else None, "theirs": view(theirs),
                  "loaded": type(inventory.load(path)).__name__,
                  "data": {h.name: h.data.dict() for h in inventory.load(path)}}, default=repr))
"""

INVENTORY = """
    import json as _json  # a private name: no group

    eu = [
        ("node1", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.1.0/24", "role": "node1's"}),
        "node2",
        ("node3", {"flannel_iface": "eth1"}),
    ]
    us = ([("node3", {"role": "node3 in us"}), ("node4", {"ssh_hostname": "192.168.56.14"})], {"role": "us's", "zone": "us"})
    edge = ["node4", "node2"]
    bad = [1, 2]  # not hosts: ignored, with pyinfra's warning
    port = 22  # not a list: no group
    _spare = ["node9"]
"""

GROUP_DATA = {  # folder -> file -> text: the working directory's first, the inventory's own second (it wins)
    "group_data": {
        "all.py": 'flannel_net_conf = {"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}\nrole = "all\'s"\nzone = "all"\n',
        "eu.py": 'role = "eu\'s (cwd)"\nkeep = "cwd"\n',
    },
    "inventory/group_data": {
        "eu.py": 'import os\nfrom os import path as p\nrole = "eu\'s"\nflannel_ip_masq = False\n',
        "edge.py": '__all__ = ["zone"]\nzone = "edge"\nhidden = 1\n',
        "prod.py": 'inventory_file = "prod"\n',
        "nobody.py": 'x = 1\n',
        "notes.txt": 'not python\n',
    },
}


def run_compare(tmp_path, inventory_text, group_data=GROUP_DATA, name="prod.py"):
    (tmp_path / "inventory").mkdir(exist_ok=True)
    (tmp_path / "inventory" / name).write_text(textwrap.dedent(inventory_text))
    for folder, files in group_data.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (tmp_path / folder / file).write_text(text)
    result = subprocess.run([sys.executable, "-c", COMPARE, f"inventory/{name}"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_groups_group_data_and_host_data_read_as_pyinfra_reads_them(tmp_path):
    out, stderr = run_compare(tmp_path, INVENTORY)
    assert out["ours"] == out["theirs"]
    assert out["loaded"] == "FileInventory"
    assert [host[0] for host in out["ours"]["hosts"]] == ["node1", "node2", "node3", "node4"]
    assert [host[1] for host in out["ours"]["hosts"]] == [["eu", "prod"], ["eu", "edge", "prod"],
                                                        ["eu", "us", "prod"], ["us", "edge", "prod"]]
    data = out["data"]
    assert data["node1"]["role"] == "node1's"  # the host's own data first
    assert data["node2"]["role"] == "eu's"  # then its groups', the inventory's group_data over the cwd's
    assert data["node2"]["keep"] == "cwd"
    assert data["node3"]["role"] == "node3 in us"
    assert data["node4"]["role"] == "us's"
    assert data["node2"]["zone"] == "edge" and "hidden" not in data["node2"]  # __all__
    assert data["node3"]["zone"] == "us"  # the later group wins
    assert data["node1"]["zone"] == "all"
    assert data["node1"]["inventory_file"] == "prod"  # the file's name is a group of every host
    assert "os" not in data["node2"] and "p" not in data["node2"] and "x" not in data["node1"]
    assert data["node1"]["flannel_ip_masq"] is False
    assert 'Ignoring host group "bad"' in stderr


def test_an_inventory_with_its_own_all_group(tmp_path):
    out, _ = run_compare(tmp_path, """
        all = (["node1", ("node2", {"role": "node2's"})], {"role": "from all", "extra": 1})
        eu = [("node1", {"role": "node1 in eu"}), "node7"]  # node7 isn't in all: no host
        prod = ["node2"]
    """)
    assert out["ours"] == out["theirs"]
    assert [host[0] for host in out["ours"]["hosts"]] == ["node1", "node2"]
    assert out["data"]["node2"]["role"] == "node2's"
    assert out["data"]["node2"]["inventory_file"] == "prod"


def test_a_file_that_uses_pyinfra_is_read_by_pyinfra(tmp_path):
    group_data = {"group_data": {"all.py": "from pyinfra import inventory\nhosts_seen = len(inventory)\n"}}
    out, _ = run_compare(tmp_path, 'hosts = ["node1", "node2"]\n', group_data)
    assert out["ours"] is None and out["loaded"] == "Inventory"
    assert out["data"]["node1"]["hosts_seen"] == 2


def test_connector_hosts_are_read_by_pyinfra(tmp_path):
    out, _ = run_compare(tmp_path, 'hosts = ["@local"]\n', {})
    assert out["loaded"] == "Inventory"


@pytest.mark.parametrize("text,message", [
    ("hosts = [\n", "inventory/prod.py: file: line 1: "),
    ("hosts = [undefined_name]\n", "inventory/prod.py: file: NameError: name 'undefined_name' is not defined"),
])
def test_errors_name_the_file_as_before(tmp_path, text, message):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "prod.py").write_text(text)
    code = ("import sys\nfrom flannelette.controller import inventory\nfrom flannelette.model.config import ConfigError\n"
            "for load in (inventory.load, lambda p: inventory.load_with_pyinfra(p, '.')):\n"
            "    try:\n        load('inventory/prod.py')\n    except ConfigError as e:\n        print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    ours, theirs = result.stdout.splitlines()
    assert ours == theirs and ours.startswith(message)
