"""`flannelette validate` and `flannelette plan` on inventory files, as people and pipelines run them.

Each call is a real `flannelette` process: loading an inventory may import
pyinfra's CLI, which monkey-patches the interpreter for gevent, and the
runtime's threads must never meet that in the test process.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def flannelette(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "flannelette", *argv], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """An inventory folder like the example one, with the working directory at its parent."""
    (tmp_path / "inventory" / "group_data").mkdir(parents=True)
    (tmp_path / "inventory" / "group_data" / "all.py").write_text(
        'flannel_net_conf = {"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}\n'
    )
    monkeypatch.chdir(tmp_path)

    def write(hosts: str, name="prod.py"):
        path = tmp_path / "inventory" / name
        path.write_text(textwrap.dedent(hosts))
        return f"inventory/{name}"

    return write


THREE = """
    hosts = [
        ("node1", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.1.0/24"}),
        ("node2", {"ssh_hostname": "192.168.56.12"}),
        ("node3", {"ssh_hostname": "192.168.56.13"}),
    ]
"""


def test_validate_asks_for_allocations_then_passes(fleet):
    inv = fleet(THREE)
    result = flannelette("validate", inv)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"node{i}: subnet: has no allocation in inventory/prod.leases.json: "
        f"run `flannelette plan {inv} --write` to allocate one"
        for i in (2, 3)
    ]
    assert flannelette("plan", inv, "--write").returncode == 0
    result = flannelette("validate", inv)
    assert (result.returncode, result.stdout) == (0, f"{inv}: valid\n")


def test_plan_json_is_exactly_leases_json(fleet):
    inv = fleet(THREE)
    flannelette("plan", inv, "--write")
    result = flannelette("plan", inv, "--json")
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert doc == {
        "leases": [
            {"host": "node1", "subnet": "10.244.1.0/24", "public_ip": "192.168.56.11"},
            {"host": "node2", "subnet": "10.244.2.0/24", "public_ip": "192.168.56.12"},
            {"host": "node3", "subnet": "10.244.3.0/24", "public_ip": "192.168.56.13"},
        ]
    }
    assert json.loads(open("inventory/prod.leases.json").read()) == doc


def test_plan_table_reads_like_a_table(fleet):
    inv = fleet(THREE)
    result = flannelette("plan", inv, "--write")
    assert result.stderr == "wrote inventory/prod.leases.json (2 new)\n"
    out = result.stdout.splitlines()
    assert out[0] == "Network 10.244.0.0/16, /24 per host, udp port 8285"
    assert out[2].split() == ["HOST", "PUBLIC", "IP", "SUBNET", "GATEWAY", "MTU", "SOURCE"]
    assert out[4].split()[:5] == ["node2", "(new)", "192.168.56.12", "10.244.2.0/24", "10.244.2.1"]


def test_adding_and_removing_hosts_keeps_every_other_subnet(fleet):
    inv = fleet(THREE)
    flannelette("plan", inv, "--write")
    fleet("""
        hosts = [
            ("node1", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.1.0/24"}),
            ("node3", {"ssh_hostname": "192.168.56.13"}),
            ("node4", {"ssh_hostname": "192.168.56.14"}),
        ]
    """)
    assert flannelette("plan", inv, "--write").returncode == 0
    leases = json.loads(flannelette("plan", inv, "--json").stdout)["leases"]
    subnets = {lease["host"]: lease["subnet"] for lease in leases}
    assert subnets == {"node1": "10.244.1.0/24", "node3": "10.244.3.0/24", "node4": "10.244.4.0/24"}


def test_group_data_precedence_is_pyinfras(fleet, tmp_path):
    (tmp_path / "inventory" / "group_data" / "eu.py").write_text(
        'flannel_net_conf = {"Network": "10.50.0.0/16"}\n'
    )
    inv = fleet("""
        eu = [("node1", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.50.7.0/24"})]
    """)
    result = flannelette("plan", inv, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["leases"][0]["subnet"] == "10.50.7.0/24"


def test_net_conf_from_a_file_path(fleet, tmp_path):
    (tmp_path / "net-conf.json").write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    (tmp_path / "inventory" / "group_data" / "all.py").write_text('flannel_net_conf = "net-conf.json"\n')
    inv = fleet(THREE)
    result = flannelette("validate", inv)
    assert result.returncode == 1
    assert result.stderr.startswith("net-conf.json: Backend.Type: 'vxlan' is not supported")


def test_missing_inventory_and_usage_errors(fleet):
    result = flannelette("validate", "inventory/nope.py")
    assert (result.returncode, result.stderr) == (1, "inventory/nope.py: file: no such inventory file\n")
    for argv in (["validate"], ["frobnicate"], []):
        assert flannelette(*argv).returncode == 2


def test_a_broken_inventory_file_is_named(fleet):
    inv = fleet("hosts = [\n")
    result = flannelette("validate", inv)
    assert result.returncode == 1 and result.stderr.startswith(f"{inv}: file: line 1: ")
    inv = fleet("hosts = [undefined_name]\n")
    result = flannelette("validate", inv)
    assert (result.returncode, result.stderr) == (1, f"{inv}: file: NameError: name 'undefined_name' is not defined\n")


def test_help_explains_the_commands():
    result = flannelette("--help")
    assert result.returncode == 0
    out = result.stdout
    for words in ("validate", "plan", "run", "status", "pyinfra inventory/prod.py deploys/overlay.py"):
        assert words in out


def test_the_example_inventory_is_valid():
    assert flannelette("validate", "inventory/prod.py", cwd=ROOT).returncode == 0
    result = flannelette("plan", "inventory/prod.py", "--json", cwd=ROOT)
    assert result.returncode == 0
    assert [lease["host"] for lease in json.loads(result.stdout)["leases"]] == ["node1", "node2", "node3.example.net"]
