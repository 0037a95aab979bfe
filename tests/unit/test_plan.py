"""The static subnet plan: no overlaps, inside the range, and stable as hosts come and go."""

from ipaddress import IPv4Address, IPv4Network
from itertools import islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannelette.model import config
from flannelette.model.config import ConfigError, Lease
from flannelette.model.plan import HostSpec, make_plan

NET = config.parse_net_conf({"Network": "10.244.0.0/16"})


def host(i, subnet=None):
    return HostSpec(f"node{i}", IPv4Address(f"192.168.56.{i}"), IPv4Network(subnet) if subnet else None)


def test_static_subnets_are_kept_and_others_allocated_lowest_first():
    plan = make_plan(NET, [host(1, "10.244.1.0/24"), host(2), host(3)], allocate=True)
    assert [str(lease.subnet) for lease in plan.leases] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert plan.new == ("node2", "node3")


def test_a_flanneld_host_is_marked_on_its_lease():
    flanneld = HostSpec("node2", IPv4Address("192.168.56.2"), wire="flannel")
    plan = make_plan(NET, [host(1), flanneld], allocate=True)
    assert [lease.wire for lease in plan.leases] == ["flannelette", "flannel"]


def test_allocations_are_kept():
    allocations = [Lease("node2", IPv4Network("10.244.9.0/24"), IPv4Address("192.168.56.2"))]
    plan = make_plan(NET, [host(1), host(2)], allocations, allocate=True)
    assert [str(lease.subnet) for lease in plan.leases] == ["10.244.1.0/24", "10.244.9.0/24"]
    assert plan.new == ("node1",)


def test_a_plan_that_needs_an_allocation_says_which_command_makes_it():
    with pytest.raises(ConfigError) as raised:
        make_plan(NET, [host(1), host(2, "10.244.5.0/24")], [], "inventory/prod.leases.json",
                  allocate_hint="run `flannelette plan inventory/prod.py --write` to allocate one")
    assert str(raised.value) == (
        "node1: subnet: has no allocation in inventory/prod.leases.json: "
        "run `flannelette plan inventory/prod.py --write` to allocate one"
    )


BAD_PLANS = [
    ("static outside the range", [host(1, "10.244.0.0/24")], "node1: flannel_subnet: 10.244.0.0/24 is outside SubnetMin..SubnetMax"),
    ("static outside the network", [host(1, "10.1.0.0/24")], "node1: flannel_subnet: 10.1.0.0/24 is outside"),
    ("static of the wrong length", [host(1, "10.244.4.0/23")], "node1: flannel_subnet: 10.244.4.0/23 is a /23, but SubnetLen is 24"),
    ("static twice", [host(1, "10.244.4.0/24"), host(2, "10.244.4.0/24")], "node2: flannel_subnet: 10.244.4.0/24 is also node1's subnet"),
    ("public ip twice", [host(1), HostSpec("node2", IPv4Address("192.168.56.1"))],
     "node2: flannel_public_ip: 192.168.56.1 is also node1's public IP"),
]


@pytest.mark.parametrize("hosts, message", [c[1:] for c in BAD_PLANS], ids=[c[0] for c in BAD_PLANS])
def test_bad_plans(hosts, message):
    with pytest.raises(ConfigError) as raised:
        make_plan(NET, hosts, allocate=True)
    assert any(line.startswith(message) for line in str(raised.value).splitlines()), str(raised.value)


def test_more_hosts_than_subnets_gives_both_numbers():
    small = config.parse_net_conf({"Network": "10.1.0.0/24"})  # four /26, three usable
    with pytest.raises(ConfigError) as raised:
        make_plan(small, [host(i) for i in range(1, 5)], allocate=True)
    assert str(raised.value).startswith("inventory: hosts: 4 hosts, but SubnetMin..SubnetMax (10.1.0.64..10.1.0.192) holds only 3 subnets of /26")


