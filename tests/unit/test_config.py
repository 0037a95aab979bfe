"""net-conf.json and leases.json: flannel's defaults, and every error naming field and value."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelette.model import config
from flannelette.model.config import ConfigError, Lease

UDP = {"Type": "udp"}


def net_conf(**fields):
    return config.parse_net_conf({"Network": "10.244.0.0/16", "Backend": UDP, **fields})


# -- flannel's defaults ------------------------------------------------------------


@pytest.mark.parametrize(
    "network, subnet_len, subnet_min, subnet_max",
    [
        ("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0"),
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.1.0.0/22", 24, "10.1.1.0", "10.1.3.0"),
        ("10.1.0.0/23", 25, "10.1.0.128", "10.1.1.128"),
        ("10.1.0.0/24", 26, "10.1.0.64", "10.1.0.192"),
        ("10.1.0.0/28", 30, "10.1.0.4", "10.1.0.12"),
    ],
)
def test_defaults_follow_flannel(network, subnet_len, subnet_min, subnet_max):
    conf = config.parse_net_conf({"Network": network})
    assert conf.subnet_len == subnet_len
    assert conf.subnet_min == IPv4Address(subnet_min)
    assert conf.subnet_max == IPv4Address(subnet_max)
    assert conf.port == 8285
    assert conf.backend_type == "udp"


def test_a_full_flannel_file_keeps_its_meaning():
    conf = config.parse_net_conf(
        {
            "Network": "10.50.0.0/16",
            "SubnetLen": 26,
            "SubnetMin": "10.50.4.0",
            "SubnetMax": "10.50.8.192",
            "EnableIPv4": True,
            "EnableIPv6": False,
            "EnableNFTables": True,
            "Backend": {"Type": "udp", "Port": 7000},
        }
    )
    assert (conf.network, conf.subnet_len) == (IPv4Network("10.50.0.0/16"), 26)
    assert (conf.subnet_min, conf.subnet_max) == (IPv4Address("10.50.4.0"), IPv4Address("10.50.8.192"))
    assert conf.port == 7000 and conf.enable_nftables
    subnets = list(conf.subnets())
    assert subnets[0] == IPv4Network("10.50.4.0/26") and subnets[-1] == IPv4Network("10.50.8.192/26")
    assert len(subnets) == conf.subnet_count()


def test_keys_match_case_insensitively_as_in_flannel():
    conf = config.parse_net_conf({"network": "10.244.0.0/16", "subnetlen": 25, "backend": {"type": "udp", "port": 9}})
    assert (conf.network, conf.subnet_len, conf.port) == (IPv4Network("10.244.0.0/16"), 25, 9)


def test_no_backend_means_udp_as_in_flannel():
    assert config.parse_net_conf({"Network": "10.244.0.0/16"}).backend_type == "udp"


def test_subnet_len_zero_means_default_as_in_flannel():
    assert net_conf(SubnetLen=0).subnet_len == 24


def test_ipv6_keys_are_known_and_ignored_when_ipv6_is_off():
    conf = net_conf(IPv6Network="fc00::/48", EnableIPv6=False)
    assert conf.network == IPv4Network("10.244.0.0/16")


# -- errors: every one names the field and the value ---------------------------------------

BAD_NET_CONFS = [
    ("typo in a key", {"Netwrok": "10.244.0.0/16"}, "Netwrok", "did you mean Network"),
    ("missing Network", {"Backend": UDP}, "Network", "required"),
    ("Network not CIDR", {"Network": "10.244.0.0"}, "Network", "'10.244.0.0'"),
    ("Network garbage", {"Network": "ten.two/16"}, "Network", "'ten.two/16'"),
    ("Network host bits", {"Network": "10.244.1.0/16"}, "Network", "did you mean 10.244.0.0/16"),
    ("Network IPv6", {"Network": "fc00::/16"}, "Network", "'fc00::/16'"),
    ("Network a number", {"Network": 10}, "Network", "10"),
    ("Network too small", {"Network": "10.0.0.0/29"}, "Network", "'10.0.0.0/29'"),
    ("SubnetLen 33", {"Network": "10.244.0.0/16", "SubnetLen": 33}, "SubnetLen", "33"),
    ("SubnetLen 31", {"Network": "10.244.0.0/16", "SubnetLen": 31}, "SubnetLen", "31"),
    ("SubnetLen too short", {"Network": "10.244.0.0/16", "SubnetLen": 17}, "SubnetLen", "17"),
    ("SubnetLen negative", {"Network": "10.244.0.0/16", "SubnetLen": -4}, "SubnetLen", "-4"),
    ("SubnetLen string", {"Network": "10.244.0.0/16", "SubnetLen": "24"}, "SubnetLen", "'24'"),
    ("SubnetLen bool", {"Network": "10.244.0.0/16", "SubnetLen": True}, "SubnetLen", "True"),
    ("SubnetMin outside", {"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, "SubnetMin", "10.245.0.0"),
    ("SubnetMax outside", {"Network": "10.244.0.0/16", "SubnetMax": "10.0.0.0"}, "SubnetMax", "10.0.0.0"),
    ("SubnetMin misaligned", {"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.7"}, "SubnetMin", "10.244.1.7"),
    ("SubnetMax misaligned", {"Network": "10.244.0.0/16", "SubnetMax": "10.244.9.128"}, "SubnetMax", "10.244.9.128"),
    ("SubnetMin not an address", {"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0/24"}, "SubnetMin", "10.244.1.0/24"),
    (
        "reversed range",
        {"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.3.0"},
        "SubnetMin",
        "10.244.9.0",
    ),
    ("vxlan backend", {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}, "Backend.Type", "udp backend"),
    ("host-gw backend", {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}, "Backend.Type", "'host-gw'"),
    ("backend without type", {"Network": "10.244.0.0/16", "Backend": {"Port": 8285}}, "Backend.Type", "required"),
    ("port zero", {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 0}}, "Backend.Port", "0"),
    ("port too high", {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 65536}}, "Backend.Port", "65536"),
    ("port string", {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": "8285"}}, "Backend.Port", "'8285'"),
    ("backend typo", {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Prot": 1}}, "Backend.Prot", "did you mean Port"),
    ("wire unknown", {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Wire": "fast"}}, "Backend.Wire",
     "'fast' is not one of auto, flannel"),
    ("backend not an object", {"Network": "10.244.0.0/16", "Backend": "udp"}, "Backend", "'udp'"),
    ("IPv6 on", {"Network": "10.244.0.0/16", "EnableIPv6": True}, "EnableIPv6", "not supported by the udp backend"),
    ("IPv4 off", {"Network": "10.244.0.0/16", "EnableIPv4": False}, "EnableIPv4", "false"),
    ("EnableNFTables string", {"Network": "10.244.0.0/16", "EnableNFTables": "yes"}, "EnableNFTables", "'yes'"),
    ("several Networks", {"Network": "10.244.0.0/16", "Networks": ["10.1.0.0/16"]}, "Networks", "10.1.0.0/16"),
]


@pytest.mark.parametrize("doc, field, value", [case[1:] for case in BAD_NET_CONFS], ids=[c[0] for c in BAD_NET_CONFS])
def test_bad_net_conf_names_field_and_value(doc, field, value):
    with pytest.raises(ConfigError) as raised:
        config.parse_net_conf(doc, where="net-conf.json")
    lines = str(raised.value).splitlines()
    assert any(line.startswith(f"net-conf.json: {field}: ") and value in line for line in lines), lines


def test_all_errors_of_a_file_at_once():
    doc = {"Netwrok": "x", "SubnetLen": "24", "EnableIPv6": True, "Backend": {"Type": "vxlan", "Port": 0}}
    with pytest.raises(ConfigError) as raised:
        config.parse_net_conf(doc)
    fields = [p.field for p in raised.value.problems]
    for field in ("Netwrok", "Network", "SubnetLen", "EnableIPv6", "Backend.Type", "Backend.Port"):
        assert field in fields


def test_a_document_that_is_not_an_object():
    with pytest.raises(ConfigError, match=r"net-conf.json: file: must be a JSON object, not a list"):
        config.parse_net_conf([1, 2])


def test_unreadable_and_invalid_files_are_named(tmp_path):
    broken = tmp_path / "net-conf.json"
    broken.write_text('{"Network": "10.244.0.0/16",}')
    with pytest.raises(ConfigError, match=rf"{broken}: file: not valid JSON at line 1"):
        config.load_net_conf(str(broken))
    with pytest.raises(ConfigError, match=r"missing.json: file: can't be read"):
        config.load_net_conf(str(tmp_path / "missing.json"))


# -- leases.json --------------------------------------------------------------------

LEASES = {
    "leases": [
        {"host": "node1", "subnet": "10.244.1.0/24", "public_ip": "192.168.56.11"},
        {"host": "node2", "subnet": "10.244.2.0/24", "public_ip": "192.168.56.12"},
    ]
}


def test_leases_round_trip(tmp_path):
    path = tmp_path / "leases.json"
    path.write_text(json.dumps(LEASES))
    leases = config.load_leases(str(path), net_conf())
    assert leases[0] == Lease("node1", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.56.11"))
    assert leases[0].gateway == IPv4Address("10.244.1.1")
    assert json.loads(config.render_leases(leases)) == LEASES


def _with(index, **fields):
    doc = json.loads(json.dumps(LEASES))
    doc["leases"][index].update(fields)
    return doc


BAD_LEASES = [
    ("no leases key", {"lease": []}, "lease", "unknown key"),
    ("subnet not CIDR", _with(0, subnet="10.244.1.0"), "leases[0].subnet", "'10.244.1.0'"),
    ("subnet wrong length", _with(1, subnet="10.244.2.0/25"), "leases[1].subnet", "10.244.2.0/25"),
    ("subnet outside network", _with(1, subnet="10.9.2.0/24"), "leases[1].subnet", "10.9.2.0/24"),
    ("subnet is the reserved first one", _with(0, subnet="10.244.0.0/24"), "leases[0].subnet", "10.244.0.0/24"),
    ("public ip garbage", _with(0, public_ip="node1"), "leases[0].public_ip", "'node1'"),
    ("missing host", {"leases": [{"subnet": "10.244.1.0/24", "public_ip": "1.2.3.4"}]}, "leases[0].host", "required"),
    ("duplicate subnet", _with(1, subnet="10.244.1.0/24"), "subnet", "10.244.1.0/24 is held by both node1 and node2"),
    ("duplicate public ip", _with(1, public_ip="192.168.56.11"), "public_ip", "192.168.56.11"),
    ("duplicate host", _with(1, host="node1"), "host", "node1"),
    ("wire unknown", _with(1, wire="vxlan"), "leases[1].wire", "'vxlan' is not one of flannel, flannelette"),
    ("wire not a string", _with(0, wire=1), "leases[0].wire", "1 is a number"),
]


@pytest.mark.parametrize("doc, field, value", [c[1:] for c in BAD_LEASES], ids=[c[0] for c in BAD_LEASES])
def test_bad_leases_name_field_and_value(doc, field, value):
    with pytest.raises(ConfigError) as raised:
        config.parse_leases(doc, net_conf(), where="leases.json")
    lines = str(raised.value).splitlines()
    assert any(line.startswith(f"leases.json: {field}: ") and value in line for line in lines), lines


def test_a_lease_marks_a_flanneld_host_and_the_default_is_left_out():
    doc = _with(1, wire="flannel")
    leases = config.parse_leases(doc, net_conf())
    assert [lease.wire for lease in leases] == ["flannelette", "flannel"]
    assert json.loads(config.render_leases(leases)) == doc
    assert json.loads(config.render_leases(config.parse_leases(_with(0, wire="flannelette"), net_conf()))) == LEASES


def test_backend_wire_defaults_to_auto_and_can_force_flannel():
    assert net_conf().wire == "auto"
    assert net_conf(Backend={"Type": "udp", "wire": "flannel"}).wire == "flannel"
