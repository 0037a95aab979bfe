"""The lab's address and name plan."""

import pytest

from lab import LabError
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
