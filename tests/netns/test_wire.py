"""To a flanneld host, flannelette speaks flannel: one inner IPv4 packet per UDP datagram, nothing added."""

import json
import os
import socket
import struct
import sys
import time

import pytest

from netns_hosts import eventually, in_namespace
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


STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flanneld_standin.py")


def tcp_connects(host, source, target, port):
    code = ("import socket, sys\n"
            f"s = socket.socket(); s.settimeout(1); s.bind(({source!r}, 0))\n"
            f"sys.exit(s.connect_ex(({target!r}, {port})))\n")
    return host.run(sys.executable, "-c", code, check=False).returncode == 0


def test_an_unmarked_flanneld_host_gets_tcp_both_ways_at_once_and_hardly_a_stray_datagram(cluster):
    a, b = cluster.build(2)  # b's lease does not say it runs flanneld
    counts = os.path.join(cluster.workdir, "standin.json")
    standin = cluster.spawn(b.ns, sys.executable, STANDIN, "--leases", cluster.leases, "--public-ip", b.public_ip,
                  "--counts", counts)
    assert eventually(lambda: os.path.exists(counts), timeout=10)
    servers = [cluster.spawn(b.ns, "iperf3", "-s", "-B", b.gateway, "-p", "5302")]
    started = time.monotonic()
    a.start()
    servers.append(cluster.spawn(a.ns, "iperf3", "-s", "-B", a.gateway, "-p", "5301"))  # on a's cni0, there now
    both = eventually(lambda: tcp_connects(a, a.gateway, b.gateway, 5302) and tcp_connects(b, b.gateway, a.gateway, 5301),
                      timeout=5.0, interval=0.2)
    took = time.monotonic() - started
    assert both, f"no TCP both ways within 5 s of the start\n{a.log()}"
    for client, source, target, port in ((a, a.gateway, b.gateway, "5302"), (b, b.gateway, a.gateway, "5301")):
        out = client.run("iperf3", "-c", target, "-B", source, "-p", port, "-t", "2", "-J", timeout=40).stdout
        assert json.loads(out)["end"]["sum_received"]["bytes"] > 1_000_000
    time.sleep(4)  # past the exchange's last hello
    for server in servers:
        server.terminate()
    standin.terminate()
    standin.wait(10)
    with open(counts) as f:
        seen = json.load(f)
    assert seen["not_ipv4"] <= 5, seen
    assert seen["datagrams"] > 1000 and took < 5.0
    assert ("flannelette_peer_info", "silent") in {(k[0], dict(k[1]).get("exchange")) for k in a.metrics()}
