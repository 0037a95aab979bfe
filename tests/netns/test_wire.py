"""To a flanneld host, flannelette speaks flannel: one inner IPv4 packet per UDP datagram, nothing added."""

import socket
import struct

import pytest

from netns_hosts import in_namespace
from test_hostile import LISTEN_PORT, ipv4_udp, received, udp_socket

pytestmark = pytest.mark.netns
PORT = 8285


def test_a_burst_reaches_a_plain_flannel_peer_as_one_packet_per_datagram(cluster):
    a, b = cluster.build(2)
    b.wire = "flannel"  # b plays a flanneld host: a plain UDP socket on its public IP, no coalescing
    cluster.write_leases(cluster.hosts)
    a.start()
    assert a.metric("wire_fast") == 0

    def listen():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for the whole burst
        s.bind((b.public_ip, PORT))
        s.settimeout(5)
        return s

    flanneld = in_namespace(b.ns, listen)
    try:
        burst = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(200):\n"
            "    s.sendto(bytes([i]) * 1000, ('10.244.2.5', 9))\n"
        )
        a.run("python3", "-c", burst)
        datagrams = [flanneld.recv(65536) for _ in range(200)]
    finally:
        flanneld.close()
    for i, datagram in enumerate(datagrams):
        assert len(datagram) == 20 + 8 + 1000
        assert struct.unpack_from("!H", datagram, 2)[0] == len(datagram)  # exactly one IPv4 packet
        assert datagram[8] == 63 and socket.inet_ntoa(datagram[16:20]) == "10.244.2.5"
        assert datagram[28:] == bytes([i]) * 1000


def test_a_plain_flannel_peers_datagrams_arrive(cluster):
    a, b = cluster.build(2)
    b.wire = "flannel"
    cluster.write_leases(cluster.hosts)
    a.start()
    listener = udp_socket(a.ns, a.gateway, LISTEN_PORT)
    flanneld = udp_socket(b.ns, b.public_ip, PORT)
    try:
        listener.settimeout(0.5)
        flanneld.sendto(ipv4_udp(b.gateway, a.gateway, b"from-flanneld"), (a.public_ip, PORT))
        assert received(listener, b"from-flanneld", wait=5)
    finally:
        listener.close()
        flanneld.close()
