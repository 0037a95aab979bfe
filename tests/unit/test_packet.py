"""Packet logic on golden bytes: header checks, TTL, ICMP net-unreachable, lease lookup."""

import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, strategies as st

from flannelette.host.datapath import packet
from flannelette.host.datapath.leases import LeaseTable
from flannelette.model.config import Lease
from ipv4_packets import ipv4

# A textbook IPv4 header (UDP, TTL 64, checksum 0xb861) and a payload of 95 bytes.
GOLDEN_HEADER = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
GOLDEN = GOLDEN_HEADER + bytes(range(95))


def test_golden_header_checksum_verifies():
    assert packet.checksum(GOLDEN_HEADER) == 0


def test_decrement_ttl_patches_checksum_incrementally():
    buf = bytearray(GOLDEN)
    assert packet.decrement_ttl(buf)
    assert buf[:20] == bytes.fromhex("4500007300004000" "3f11b961" "c0a80001c0a800c7")
    assert buf[20:] == GOLDEN[20:]


def test_ttl_of_one_expires_and_is_left_alone():
    buf = ipv4("10.244.1.5", "10.244.2.7", ttl=1)
    before = bytes(buf)
    assert not packet.decrement_ttl(buf)
    assert buf == before


def test_ttl_of_zero_expires_rather_than_wrapping():
    assert not packet.decrement_ttl(ipv4("10.244.1.5", "10.244.2.7", ttl=0))


@given(st.binary(min_size=20, max_size=20), st.integers(2, 255))
def test_incremental_checksum_equals_full_recomputation(header, ttl):
    buf = bytearray(header)
    buf[0], buf[8] = 0x45, ttl
    struct.pack_into("!H", buf, 10, 0)
    struct.pack_into("!H", buf, 10, packet.checksum(buf))
    assert packet.decrement_ttl(buf)
    assert buf[8] == ttl - 1
    assert packet.checksum(buf) == 0  # the header still verifies


def test_header_problems():
    good = ipv4("10.244.1.5", "10.244.2.7")
    assert packet.header_problem(good, len(good), 1472) is None
    assert packet.header_problem(good, 19, 1472) == packet.SHORT
    assert packet.header_problem(bytes(1500), 1500, 1472) == packet.OVERSIZED
    six = bytearray(good)
    six[0] = 0x65
    assert packet.header_problem(six, len(six), 1472) == packet.MALFORMED
    short_ihl = bytearray(good)
    short_ihl[0] = 0x44
    assert packet.header_problem(short_ihl, len(good), 1472) == packet.MALFORMED
    huge_ihl = bytearray(good[:20])
    huge_ihl[0] = 0x4F
    assert packet.header_problem(huge_ihl, 20, 1472) == packet.MALFORMED
    assert packet.header_problem(good + b"x", len(good) + 1, 1472) == packet.MALFORMED  # length field disagrees


def test_net_unreachable_quotes_header_and_eight_bytes():
    offender = ipv4("10.244.1.5", "10.244.9.9")
    reply = packet.net_unreachable(offender, IPv4Address("10.244.1.0"))
    assert reply == bytes.fromhex(
        "45000038000000000801" "9ad9" "0af40100" "0af40105"  # IPv4: 56 bytes, TTL 8, ICMP, from flannel0
        "0300" "ea86" "00000000"  # type 3 (unreachable), code 0 (net)
    ) + bytes(offender[:28])
    assert packet.checksum(reply[:20]) == 0
    assert packet.checksum(reply[20:]) == 0


def icmp(type_, code=0):
    return struct.pack("!BBHI", type_, code, 0, 0) + b"abcd"


@pytest.mark.parametrize("type_", [0, 8, 9, 10, 13, 14, 15, 16, 17, 18])
def test_net_unreachable_about_icmp_queries_and_replies(type_):
    offender = ipv4("10.244.1.5", "10.244.9.9", payload=icmp(type_), proto=1)
    reply = packet.net_unreachable(offender, IPv4Address("10.244.1.0"))
    assert reply[20:22] == b"\x03\x00" and reply[28:] == bytes(offender[:28])


@pytest.mark.parametrize("type_", [3, 4, 5, 11, 12, 19, 42, 255])
def test_no_unreachable_about_icmp_errors_or_unknown_types(type_):
    offender = ipv4("10.244.1.5", "10.244.9.9", payload=icmp(type_), proto=1)
    assert packet.net_unreachable(offender, IPv4Address("10.244.1.0")) is None


