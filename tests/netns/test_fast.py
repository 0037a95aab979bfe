"""Between flannelette hosts, TCP super-packets cross as they are; hostile fast-mode datagrams don't."""

import json

import pytest

from netns_hosts import eventually
from test_hostile import LISTEN_PORT, ipv4_udp, received, udp_socket
from flannelette.host.datapath import vnet

pytestmark = pytest.mark.netns
PORT = 8285
MTU = 1472  # the underlay's 1500 - 28


@pytest.fixture
def pair(cluster):
    a, b = cluster.build(2)
    for host in (a, b):
        host.start()
    return a, b


def iperf(cluster, a, b, seconds=2):
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    out = a.run("iperf3", "-c", b.gateway, "-B", a.gateway, "-t", str(seconds), "-J", timeout=seconds + 30).stdout
    server.wait(10)
    return json.loads(out)["end"]


def carried(host):
    """Packets and bytes sent, from one reading of /metrics."""
    page = host.metrics()
    return tuple(page.get((f"flannelette_{name}", (("direction", "tx"),)), 0) for name in ("packets_total", "bytes_total"))


def test_tcp_crosses_as_super_packets(cluster, pair):
    a, b = pair
    assert a.metric("wire_fast") == 1 and b.metric("wire_fast") == 1
    assert a.ping(b.gateway, source=a.gateway, count=3)
    end = iperf(cluster, a, b)
    assert end["sum_received"]["bytes"] > 10_000_000
    packets, octets = carried(a)
    assert octets / packets > 4 * MTU  # most of the stream left in datagrams of many segments


def test_backend_wire_flannel_keeps_flannelette_hosts_on_flannels_format(cluster):
    a, b = cluster.build(2, net_conf={"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Wire": "flannel"}})
    for host in (a, b):
        host.start()
    assert a.metric("wire_fast") == 0 and b.metric("wire_fast") == 0
    end = iperf(cluster, a, b)
    assert end["sum_received"]["bytes"] > 10_000_000
    packets, octets = carried(a)
    assert octets / packets <= MTU  # one inner packet per datagram
    assert "Backend.Wire is flannel" in a.log()


def test_hostile_fast_datagrams_are_dropped_and_counted(cluster, pair):
    a, b = pair
    listener = udp_socket(a.ns, a.gateway, LISTEN_PORT)
    peer = udp_socket(b.ns, b.public_ip)
    listener.settimeout(0.5)
    plain_header = bytes(vnet.VNET_HDR_LEN)
    tcp_gso = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 40, 1000, 20, 16)
    udp_gso = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 28, 1000, 20, 6)
    cases = [
        (b"\x05" + plain_header[1:] + ipv4_udp(b.gateway, a.gateway, b"bad-flags"), vnet.BAD_VNET_HDR),
        (tcp_gso + ipv4_udp(b.gateway, a.gateway, b"udp-as-tcp"), vnet.BAD_VNET_HDR),
        (udp_gso + ipv4_udp(b.gateway, a.gateway, b"udp-gso"), vnet.BAD_GSO),
        (plain_header + ipv4_udp(b.gateway, a.gateway, b"truncated")[:-2], "malformed"),
        (plain_header + ipv4_udp("10.244.9.9", a.gateway, b"spoofed"), "spoofed_source"),
        (plain_header + ipv4_udp(b.gateway, "10.244.9.9", b"elsewhere"), "not_our_subnet"),
        (plain_header[:5], "short"),
    ]
    try:
        for data, reason in cases:
            before = a.drops(reason)
            peer.sendto(data, (a.public_ip, PORT))
            assert not received(listener, data[38:], wait=0.3), reason
            assert eventually(lambda: a.drops(reason) > before, timeout=10), reason
        peer.sendto(plain_header + ipv4_udp(b.gateway, a.gateway, b"genuine-fast"), (a.public_ip, PORT))
        assert received(listener, b"genuine-fast", wait=5)
        assert a.proc.poll() is None
    finally:
        listener.close()
        peer.close()


def test_reload_switches_modes_under_a_running_stream(cluster, pair):
    a, b = pair
    flanneld = {"host": "flanneld", "subnet": "10.244.9.0/24", "public_ip": "192.168.60.50", "wire": "flannel"}
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    client = cluster.spawn(a.ns, "iperf3", "-c", b.gateway, "-B", a.gateway, "-t", "6", "-J")
    eventually(lambda: carried(a)[0] > 1000, timeout=5)

    cluster.write_leases(cluster.hosts, extra=[flanneld])  # a flanneld host joins: flannel's format for all
    for host in pair:
        host.reload()
    assert a.metric("wire_fast") == 0
    eventually(lambda: False, timeout=0.5)  # packets offloaded before the switch have left
    before = carried(a)
    eventually(lambda: False, timeout=1.0)
    after = carried(a)
    assert after[0] > before[0] and (after[1] - before[1]) / (after[0] - before[0]) <= MTU

    cluster.write_leases(cluster.hosts)  # and leaves: the fast format again
    for host in pair:
        host.reload()
    assert a.metric("wire_fast") == 1
    out, _ = client.communicate(timeout=30)
    server.wait(10)
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] > 10_000_000
    assert a.metric("reloads_total", result="ok") == 2
