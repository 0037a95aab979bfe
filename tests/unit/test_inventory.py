"""Inventory data: every host's flannel_* keys checked, every error naming host, field and value."""

import json

import pytest
from pyinfra.api import Inventory

from flannelette.controller import inventory
from flannelette.model.config import ConfigError

NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}


def make_inventory(hosts: dict, **all_data):
    all_data.setdefault("flannel_net_conf", NET_CONF)
    return Inventory(([(name, data) for name, data in hosts.items()], all_data))


def problems_of(inv):
    with pytest.raises(ConfigError) as raised:
        inventory.read_hosts(inv)
    return str(raised.value).splitlines()


def test_public_ip_from_flannel_public_ip_ssh_hostname_or_name():
    inv = make_inventory(
        {
            "node1": {"flannel_public_ip": "192.168.56.11", "ssh_hostname": "10.0.0.1"},
            "node2": {"ssh_hostname": "192.168.56.12"},
            "192.168.56.13": {},
        }
    )
    conf, hosts = inventory.read_hosts(inv)
    assert [str(h.public_ip) for h in hosts] == ["192.168.56.11", "192.168.56.12", "192.168.56.13"]
    assert str(conf.network) == "10.244.0.0/16"


def test_host_keys_are_read():
    inv = make_inventory({"node1": {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.7.0/24",
                                    "flannel_iface": "eth1", "flannel_ip_masq": False, "flannel_wire": "flannel"}})
    host = inventory.read_hosts(inv)[1][0]
    assert (str(host.subnet), host.iface, host.ip_masq, host.wire) == ("10.244.7.0/24", "eth1", False, "flannel")


def test_other_deploys_keys_are_left_alone():
    inv = make_inventory({"node1": {"ssh_hostname": "192.168.56.11", "nginx_port": 80, "flannelish": 1}})
    assert inventory.read_hosts(inv)[1][0].name == "node1"


BAD_HOSTS = [
    ("public ip typo key", {"ssh_hostname": "192.168.56.11", "flannel_pubic_ip": "1.2.3.4"},
     "flannel_pubic_ip", "did you mean flannel_public_ip"),
    ("public ip not an address", {"flannel_public_ip": "192.168.56"}, "flannel_public_ip", "'192.168.56'"),
    ("public ip is a list", {"flannel_public_ip": ["192.168.56.11"]}, "flannel_public_ip", "['192.168.56.11']"),
    ("no public ip and a DNS name", {"ssh_hostname": "node1.example.net"}, "flannel_public_ip",
     "'node1.example.net' is not an IPv4 address: set flannel_public_ip"),
    ("public ip IPv6", {"flannel_public_ip": "fd00::1"}, "flannel_public_ip", "'fd00::1'"),
    ("subnet garbage", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.1/24"}, "flannel_subnet", "'10.244.1/24'"),
    ("subnet host bits", {"ssh_hostname": "192.168.56.11", "flannel_subnet": "10.244.1.1/24"}, "flannel_subnet", "10.244.1.1/24"),
    ("subnet a number", {"ssh_hostname": "192.168.56.11", "flannel_subnet": 24}, "flannel_subnet", "24"),
    ("iface too long", {"ssh_hostname": "192.168.56.11", "flannel_iface": "enp0s31f6-uplink"}, "flannel_iface", "'enp0s31f6-uplink'"),
    ("iface with slash", {"ssh_hostname": "192.168.56.11", "flannel_iface": "eth/1"}, "flannel_iface", "'eth/1'"),
    ("iface empty", {"ssh_hostname": "192.168.56.11", "flannel_iface": ""}, "flannel_iface", "empty"),
    ("ip masq a string", {"ssh_hostname": "192.168.56.11", "flannel_ip_masq": "yes"}, "flannel_ip_masq", "'yes'"),
    ("wire unknown", {"ssh_hostname": "192.168.56.11", "flannel_wire": "fast"}, "flannel_wire",
     "'fast' is not one of flannel, flannelette"),
    ("net conf a number", {"ssh_hostname": "192.168.56.11", "flannel_net_conf": 5}, "flannel_net_conf", "5"),
]


@pytest.mark.parametrize("data, field, value", [c[1:] for c in BAD_HOSTS], ids=[c[0] for c in BAD_HOSTS])
def test_bad_host_data_names_host_field_and_value(data, field, value):
    lines = problems_of(make_inventory({"node1": data}))
    assert any(line.startswith(f"node1: {field}: ") and value in line for line in lines), lines


def test_every_host_is_checked_before_failing():
    inv = make_inventory({"node1": {"flannel_public_ip": "x"}, "node2": {"flannel_public_ip": "y"}, "node3": {"ssh_hostname": "192.168.56.13"}})
    lines = problems_of(inv)
    assert [line.split(":")[0] for line in lines] == ["node1", "node2"]


def test_net_conf_errors_name_the_data_key():
    lines = problems_of(make_inventory({"node1": {"ssh_hostname": "192.168.56.11"}}, flannel_net_conf={"Network": "10.244.0.0/33"}))
    assert lines == ["flannel_net_conf: Network: '10.244.0.0/33' is not an IPv4 network in CIDR form (like 10.244.0.0/16)"]


def test_net_conf_from_a_file_is_named_by_its_path(tmp_path):
    path = tmp_path / "net-conf.json"
    path.write_text(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}))
    lines = problems_of(make_inventory({"node1": {"ssh_hostname": "192.168.56.11"}}, flannel_net_conf=str(path)))
    assert len(lines) == 1 and lines[0].startswith(f"{path}: Backend.Type: 'vxlan'")


def test_hosts_disagreeing_on_the_network():
    inv = make_inventory({
        "node1": {"ssh_hostname": "192.168.56.11"},
        "node2": {"ssh_hostname": "192.168.56.12", "flannel_net_conf": {"Network": "10.9.0.0/16"}},
    })
    (line,) = problems_of(inv)
    assert line.startswith("inventory: flannel_net_conf: hosts disagree on the network (node1: 10.244.0.0/16/24; node2: 10.9.0.0/16/24)")


def test_an_empty_inventory():
    assert problems_of(Inventory(([], {}))) == ["inventory: hosts: the inventory has no hosts"]


def test_allocation_path_is_beside_the_inventory():
    assert inventory.allocation_path("inventory/prod.py") == "inventory/prod.leases.json"
    assert inventory.allocation_path("/srv/fleet/eu.py") == "/srv/fleet/eu.leases.json"


def test_bad_allocation_file_is_named(tmp_path):
    path = tmp_path / "prod.leases.json"
    path.write_text(json.dumps({"leases": [{"host": "node1", "subnet": "10.244.1.0/24", "public_ip": "nope"}]}))
    with pytest.raises(ConfigError) as raised:
        inventory.read_allocations(str(path))
    assert str(raised.value) == f"{path}: leases[0].public_ip: 'nope' is not an IPv4 address"


def test_every_flannel_key_has_a_default_and_the_deploy_takes_them():
    from flannelette import schemas
    from flannelette.deploy import tasks

    assert set(inventory.HOST_DEFAULTS) == set(schemas.load("host"))
    assert tasks.install._inner.deploy_data is inventory.HOST_DEFAULTS


def test_an_inventory_with_no_flannel_data_gets_the_default_network():
    inv = Inventory(([("node1", {"ssh_hostname": "192.168.56.11"})], {}))
    conf, hosts = inventory.read_hosts(inv)
    assert (str(conf.network), conf.subnet_len, conf.port) == ("10.244.0.0/16", 24, 8285)
    assert (hosts[0].subnet, hosts[0].iface, hosts[0].ip_masq) == (None, None, True)