def test_no_unreachable_about_icmp_without_a_type():
    assert packet.net_unreachable(ipv4("10.244.1.5", "10.244.9.9", payload=b"", proto=1), IPv4Address("10.244.1.0")) is None


def test_no_unreachable_about_icmp_errors_or_later_fragments():
    source = IPv4Address("10.244.1.0")
    assert packet.net_unreachable(ipv4("10.244.1.5", "10.244.9.9", payload=icmp(3), proto=1), source) is None
    assert packet.net_unreachable(ipv4("10.244.1.5", "10.244.9.9", flags_frag=0x2001), source) is None
    assert packet.net_unreachable(b"\x45" + bytes(10), source) is None
    assert packet.net_unreachable(ipv4("10.244.1.5", "10.244.9.9", flags_frag=0x2000), source) is not None


def test_net_unreachable_for_a_packet_shorter_than_header_plus_eight():
    offender = ipv4("10.244.1.5", "10.244.9.9", payload=b"ab")
    reply = packet.net_unreachable(offender, IPv4Address("10.244.1.0"))
    assert reply[28:] == bytes(offender)
    assert packet.checksum(reply[20:]) == 0


LEASES = [
    Lease("node1", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.56.11")),
    Lease("node2", IPv4Network("10.244.2.0/24"), IPv4Address("192.168.56.12")),
    Lease("node3", IPv4Network("10.244.3.0/24"), IPv4Address("192.168.56.13")),
]


def addr(text):
    return int(IPv4Address(text))


def test_table_finds_the_peer_holding_an_address_and_skips_itself():
    table = LeaseTable(LEASES[0], LEASES, 24, 8285)
    assert table.peer_for(addr("10.244.2.77")).address == ("192.168.56.12", 8285)
    assert table.peer_for(addr("10.244.3.0")).host == "node3"
    assert table.peer_for(addr("10.244.1.5")) is None
    assert table.peer_for(addr("10.244.4.1")) is None
    assert [p.host for p in table.peers()] == ["node2", "node3"]


def test_table_lookup_is_keyed_by_subnet_prefix_for_any_size():
    leases = [Lease(f"h{i}", IPv4Network(f"10.{i >> 8}.{i & 255}.0/24"), IPv4Address(int(IPv4Address("172.16.0.0")) + i))
              for i in range(1, 5000)]
    table = LeaseTable(leases[0], leases, 24, 8285)
    assert len(table.by_subnet) == 4998
    assert table.peer_for(addr("10.19.135.1")).host == "h4999"  # 4999 = 19 * 256 + 135


def test_sender_checks():
    table = LeaseTable(LEASES[0], LEASES, 24, 8285)
    good = ipv4("10.244.2.5", "10.244.1.7")
    node2, node3 = table.peer_at("192.168.56.12"), table.peer_at("192.168.56.13")
    assert table.sender_problem(node2, good) is None
    assert table.peer_at("192.168.56.99") is None and table.sender_problem(None, good) == packet.UNKNOWN_PEER
    assert table.sender_problem(node3, good) == packet.SPOOFED_SOURCE
    assert table.sender_problem(node2, ipv4("10.244.2.5", "10.244.3.7")) == packet.NOT_OUR_SUBNET
    assert table.sender_problem(node2, ipv4("10.244.2.5", "8.8.8.8")) == packet.NOT_OUR_SUBNET


def test_new_table_keeps_counters_of_unchanged_peers():
    old = LeaseTable(LEASES[0], LEASES, 24, 8285)
    old.peer_for(addr("10.244.2.1")).counts.tx_packets = 7
    moved = LEASES[:2] + [Lease("node3", IPv4Network("10.244.3.0/24"), IPv4Address("192.168.56.99"))]
    new = LeaseTable(LEASES[0], moved, 24, 8285, previous=old)
    assert new.peer_for(addr("10.244.2.1")) is old.peer_for(addr("10.244.2.1"))
    assert new.peer_for(addr("10.244.3.1")).address == ("192.168.56.99", 8285)
    assert new.peer_for(addr("10.244.3.1")).counts.as_tuple() == (0, 0, 0, 0)
    assert new.peer_for(addr("10.244.2.1")).counts.tx_packets == 7
