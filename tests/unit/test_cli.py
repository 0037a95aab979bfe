"""`flannelette validate` and `flannelette plan` on inventory files, as people and pipelines run them."""

import json
import textwrap

import pytest

from flannelette.cli import main


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


def test_validate_asks_for_allocations_then_passes(fleet, capsys):
    inv = fleet(THREE)
    assert main(["validate", inv]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"node{i}: subnet: has no allocation in inventory/prod.leases.json: "
        f"run `flannelette plan {inv} --write` to allocate one"
        for i in (2, 3)
    ]
    assert main(["plan", inv, "--write"]) == 0
    assert main(["validate", inv]) == 0
    assert capsys.readouterr().out.endswith(f"{inv}: valid\n")


def test_plan_json_is_exactly_leases_json(fleet, capsys):
    inv = fleet(THREE)
    main(["plan", inv, "--write"])
    capsys.readouterr()
    assert main(["plan", inv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "leases": [
            {"host": "node1", "subnet": "10.244.1.0/24", "public_ip": "192.168.56.11"},
            {"host": "node2", "subnet": "10.244.2.0/24", "public_ip": "192.168.56.12"},
            {"host": "node3", "subnet": "10.244.3.0/24", "public_ip": "192.168.56.13"},
        ]
    }
    assert json.loads(open("inventory/prod.leases.json").read()) == doc


def test_plan_table_reads_like_a_table(fleet, capsys):
    inv = fleet(THREE)
    main(["plan", inv, "--write"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Network 10.244.0.0/16, /24 per host, udp port 8285"
    assert out[2].split() == ["HOST", "PUBLIC", "IP", "SUBNET", "GATEWAY", "MTU", "SOURCE"]
    assert out[4].split()[:5] == ["node2", "(new)", "192.168.56.12", "10.244.2.0/24", "10.244.2.1"]


def test_adding_and_removing_hosts_keeps_every_other_subnet(fleet, capsys):
    inv = fleet(THREE)
    main(["plan", inv, "--write"])
    fleet("""
        hosts = [
            ("node1", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.1.0/24"}),
            ("node3", {"ssh_hostname": "192.168.56.13"}),
            ("node4", {"ssh_hostname": "192.168.56.14"}),
        ]
    """)
    assert main(["plan", inv, "--write"]) == 0
    capsys.readouterr()
    main(["plan", inv, "--json"])
    subnets = {lease["host"]: lease["subnet"] for lease in json.loads(capsys.readouterr().out)["leases"]}
    assert subnets == {"node1": "10.244.1.0/24", "node3": "10.244.3.0/24", "node4": "10.244.4.0/24"}


def test_group_data_precedence_is_pyinfras(fleet, tmp_path, capsys):
    (tmp_path / "inventory" / "group_data" / "eu.py").write_text(
        'flannel_net_conf = {"Network": "10.50.0.0/16"}\n'
    )
    inv = fleet("""
        eu = [("node1", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.50.7.0/24"})]
    """)
    assert main(["plan", inv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["leases"][0]["subnet"] == "10.50.7.0/24"


def test_net_conf_from_a_file_path(fleet, tmp_path, capsys):
    (tmp_path / "net-conf.json").write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    (tmp_path / "inventory" / "group_data" / "all.py").write_text('flannel_net_conf = "net-conf.json"\n')
    inv = fleet(THREE)
    assert main(["validate", inv]) == 1
    assert capsys.readouterr().err.startswith("net-conf.json: Backend.Type: 'vxlan' is not supported")


def test_missing_inventory_and_usage_errors(fleet, capsys):
    assert main(["validate", "inventory/nope.py"]) == 1
    assert capsys.readouterr().err == "inventory/nope.py: file: no such inventory file\n"
    assert main(["validate"]) == 2
    assert main(["frobnicate"]) == 2
    assert main([]) == 2


def test_a_broken_inventory_file_is_named(fleet, capsys):
    inv = fleet("hosts = [\n")
    assert main(["validate", inv]) == 1
    assert capsys.readouterr().err.startswith(f"{inv}: file: line 1: ")
    inv = fleet("hosts = [undefined_name]\n")
    assert main(["validate", inv]) == 1
    assert capsys.readouterr().err == f"{inv}: file: NameError: name 'undefined_name' is not defined\n"


def test_help_explains_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for words in ("validate", "plan", "run", "status", "pyinfra inventory/prod.py deploys/overlay.py"):
        assert words in out


def test_the_example_inventory_is_valid(monkeypatch, capsys):
    import pathlib

    monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[2])
    assert main(["validate", "inventory/prod.py"]) == 0
    assert main(["plan", "inventory/prod.py", "--json"]) == 0
