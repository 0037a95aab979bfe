"""Frames, the fast format of flannelette 0.1, on bytes: golden frames, each way to break one, fuzz, reassembly."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from flannelette.host.datapath import formats, frames, packet, vnet
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
    return frames.problem(data, len(data), mtu)


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
    assert formats.is_frame(GOLDEN_HEADER[0]) and formats.is_frame(0) and formats.is_frame(vnet.F_DATA_VALID)
    assert not any(formats.is_frame(first) for first in range(0x45, 0x50))
    assert not any(formats.is_plain(first) for first in (formats.HELLO, formats.ANSWER, formats.SEGMENT, 1, 2, 3, 4))
    assert not any(first >> 4 in (4, 6) for first in (formats.HELLO, formats.ANSWER, formats.SEGMENT))


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
    ("unknown flags", with_header(flags=4), frames.BAD_VNET_HDR),
    ("both checksum flags", with_header(flags=3), frames.BAD_VNET_HDR),
    ("UDP GSO", with_header(gso_type=3), frames.BAD_VNET_HDR),
    ("TCPV6 GSO", with_header(gso_type=4), frames.BAD_VNET_HDR),
    ("checksum start off the header", with_header(csum_start=24), frames.BAD_VNET_HDR),
    ("checksum offset not TCP's", with_header(csum_offset=6), frames.BAD_VNET_HDR),
    ("checksum fields without the flag", with_header(flags=0, gso_type=0, gso_size=0), frames.BAD_VNET_HDR),
    ("GSO without NEEDS_CSUM", with_header(flags=0, csum_start=0, csum_offset=0), frames.BAD_GSO),
    ("gso_size zero", with_header(gso_size=0), frames.BAD_GSO),
    ("gso_size tiny", with_header(gso_size=1), frames.BAD_GSO),
    ("segments beyond the MTU", with_header(gso_size=1421), frames.BAD_GSO),
    ("hdr_len beyond the packet", with_header(hdr_len=60000), frames.BAD_GSO),
    ("gso_size on a plain packet", with_header(gso_type=0), frames.BAD_GSO),
    ("TCPV4 claimed for UDP", ip_changed(9, 17), frames.BAD_VNET_HDR),  # TCP's checksum offset, for UDP
    ("TCPV4 claimed for UDP, checksum right", udp_claimed_as_tcpv4(), frames.BAD_GSO),
    ("a fragment claimed as GSO", ip_changed(6, 0x2000, "!H"), frames.BAD_GSO),
    ("TCP header past the end", ip_changed(32, 0xF0), frames.BAD_GSO),
    ("TCP data offset too small", ip_changed(32, 0x40), frames.BAD_GSO),
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
    assert reason is None or reason in packet.DROP_REASONS + frames.DROP_REASONS
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
    assert reason is None or reason in packet.DROP_REASONS + frames.DROP_REASONS
    if reason is None:
        accepted_invariants(data)


def test_a_frame_says_how_many_bytes_it_claims():
    whole = frame()
    assert frames.claimed(whole, 0, MTU) == len(whole)
    assert frames.claimed(whole[:5], 0, 5) == 5  # too short to say: one datagram, which problem() rejects


def test_an_ecn_bit_alone_is_no_gso_type():
    assert check(with_header(gso_type=vnet.GSO_ECN)) == frames.BAD_VNET_HDR


def datagrams(data, chunk=MTU):
    """A frame as the previous release's sender cut it: datagrams of `chunk` bytes, the last shorter."""
    return [bytes(data[i:i + chunk]) for i in range(0, len(data), chunk)]


def reassemble(pieces, now=0.0):
    """Feed datagrams as they arrive; [(whole frame or None, datagrams not consumed)]."""
    first = pieces[0]
    partial = frames.Reassembly(first, 0, len(first), frames.claimed(first, 0, len(first)), now)
    for i, piece in enumerate(pieces[1:], 1):
        whole = partial.take(piece, 0, len(piece), now)
        if whole is None:
            return None, i
        if whole:
            return bytes(partial.buffer), i + 1
    return None, len(pieces)


def test_a_frame_cut_into_datagrams_comes_back_whole_across_reads():
    whole = frame(body=super_packet(segments=20))
    assert reassemble(datagrams(whole)) == (bytes(whole), len(datagrams(whole)))


def test_a_lost_datagram_in_the_middle_loses_the_frame_not_the_next_one():
    pieces = datagrams(frame(body=super_packet(segments=20)))
    following = datagrams(frame(body=super_packet(segments=5)))
    whole, used = reassemble(pieces[:3] + pieces[4:] + following)
    assert whole is None and used == len(pieces) - 2  # the short last datagram can't fill a full one's place


def test_a_lost_last_datagram_is_noticed_at_the_next_start():
    pieces = datagrams(frame(body=super_packet(segments=20)))
    ack = bytes(frame(vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 20, 16), tcp("10.244.2.7", "10.244.1.5", 9, b"")))
    missing = len(pieces[-1])
    padded_ack = ack  # whatever its size, a datagram that reads as a start is never taken as a frame's last part
    whole, used = reassemble(pieces[:-1] + [padded_ack])
    assert whole is None and used == len(pieces) - 1 and missing != 0


def test_a_frame_that_takes_too_long_is_given_up():
    pieces = datagrams(frame(body=super_packet(segments=3)))
    partial = frames.Reassembly(pieces[0], 0, len(pieces[0]), frames.claimed(pieces[0], 0, len(pieces[0])), 0.0)
    assert partial.take(pieces[1], 0, len(pieces[1]), frames.MAX_AGE + 0.1) is None
