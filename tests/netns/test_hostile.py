"""Datagrams that must never reach a destination: they are dropped, counted, and the daemon carries on."""

import socket
import struct
import time
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from netns_hosts import OUTSIDER_IP, eventually, in_namespace
from flannelette.host.datapath import packet

pytestmark = pytest.mark.netns
PORT = 8285
LISTEN_PORT = 9999


def ipv4_udp(src, dst, payload, ttl=64):
    udp = struct.pack("!HHHH", 5555, LISTEN_PORT, 8 + len(payload), 0) + payload  # UDP checksum 0: none
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, ttl, 17, 0,
                                   IPv4Address(src).packed, IPv4Address(dst).packed))
    struct.pack_into("!H", header, 10, packet.checksum(header))
    return bytes(header) + udp


def udp_socket(ns, address, port=0):
    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, port))
        return s
    return in_namespace(ns, make)


@pytest.fixture
def rig(cluster, three):
    a, b, c = three
    outsider = cluster.add_outsider()
    listener = udp_socket(a.ns, a.gateway, LISTEN_PORT)
    listener.settimeout(0.5)
    senders = {
        "outsider": udp_socket(outsider, OUTSIDER_IP),
        "b": udp_socket(b.ns, b.public_ip),
        "c": udp_socket(c.ns, c.public_ip),
    }
    yield a, b, c, listener, senders
    listener.close()
    for s in senders.values():
        s.close()


def received(listener, marker, wait=1.0):
    """True when a datagram carrying `marker` arrives within `wait` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if marker in listener.recv(4096):
                return True
        except socket.timeout:
            pass
    return False


def test_only_a_genuine_peer_datagram_arrives(rig):
    a, b, c, listener, send = rig
    target = (a.public_ip, PORT)
    cases = [
        ("outsider", ipv4_udp(b.gateway, a.gateway, b"from-outsider"), "unknown_peer"),
        ("c", ipv4_udp(b.gateway, a.gateway, b"spoofed-by-c"), "spoofed_source"),
        ("b", ipv4_udp(b.gateway, c.gateway, b"not-for-a"), "not_our_subnet"),
        ("b", ipv4_udp(b.gateway, a.gateway, b"truncated")[:-3], "malformed"),
        ("b", b"\x45\x00\x00", "short"),
        ("b", ipv4_udp(b.gateway, a.gateway, b"x" * 1500), "oversized"),
    ]
    for who, data, reason in cases:
        before = a.drops(reason)
        send[who].sendto(data, target)
        assert not received(listener, data[28:], wait=0.5), reason
        assert eventually(lambda: a.drops(reason) > before, timeout=10), reason
    genuine = ipv4_udp(b.gateway, a.gateway, b"genuine")
    send["b"].sendto(genuine, target)
    assert received(listener, b"genuine", wait=5)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(st.tuples(st.sampled_from(["outsider", "b", "c"]), st.binary(max_size=1600)),
                      min_size=1, max_size=50))
def test_a_flood_of_random_datagrams_leaves_the_daemon_alive_and_forwarding(rig, batch):
    a, b, c, listener, send = rig
    for who, data in batch:
        send[who].sendto(data, (a.public_ip, PORT))
    assert a.proc.poll() is None
    marker = b"still-forwarding-%d" % time.monotonic_ns()
    send["b"].sendto(ipv4_udp(b.gateway, a.gateway, marker), (a.public_ip, PORT))
    assert received(listener, marker, wait=5)
