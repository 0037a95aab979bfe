"""The files the deploy puts on hosts, compared with golden copies."""

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannelette.deploy import render
from flannelette.model.config import Lease, load_leases, parse_net_conf

GOLDEN = Path(__file__).parent / "golden" / "deploy"
NET_CONF = parse_net_conf({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 8285}})
LEASES = [
    Lease("node1", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.56.11")),
    Lease("node2", IPv4Network("10.244.2.0/24"), IPv4Address("192.168.56.12")),
]


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


@pytest.mark.parametrize(
    "name, text",
    [
        ("flannelette.service", lambda: render.render_unit("/usr/bin/python3", LEASES[0].public_ip, "eth1", True)),
        ("flannelette-no-masq.service", lambda: render.render_unit("/usr/bin/python3", LEASES[1].public_ip, None, False)),
        ("10-flannelette.conflist", lambda: render.render_conflist(LEASES[0], 1472)),
        ("90-flannelette.conf", render.render_sysctl),
        ("net-conf.json", lambda: render.render_net_conf(NET_CONF)),
        ("leases.json", lambda: render.render_lease_table(LEASES)),
    ],
)
def test_rendered_files_match_golden_copies(name, text):
    assert text() == golden(name)


def test_unit_runs_the_runtime_command_line_of_the_contract():
    unit = render.render_unit("/usr/bin/python3", LEASES[0].public_ip, "eth1", True)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:] == [
        "/usr/local/lib/flannelette/flannelette.pyz", "run",
        "--net-conf", "/etc/flannelette/net-conf.json", "--leases", "/etc/flannelette/leases.json",
        "--public-ip", "192.168.56.11", "--healthz", "127.0.0.1:8286", "--iface", "eth1", "--ip-masq",
    ]


def test_unit_is_a_notify_service_with_two_capabilities_and_a_read_only_system():
    settings = {}
    for line in golden("flannelette.service").splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "always"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["CapabilityBoundingSet"] == "CAP_NET_ADMIN CAP_NET_RAW"
    assert settings["DeviceAllow"] == "/dev/net/tun rw"
    assert settings["DevicePolicy"] == "closed"
    assert settings["ProtectSystem"] == "strict"
    assert settings["RuntimeDirectory"] == "flannel"  # /run/flannel/subnet.env
    for option in ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "ProtectKernelModules", "RestrictSUIDSGID"):
        assert settings[option] == "yes", option


def test_conflist_puts_containers_on_cni0_in_the_hosts_subnet_minus_the_gateway():
    conflist = json.loads(render.render_conflist(LEASES[1], 1450))
    bridge, portmap = conflist["plugins"]
    assert (bridge["type"], bridge["bridge"], bridge["mtu"], bridge["ipMasq"]) == ("bridge", "cni0", 1450, False)
    assert bridge["isDefaultGateway"] is True
    (range_,), = bridge["ipam"]["ranges"]
    assert bridge["ipam"]["type"] == "host-local"
    assert range_ == {"subnet": "10.244.2.0/24", "gateway": "10.244.2.1",
                      "rangeStart": "10.244.2.2", "rangeEnd": "10.244.2.254"}
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_conflist_range_on_a_small_subnet():
    lease = Lease("node1", IPv4Network("10.9.0.4/30"), IPv4Address("192.168.56.11"))
    range_ = json.loads(render.render_conflist(lease, 1472))["plugins"][0]["ipam"]["ranges"][0][0]
    assert (range_["gateway"], range_["rangeStart"], range_["rangeEnd"]) == ("10.9.0.5", "10.9.0.6", "10.9.0.6")


@pytest.mark.parametrize("supported, written", [
    (["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"], "1.0.0"),  # Debian 12's plugins
    (["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0"], "0.4.0"),  # Debian 11's, which refuse 1.0.0
    (None, "1.0.0"),  # no plugins on the host yet
])
def test_conflist_speaks_the_newest_cni_version_the_hosts_plugins_take(supported, written):
    lease = LEASES[0]
    version = render.cni_version(supported)
    assert version == written
    assert json.loads(render.render_conflist(lease, 1472, cni_version=version))["cniVersion"] == written


def test_written_files_read_back_as_the_runtime_reads_them(tmp_path):
    (tmp_path / "net-conf.json").write_text(render.render_net_conf(NET_CONF))
    (tmp_path / "leases.json").write_text(render.render_lease_table(LEASES))
    conf = parse_net_conf(json.loads((tmp_path / "net-conf.json").read_text()))
    assert conf == NET_CONF
    assert load_leases(str(tmp_path / "leases.json"), conf) == LEASES


def test_overlay_mtu_leaves_room_for_udp_and_ipv4_headers():
    assert render.overlay_mtu(1500) == 1472
