"""Large lease tables in the running runtime: 10,000 and 60,000 leases load, reload, and the overlay keeps working."""

import pytest

from bench import leasegen

pytestmark = pytest.mark.netns


def start_with_generated(cluster, count, keys=False):
    a, b = cluster.build(2, net_conf=leasegen.net_conf(), keys=keys)
    real = [a.lease(), b.lease()]
    leasegen.write(cluster.leases, leasegen.generate(count - 2, keys=keys, taken=real))
    a.start()
    b.start()
    return a, b, real


@pytest.mark.parametrize("count,keys", [(10_000, True), (60_000, False)])
def test_a_large_table_carries_packets_and_reloads(cluster, count, keys):
    a, b, real = start_with_generated(cluster, count, keys)
    assert cluster.ping(a.ns, b.gateway), a.log()
    assert a.metric("leases") == count
    assert f"{count - 1} peers" in a.log()

    leasegen.write(cluster.leases, leasegen.generate(count - 1, keys=keys, taken=real))  # one lease added
    a.reload()
    assert a.metric("reloads_total", result="ok") == 1
    assert a.metric("leases") == count + 1
    assert "peer added: gen" in a.log()
    assert a.ping(b.gateway, source=a.gateway)


def test_metrics_of_a_large_table_list_only_peers_with_traffic(cluster):
    a, b, _ = start_with_generated(cluster, 10_000)
    assert cluster.ping(a.ns, b.gateway)
    assert a.ping(b.gateway, source=a.gateway)
    peers = {labels for name, labels in a.metrics() if name == "flannelette_peer_packets_total"}
    assert {dict(labels)["peer"] for labels in peers} == {b.name}
