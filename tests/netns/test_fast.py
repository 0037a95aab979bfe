"""Between flannelette hosts, once each has answered the other's hello, TCP super-packets cross as segments."""

import json

import pytest

from netns_hosts import eventually
from test_hostile import LISTEN_PORT, ipv4_udp, received, udp_socket
from flannelette.host.datapath import exchange, formats, frames, segments, vnet

pytestmark = pytest.mark.netns
DATA_PATH = True  # on both underlays: cut like a wire, and whole like veth
PORT = 8285
MTU = 1472  # the underlay's 1500 - 28


@pytest.fixture
def pair(cluster):
    a, b = cluster.build(2)
    for host in (a, b):
        host.start()
    return a, b


def iperf(cluster, a, b, seconds=2, *extra):
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    out = a.run("iperf3", "-c", b.gateway, "-B", a.gateway, "-t", str(seconds), "-J", *extra, timeout=seconds + 30).stdout
    server.wait(10)
    return json.loads(out)["end"]


def peer_format(host, peer):
    """(format, exchange state) `host` has for `peer`, from its /metrics."""
    for (name, labels), _ in host.metrics().items():
        labels = dict(labels)
        if name == "flannelette_peer_info" and labels["peer"] == peer.name:
            return labels["format"], labels["exchange"]
    return None


def confirmed(a, b):
    return eventually(lambda: peer_format(a, b) == ("fast", "confirmed") and
                      peer_format(b, a) == ("fast", "confirmed"), timeout=10)


def test_two_flannelette_hosts_agree_on_segments_and_carry_tcp(cluster, pair):
    a, b = pair
    assert confirmed(a, b)
    assert a.metric("wire_fast") == 1 and b.metric("wire_fast") == 1
    assert a.ping(b.gateway, source=a.gateway, count=3)
    end = iperf(cluster, a, b)
    assert end["sum_received"]["bytes"] > 10_000_000
    assert end["sum_sent"]["retransmits"] < 50
    assert a.drops("malformed") == 0 and b.drops("malformed") == 0
    assert "fast format" in a.log()


def test_backend_wire_flannel_keeps_flannelette_hosts_on_flannels_format_and_asks_nothing(cluster):
    a, b = cluster.build(2, net_conf={"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Wire": "flannel"}})
    for host in (a, b):
        host.start()
    end = iperf(cluster, a, b)
    assert end["sum_received"]["bytes"] > 10_000_000
    assert a.metric("wire_fast") == 0 and b.metric("wire_fast") == 0
    assert a.metric("exchange_sent_total", message="hello") == 0
    assert peer_format(a, b) == ("flannel", "flannel")
    assert "Backend.Wire is flannel" in a.log()


def test_hostile_datagrams_of_every_format_are_dropped_and_counted(cluster, pair):
    a, b = pair
    assert confirmed(a, b)
    listener = udp_socket(a.ns, a.gateway, LISTEN_PORT)
    peer = udp_socket(b.ns, b.public_ip)
    listener.settimeout(0.5)
    plain_header = bytes(vnet.VNET_HDR_LEN)
    tcp_gso = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 40, 1000, 20, 16)
    udp_gso = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 28, 1000, 20, 6)
    seg = segments.HEADER
    cases = [
        (b"\x01\x05" + plain_header[2:] + ipv4_udp(b.gateway, a.gateway, b"bad-flags"), frames.BAD_VNET_HDR),
        (tcp_gso + ipv4_udp(b.gateway, a.gateway, b"udp-as-tcp"), frames.BAD_VNET_HDR),
        (udp_gso + ipv4_udp(b.gateway, a.gateway, b"udp-gso"), frames.BAD_GSO),
        (plain_header + ipv4_udp(b.gateway, a.gateway, b"truncated")[:-2], "malformed"),
        (seg + ipv4_udp("10.244.9.9", a.gateway, b"spoofed"), "spoofed_source"),
        (seg + ipv4_udp(b.gateway, "10.244.9.9", b"elsewhere"), "not_our_subnet"),
        (b"\xf3\x00\x00\x00" + ipv4_udp(b.gateway, a.gateway, b"bad-header"), "malformed"),
        (seg + ipv4_udp(b.gateway, a.gateway, b"ttl", ttl=1), "ttl_expired"),
        (exchange.encode(formats.ANSWER, 7, 1, "forged"), "unexpected_answer"),
        (plain_header[:5], "short"),
    ]
    try:
        for data, reason in cases:
            before = a.drops(reason)
            peer.sendto(data, (a.public_ip, PORT))
            assert not received(listener, data[-9:], wait=0.3), reason
            assert eventually(lambda: a.drops(reason) > before, timeout=10), reason
        peer.sendto(seg + ipv4_udp(b.gateway, a.gateway, b"genuine-segment"), (a.public_ip, PORT))
        assert received(listener, b"genuine-segment", wait=5)
        assert a.proc.poll() is None
    finally:
        listener.close()
        peer.close()


def test_peers_come_and_go_without_disturbing_a_stream_in_segments(cluster, pair):
    a, b = pair
    assert confirmed(a, b)
    flanneld = {"host": "flanneld", "subnet": "10.244.9.0/24", "public_ip": "192.168.60.50", "wire": "flannel"}
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    client = cluster.spawn(a.ns, "iperf3", "-c", b.gateway, "-B", a.gateway, "-t", "5", "-J")
    cluster.write_leases(cluster.hosts, extra=[flanneld])  # a flanneld host joins: it alone gets flannel's format
    for host in pair:
        host.reload()
    assert peer_format(a, b) == ("fast", "confirmed")
    cluster.write_leases(cluster.hosts)  # and leaves
    for host in pair:
        host.reload()
    out, _ = client.communicate(timeout=30)
    server.wait(10)
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] > 10_000_000
    assert a.metric("reloads_total", result="ok") == 2
    assert peer_format(a, b) == ("fast", "confirmed")
