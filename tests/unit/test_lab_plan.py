"""The lab's address and name plan."""

import pytest

from lab import LabError
from lab import network
from lab.plan import make_plan


def test_default_plan_is_the_vagrantfile_network():
    plan = make_plan()
    assert plan.bridge == "lab-br"
    assert plan.gateway == "192.168.56.1/24"
    assert [(h.name, h.address) for h in plan.hosts(3)] == [
        ("node1", "192.168.56.11"), ("node2", "192.168.56.12"),
        ("node3", "192.168.56.13")]


def test_host_names_carry_the_lab_name():
    host = make_plan("e2e", "192.168.57.0/24").host(2)
    assert (host.netns, host.veth, host.cidr) == (
        "e2e-node2", "e2e-n2", "192.168.57.12/24")


def test_interface_names_fit_the_kernel_limit():
    plan = make_plan("abcdefgh", "10.0.0.0/16")
    names = [plan.bridge] + [h.veth for h in plan.hosts(999)]
    assert max(len(n) for n in names) <= 15


@pytest.mark.parametrize("count", [0, 245])
def test_host_count_must_fit_the_network(count):
    with pytest.raises(LabError, match=f"--hosts {count}: must be between 1 and 244"):
        make_plan().hosts(count)


def test_every_error_at_once():
    with pytest.raises(LabError) as err:
        make_plan("Lab-1", "192.168.56.0/29")
    assert str(err.value).splitlines() == [
        "lab name 'Lab-1': must be 1-8 lowercase letters or digits, starting "
        "with a letter (it prefixes interface names)",
        "network 192.168.56.0/29: too small, use a /28 or larger",
    ]


def test_not_a_network():
    with pytest.raises(LabError, match="network '192.168.56.1/24': not an IPv4 network"):
        make_plan(network="192.168.56.1/24")


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
5: deploy-br    inet 192.168.59.1/24 brd 192.168.59.255 scope global deploy-br\\       valid_lft forever
7: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\\       valid_lft forever
"""


def test_addresses_of_other_labs_in_the_network_are_found():
    assert network.addresses_in(make_plan(network="192.168.59.0/24").network, IP_ADDR) == [
        ("deploy-br", "192.168.59.1/24")]
    assert network.addresses_in(make_plan().network, IP_ADDR) == []
    assert network.addresses_in(make_plan(network="10.0.0.0/16").network, IP_ADDR) == [
        ("eth0", "10.0.2.15/24")]