def test_an_allocation_taken_by_a_static_subnet_is_not_silently_moved():
    allocations = [Lease("node2", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.56.2"))]
    with pytest.raises(ConfigError) as raised:
        make_plan(NET, [host(1, "10.244.1.0/24"), host(2)], allocations, "prod.leases.json", allocate=True)
    assert str(raised.value).startswith(
        "node2: subnet: its allocation in prod.leases.json can't be kept: 10.244.1.0/24 is now node1's static flannel_subnet"
    )


def test_an_allocation_outside_a_changed_network_is_reported():
    allocations = [Lease("node1", IPv4Network("10.9.1.0/24"), IPv4Address("192.168.56.1"))]
    with pytest.raises(ConfigError, match=r"node1: subnet: its allocation in a.json can't be kept: 10.9.1.0/24 is outside"):
        make_plan(NET, [host(1)], allocations, "a.json", allocate=True)


# -- properties ---------------------------------------------------------------------------


@st.composite
def networks(draw):
    prefix = draw(st.integers(min_value=8, max_value=26))
    base = draw(st.integers(min_value=0, max_value=(1 << prefix) - 1)) << (32 - prefix)
    doc = {"Network": str(IPv4Network((base, prefix)))}
    if draw(st.booleans()):
        doc["SubnetLen"] = draw(st.integers(min_value=prefix + 2, max_value=min(prefix + 8, 30)))
    return config.parse_net_conf(doc)


@st.composite
def scenarios(draw):
    net = draw(networks())
    capacity = min(net.subnet_count(), 40)
    count = draw(st.integers(min_value=1, max_value=capacity))
    subnets = list(islice(net.subnets(), capacity * 2))
    statics = draw(st.lists(st.sampled_from(subnets), max_size=count, unique=True))
    names = list(range(1, count + 1))
    hosts = [
        HostSpec(f"h{i}", IPv4Address(0x0A000000 + i), statics[i - 1] if i <= len(statics) and draw(st.booleans()) else None)
        for i in names
    ]
    return net, hosts


def check_leases(net, leases):
    subnets = [lease.subnet for lease in leases]
    for i, a in enumerate(subnets):
        assert net.subnet_min <= a.network_address <= net.subnet_max
        assert a.prefixlen == net.subnet_len and a.subnet_of(net.network)
        assert not any(a.overlaps(b) for b in subnets[i + 1 :])


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_leases_never_overlap_and_stay_in_range(scenario):
    net, hosts = scenario
    plan = make_plan(net, hosts, allocate=True)
    check_leases(net, plan.leases)
    for spec, lease in zip(hosts, plan.leases):
        assert spec.subnet is None or lease.subnet == spec.subnet


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.data())
def test_adding_and_removing_hosts_never_moves_a_lease(scenario, data):
    net, hosts = scenario
    before = make_plan(net, hosts, allocate=True)
    kept = data.draw(st.lists(st.sampled_from(hosts), unique=True)) if hosts else []
    room = net.subnet_count() - len(kept)
    added = [HostSpec(f"new{i}", IPv4Address(0x0B000000 + i)) for i in range(data.draw(st.integers(0, min(room, 5))))]
    after = make_plan(net, kept + added, before.leases, allocate=True)
    check_leases(net, after.leases)
    old = {lease.host: lease.subnet for lease in before.leases}
    for lease in after.leases:
        if lease.host in old:
            assert lease.subnet == old[lease.host]


def test_subnets_of_removed_hosts_are_handed_on_last():
    allocations = [Lease("gone", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.56.9"))]
    plan = make_plan(NET, [host(1)], allocations, allocate=True)
    assert str(plan.leases[0].subnet) == "10.244.2.0/24"
    full = config.parse_net_conf({"Network": "10.1.0.0/24"})  # three usable /26
    allocations = [Lease("gone", IPv4Network("10.1.0.64/26"), IPv4Address("192.168.56.9"))]
    plan = make_plan(full, [host(1), host(2), host(3)], allocations, allocate=True)
    assert sorted(str(lease.subnet) for lease in plan.leases) == ["10.1.0.128/26", "10.1.0.192/26", "10.1.0.64/26"]
