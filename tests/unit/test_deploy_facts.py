"""The deploy's fact parsers, on output captured from Debian hosts."""

import pytest

from flannelette.deploy import facts

LINKS_OUTPUT = """\
mtu eth0 1500
mtu eth1 9000
mtu lo 65536
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth0\\       valid_lft 86300sec preferred_lft 86300sec
3: eth1    inet 192.168.56.11/24 brd 192.168.56.255 scope global eth1\\       valid_lft forever preferred_lft forever
""".splitlines()


def test_python3_path_and_version():
    assert facts.parse_python3(["/usr/bin/python3", "3.11.2"]) == {"path": "/usr/bin/python3", "version": (3, 11, 2)}


def test_python3_missing_or_unrunnable():
    assert facts.parse_python3([]) is None
    assert facts.parse_python3(["/usr/bin/python3"]) == {"path": "/usr/bin/python3", "version": None}


def test_links_mtu_and_addresses():
    links = facts.parse_links(LINKS_OUTPUT)
    assert links["mtu"] == {"eth0": 1500, "eth1": 9000, "lo": 65536}
    assert links["addresses"]["192.168.56.11"] == "eth1"


def test_veth_names_lose_their_peer_suffix():
    links = facts.parse_links(["5: eth0@if67    inet 192.168.71.11/24 scope global eth0"])
    assert links["addresses"] == {"192.168.71.11": "eth0"}


def test_public_link_is_flannel_iface_or_the_one_holding_the_public_ip():
    links = facts.parse_links(LINKS_OUTPUT)
    assert facts.public_link(links, None, "192.168.56.11") == ("eth1", 9000)
    assert facts.public_link(links, "eth0", "192.168.56.11") == ("eth0", 1500)


@pytest.mark.parametrize(
    "iface, public_ip, message",
    [
        (None, "192.168.56.99", "no interface holds flannel_public_ip 192.168.56.99: set flannel_iface"),
        ("eth7", "192.168.56.11", "flannel_iface 'eth7': no such interface (interfaces: eth0, eth1, lo)"),
    ],
)
def test_public_link_errors_say_what_to_set(iface, public_ip, message):
    with pytest.raises(ValueError) as raised:
        facts.public_link(facts.parse_links(LINKS_OUTPUT), iface, public_ip)
    assert message in str(raised.value)


def test_directories_emptied_from_the_deepest_up():
    entries = facts.parse_directory_entries(
        [">>> /etc/cni/net.d", ">>> /etc/cni", "net.d", ">>> /var/lib/cni", "networks", "results"]
    )
    assert entries == {"/etc/cni/net.d": [], "/etc/cni": ["net.d"], "/var/lib/cni": ["networks", "results"]}
    paths = ["/etc/cni/net.d", "/etc/cni", "/var/lib/cni/networks", "/var/lib/cni"]
    assert facts.removable_directories(entries, paths) == ["/etc/cni/net.d", "/etc/cni"]


def test_file_states_give_mode_and_hash_of_each_file():
    lines = ["755 3b1f8c2e0a9d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b  - /usr/local/lib/flannelette/flannelette.pyz",
             "644 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  - /etc/flannelette/leases.json",
             "stat: cannot statx '/x': No such file or directory"]
    states = facts.parse_file_states(lines)
    assert states == {
        "/usr/local/lib/flannelette/flannelette.pyz":
            {"mode": 755, "sha256": "3b1f8c2e0a9d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b"},
        "/etc/flannelette/leases.json":
            {"mode": 644, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    }
    command = facts.FileStates().command(["/etc/flannelette/leases.json", "/etc/my file"])
    assert "sha256sum" in command and "/etc/flannelette/leases.json '/etc/my file';" in command


@pytest.mark.parametrize("output, versions", [
    # Debian 12's containernetworking-plugins 1.1
    (['{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}'],
     ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]),
    # Debian 11's 0.9
    (['{"cniVersion":"0.4.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0"]}'],
     ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0"]),
    ([], None),  # no plugins
    (["CNI bridge plugin v1.1.1"], None),
])
def test_cni_versions_from_the_bridge_plugins_version_answer(output, versions):
    assert facts.parse_cni_versions(output) == versions
