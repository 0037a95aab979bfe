"""On an underlay that behaves like a wire, TCP and UDP between flannelette hosts in auto mode survive what wires do.

Every datagram is cut in software before it crosses (lab.wire), the receiver
joins them again or not (GRO on, off), datagrams are lost one by one, and a
path may have a smaller MTU than the hosts' own links.
"""

import json
import time

import pytest

from netns_hosts import sh
from test_fast import confirmed

pytestmark = pytest.mark.netns


def tcp_and_udp(cluster, a, b, seconds=3):
    """A TCP stream and a UDP stream from a's cni0 to b's; their iperf3 ends."""
    results = {}
    # UDP is offered at a rate the runtime carries with a core to spare: the loss
    # measured is the wire's and the format's, not a busy machine's.
    for name, extra in (("tcp", []), ("udp", ["-u", "-b", "100M", "-l", "1400"])):
        server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
        assert cluster.ping(a.ns, b.gateway)
        out = a.run("iperf3", "-c", b.gateway, "-B", a.gateway, "-t", str(seconds), "-J", *extra,
                    timeout=seconds + 30, check=False).stdout
        server.wait(10)
        result = json.loads(out)
        assert "error" not in result, result.get("error")
        results[name] = result["end"]
    return results


def assert_carried(results, loss=0.0):
    tcp, udp = results["tcp"], results["udp"]
    assert tcp["sum_received"]["bytes"] > 5_000_000, tcp["sum_received"]
    assert udp["sum"]["packets"] > 1000 and udp["sum"]["lost_percent"] < 100 * loss + 20, udp["sum"]


@pytest.mark.parametrize("gro", [False, True], ids=["gro-off", "gro-on"])
def test_tcp_and_udp_cross_whatever_the_receiver_joins(cluster, gro):
    a, b = cluster.build(2)
    cluster.set_gro(gro)
    for host in (a, b):
        host.start()
    assert confirmed(a, b)
    results = tcp_and_udp(cluster, a, b)
    assert_carried(results)
    assert results["tcp"]["sum_sent"]["retransmits"] < 100
    assert sum(a.drops(r) + b.drops(r) for r in ("malformed", "frame_incomplete", "bad_segment")) == 0


def test_a_connection_survives_one_percent_of_datagrams_lost(cluster):
    a, b = cluster.build(2)
    cluster.set_gro(True)
    cluster.set_loss(0.01)
    for host in (a, b):
        host.start()
    assert confirmed(a, b)
    assert_carried(tcp_and_udp(cluster, a, b), loss=0.01)


def test_a_path_mtu_100_bytes_below_the_underlays_fragments_and_carries(cluster):
    a, b = cluster.build(2, path_mtu=1400)  # b sits beyond a router whose link to it has MTU 1400
    for host in (a, b):
        host.start()
    assert confirmed(a, b)
    assert_carried(tcp_and_udp(cluster, a, b))
    fragmented = cluster_fragments(cluster)
    assert fragmented > 0, "datagrams larger than the path should have been fragmented by the router"


def cluster_fragments(cluster):
    """IPv4 fragments the router made (its FragCreates counter)."""
    out = sh("ip", "netns", "exec", cluster.switch, "cat", "/proc/net/snmp").stdout
    header, values = [line.split() for line in out.splitlines() if line.startswith("Ip:")][:2]
    return int(values[header.index("FragCreates")])


def test_a_stream_keeps_running_while_the_receiver_switches_gro(cluster):
    a, b = cluster.build(2)
    for host in (a, b):
        host.start()
    assert confirmed(a, b)
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    client = cluster.spawn(a.ns, "iperf3", "-c", b.gateway, "-B", a.gateway, "-t", "6", "-J")
    for on in (True, False, True):
        time.sleep(1.5)
        cluster.set_gro(on)
    out, _ = client.communicate(timeout=30)
    server.wait(10)
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] > 10_000_000
