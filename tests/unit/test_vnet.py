"""The fast wire format's checks, on bytes: golden frames, each way to break one, and fuzz."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from flannelette.host.datapath import packet, vnet
from ipv4_packets import ipv4, tcp

MTU = 1472
# A TCP super-packet as flannel0 (MTU 1472) hands it over: 3 segments of 1420
# bytes (TCP with timestamps) behind NEEDS_CSUM, TCPV4, hdr_len 52,
# gso_size 1420, csum_start 20, csum_offset 16.
GOLDEN_HEADER = bytes.fromhex("01 01 3400 8c05 1400 1000")


def super_packet(segments=3, mss=1420):
    return bytearray(tcp("10.244.2.7", "10.244.1.5", 1, bytes(range(256)) * (segments * mss // 256) + bytes(segments * mss % 256)))


def frame(header=GOLDEN_HEADER, body=None):
    return bytearray(header) + (super_packet() if body is None else body)


def check(data, mtu=MTU):
    return vnet.problem(data, len(data), mtu)


def test_golden_header_fields():
    assert vnet.VNET_HDR.unpack(GOLDEN_HEADER) == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 52, 1420, 20, 16)
    assert vnet.VNET_HDR_LEN == 10


def test_a_super_packet_and_plain_packets_pass():
    assert check(frame()) is None
    assert check(frame(bytes(10), ipv4("10.244.2.7", "10.244.1.5"))) is None
    partial_udp = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 20, 6)
    assert check(frame(partial_udp, ipv4("10.244.2.7", "10.244.1.5"))) is None
    ecn = bytearray(GOLDEN_HEADER)
    ecn[1] |= vnet.GSO_ECN
    assert check(frame(ecn)) is None


def test_the_first_byte_tells_the_formats_apart():
    assert vnet.is_fast(GOLDEN_HEADER[0]) and vnet.is_fast(0) and vnet.is_fast(vnet.F_DATA_VALID)
    assert not any(vnet.is_fast(first) for first in range(0x45, 0x50))


def with_header(**fields):
    values = dict(zip(("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset"),
                      vnet.VNET_HDR.unpack(GOLDEN_HEADER)))
    values.update(fields)
    return frame(vnet.VNET_HDR.pack(*values.values()))


def ip_changed(offset, value, fmt="!B"):
    data = frame()
    struct.pack_into(fmt, data, 10 + offset, value)
    return data


def udp_claimed_as_tcpv4():
    data = ip_changed(9, 17)
    struct.pack_into("<H", data, 8, 6)  # UDP's checksum offset: only the GSO type is wrong
    return data


BROKEN = [
    ("truncated to a header", GOLDEN_HEADER + b"\x45", packet.SHORT),
    ("truncated super-packet", frame()[:-100], packet.MALFORMED),
    ("padded super-packet", frame() + b"xx", packet.MALFORMED),
    ("not IPv4 inside", frame(body=bytearray(b"\x60" + bytes(60))), packet.MALFORMED),
    ("unknown flags", with_header(flags=4), vnet.BAD_VNET_HDR),
    ("both checksum flags", with_header(flags=3), vnet.BAD_VNET_HDR),
    ("UDP GSO", with_header(gso_type=3), vnet.BAD_VNET_HDR),
    ("TCPV6 GSO", with_header(gso_type=4), vnet.BAD_VNET_HDR),
    ("checksum start off the header", with_header(csum_start=24), vnet.BAD_VNET_HDR),
    ("checksum offset not TCP's", with_header(csum_offset=6), vnet.BAD_VNET_HDR),
    ("checksum fields without the flag", with_header(flags=0, gso_type=0, gso_size=0), vnet.BAD_VNET_HDR),
    ("GSO without NEEDS_CSUM", with_header(flags=0, csum_start=0, csum_offset=0), vnet.BAD_GSO),
    ("gso_size zero", with_header(gso_size=0), vnet.BAD_GSO),
    ("gso_size tiny", with_header(gso_size=1), vnet.BAD_GSO),
    ("segments beyond the MTU", with_header(gso_size=1421), vnet.BAD_GSO),
    ("hdr_len beyond the packet", with_header(hdr_len=60000), vnet.BAD_GSO),
    ("gso_size on a plain packet", with_header(gso_type=0), vnet.BAD_GSO),
    ("TCPV4 claimed for UDP", ip_changed(9, 17), vnet.BAD_VNET_HDR),  # TCP's checksum offset, for UDP
    ("TCPV4 claimed for UDP, checksum right", udp_claimed_as_tcpv4(), vnet.BAD_GSO),
    ("a fragment claimed as GSO", ip_changed(6, 0x2000, "!H"), vnet.BAD_GSO),
    ("TCP header past the end", ip_changed(32, 0xF0), vnet.BAD_GSO),
    ("TCP data offset too small", ip_changed(32, 0x40), vnet.BAD_GSO),
    ("plain packet past the MTU", frame(bytes(10), ipv4("10.244.2.7", "10.244.1.5", payload=bytes(1500))),
     packet.OVERSIZED),
]


@pytest.mark.parametrize("data, reason", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_each_broken_frame_names_its_reason(data, reason):
    assert check(data) == reason


def accepted_invariants(data):
    """What an accepted frame promises the kernel, restated independently of the checker."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = vnet.VNET_HDR.unpack_from(data)
    n = len(data) - 10
    assert data[10] >> 4 == 4 and struct.unpack_from("!H", data, 12)[0] == n
    assert hdr_len <= n
    if gso_type:
        assert gso_type & 0x7F == vnet.GSO_TCPV4 and data[19] == 6 and flags == vnet.F_NEEDS_CSUM
        assert vnet.TCP_MIN_MSS <= gso_size <= MTU - 40
    else:
        assert gso_size == 0 and n <= MTU
    if flags == vnet.F_NEEDS_CSUM:
        assert csum_start + csum_offset + 2 <= n


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data):
    reason = check(data)
    assert reason is None or reason in packet.DROP_REASONS + vnet.DROP_REASONS
    if reason is None:
        accepted_invariants(data)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4400), st.integers(0, 255)), max_size=4), st.integers(0, 4400))
def test_mutated_super_packets_are_accepted_only_when_sound(changes, cut):
    data = frame()
    for offset, value in changes:
        if offset < len(data):
            data[offset] = value
    data = data[:len(data) - cut]
    reason = check(data)
    assert reason is None or reason in packet.DROP_REASONS + vnet.DROP_REASONS
    if reason is None:
        accepted_invariants(data)


def test_a_frame_claiming_more_than_its_datagram_takes_the_rest_of_the_read():
    whole = frame()
    read = bytes(10) + ipv4("10.244.2.7", "10.244.1.5") + whole  # a small frame, then a cut one
    small = len(read) - len(whole)
    assert vnet.span(read, 0, small, len(read)) == small
    assert vnet.span(read, small, MTU, len(read)) == len(whole)
    assert vnet.span(whole[:5], 0, 5, 5) == 5  # too short to say: one datagram, which problem() rejects
