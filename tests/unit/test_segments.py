"""The fast format on bytes: super-packets cut as the kernel's segmentation would, each datagram sound on its own."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from flannelette.host.datapath import formats, packet, segments
from flannelette.host.datapath.vnet import VNET_HDR
from ipv4_packets import ipv4, tcp

MTU = 1472
FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80


def partial(ip):
    """`ip` as flannel0 hands it over with offloads on: the TCP or UDP check field holding the pseudo-header sum."""
    ip = bytearray(ip)
    at = 20 + {6: 16, 17: 6}[ip[9]]
    struct.pack_into("!H", ip, at, segments.fold(segments.pseudo_base(ip) + len(ip) - 20))
    return ip


def transport_sum_ok(ip):
    """Whether the TCP or UDP checksum of `ip` verifies (RFC 1071 over pseudo-header and segment)."""
    ihl = (ip[0] & 0x0F) * 4
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, ip[9], len(ip) - ihl)
    return packet.checksum(pseudo + bytes(ip[ihl:])) == 0


def datagrams(sends):
    out = []
    for iov, count, size in sends:
        data = b"".join(bytes(part) for part in iov)
        pieces = [data[i:i + size] for i in range(0, len(data), size)]
        assert len(pieces) == count and all(len(p) == size for p in pieces[:-1]) and len(pieces[-1]) <= size
        assert count <= segments.MAX_SEGMENTS and len(data) <= segments.MAX_SEND
        out += pieces
    return out


def completed(datagram):
    assert datagram[:4] == segments.HEADER
    ip = bytearray(datagram[4:])
    segments.complete_checksum(ip, 20, 16 if ip[9] == 6 else 6)
    return ip


@settings(max_examples=300, deadline=None)
@given(payload=st.integers(1, 64000), mss=st.integers(48, 1420), df=st.booleans(),
       flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | CWR | PSH]),
       options=st.sampled_from([b"", b"\x01\x01\x08\x0a\x00\x00\x00\x07\x00\x00\x00\x09"]),
       seq=st.integers(0, 2 ** 32 - 1))
def test_a_cut_super_packet_is_the_kernels_segments_each_one_sound(payload, mss, df, flags, options, seq):
    data = bytes(range(256)) * (payload // 256 + 1)
    big = tcp("10.244.1.5", "10.244.2.7", seq, data[:payload], flags=flags, options=options)
    if not df:
        struct.pack_into("!H", big, 6, 0)
        struct.pack_into("!H", big, 10, 0)
        struct.pack_into("!H", big, 10, packet.checksum(big[:20]))
    headers = 40 + len(options)
    sent = datagrams(segments.cut(memoryview(partial(big)), mss, MTU, True))
    step = min(mss, MTU - 4 - headers)
    assert len(sent) == -(-payload // step)
    joined = b""
    for i, datagram in enumerate(sent):
        assert len(datagram) <= MTU
        ip = completed(datagram)
        assert segments.problem(datagram, len(datagram), MTU) is None
        assert packet.checksum(ip[:20]) == 0 and struct.unpack_from("!H", ip, 2)[0] == len(ip)
        assert transport_sum_ok(ip)
        assert ip[12:20] == big[12:20] and ip[8] == big[8] and ip[headers - len(options):headers] == big[40:headers]
        assert struct.unpack_from("!I", ip, 24)[0] == (seq + i * step) % 2 ** 32
        assert struct.unpack_from("!H", ip, 4)[0] == (struct.unpack_from("!H", big, 4)[0] + (0 if df else i)) & 0xFFFF
        last, first = i == len(sent) - 1, i == 0
        expected = flags & ~((0 if last else FIN | PSH) | (0 if first else CWR))
        assert ip[33] == expected
        joined += bytes(ip[headers:])
    assert joined == data[:payload]


@settings(max_examples=100, deadline=None)
@given(payload=st.integers(1, 20000), mss=st.integers(48, 1432))
def test_cut_for_a_peer_on_flannels_format_gives_finished_segments(payload, mss):
    big = tcp("10.244.1.5", "10.244.2.7", 77, bytes(payload), flags=ACK | PSH, options=b"")
    sent = datagrams(segments.cut(memoryview(partial(big)), mss, MTU, False))
    assert all(formats.is_plain(d[0]) and transport_sum_ok(d) and packet.checksum(d[:20]) == 0 for d in sent)
    assert b"".join(d[40:] for d in sent) == bytes(payload)


def test_a_full_sized_super_packet_takes_two_sends_of_at_most_44_datagrams():
    big = tcp("10.244.1.5", "10.244.2.7", 1, bytes(65000))
    sends = segments.cut(memoryview(partial(big)), 1420, MTU, True)
    assert [count for _, count, _ in sends] == [44, 2] and all(size == MTU for _, _, size in sends)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_ones_sum_is_rfc_1071(data):
    assert ~segments.ones_sum(data) & 0xFFFF == packet.checksum(data) or (packet.checksum(data) == 0xFFFF
                                                                         and segments.ones_sum(data) == 0)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=1400), st.sampled_from([6, 17]))
def test_a_completed_checksum_verifies(payload, protocol):
    if protocol == 6:
        ip = tcp("10.244.1.5", "10.244.2.7", 1, payload)
    else:
        ip = ipv4("10.244.1.5", "10.244.2.7", payload=struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload)
    ip = partial(ip)
    segments.complete_checksum(ip, 20, 16 if protocol == 6 else 6)
    assert transport_sum_ok(ip)
    if protocol == 17:
        assert struct.unpack_from("!H", ip, 26)[0] != 0  # 0 would say "no checksum"


GOOD = bytes(segments.HEADER) + bytes(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(100))))


def changed(offset, value, fmt="!B", data=GOOD):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


BROKEN = [
    ("too short", GOOD[:23], packet.SHORT),
    ("another flags byte", changed(1, 0), packet.MALFORMED),
    ("reserved bytes set", changed(3, 1), packet.MALFORMED),
    ("length beyond the datagram", GOOD[:-1], packet.MALFORMED),
    ("not IPv4", changed(4, 0x65), packet.MALFORMED),
    ("ICMP", changed(4 + 9, 1), segments.BAD_SEGMENT),
    ("a fragment", changed(4 + 6, 0x2001, "!H"), segments.BAD_SEGMENT),
    ("TCP data offset too small", changed(4 + 32, 0x40), segments.BAD_SEGMENT),
    ("TCP header past the end", changed(4 + 32, 0xF0, data=bytes(segments.HEADER) + bytes(partial(
        tcp("10.244.2.7", "10.244.1.5", 1, bytes(4))))), segments.BAD_SEGMENT),
    ("past the overlay MTU", bytes(segments.HEADER) + bytes(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(1500)))),
     packet.OVERSIZED),
    ("UDP cut short", bytes(segments.HEADER) + bytes(ipv4("10.244.2.7", "10.244.1.5", payload=b"1234")),
     segments.BAD_SEGMENT),
]


@pytest.mark.parametrize("data, reason", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_each_broken_segment_names_its_reason(data, reason):
    assert segments.problem(data, len(data), MTU) == reason


def test_a_sound_segment_passes_and_is_written_with_its_checksum_left_to_the_kernel():
    assert segments.problem(GOOD, len(GOOD), MTU) is None
    assert VNET_HDR.unpack(segments.vnet_header(20, 6)) == (1, 0, 0, 0, 20, 16)
    assert VNET_HDR.unpack(segments.vnet_header(20, 17)) == (1, 0, 0, 0, 20, 6)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 160), st.integers(0, 255)), max_size=4), st.integers(0, 150))
def test_mutated_segments_are_accepted_only_when_sound(changes, cut):
    data = bytearray(GOOD)
    for offset, value in changes:
        if offset < len(data):
            data[offset] = value
    data = bytes(data[:len(data) - cut])
    reason = segments.problem(data, len(data), MTU)
    assert reason is None or reason in packet.DROP_REASONS + segments.DROP_REASONS
    if reason is None:  # what an accepted segment promises the kernel, restated
        ip = data[4:]
        ihl = (ip[0] & 0x0F) * 4
        assert data[:4] == segments.HEADER and ip[0] >> 4 == 4 and struct.unpack_from("!H", ip, 2)[0] == len(ip)
        assert len(ip) <= MTU and not struct.unpack_from("!H", ip, 6)[0] & 0x3FFF and ip[9] in (6, 17)
        assert ihl + (18 if ip[9] == 6 else 8) <= len(ip)


def test_the_segment_header_starts_with_no_other_formats_first_bytes():
    assert segments.HEADER[0] == formats.SEGMENT
    assert not formats.is_plain(segments.HEADER[0]) and not formats.is_frame(segments.HEADER[0])
    assert segments.HEADER[0] >> 4 not in (4, 6) and segments.HEADER[0] not in (1, 2, 3, 4)


@settings(max_examples=300, deadline=None)
@given(payload=st.integers(1, 64000), mss=st.integers(48, 1420), per=st.integers(1, 44), df=st.booleans(),
       flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | CWR | PSH]),
       seq=st.integers(0, 2 ** 32 - 1))
def test_smaller_super_packets_give_the_same_segments_as_the_whole(payload, mss, per, df, flags, seq):
    data = bytes(range(256)) * (payload // 256 + 1)
    big = tcp("10.244.1.5", "10.244.2.7", seq, data[:payload], flags=flags)
    if not df:
        struct.pack_into("!H", big, 6, 0)
        struct.pack_into("!H", big, 10, 0)
        struct.pack_into("!H", big, 10, packet.checksum(big[:20]))
    whole = partial(big)
    step = min(mss, MTU - 4 - 52)
    parts = segments.smaller(memoryview(whole), step, per)
    assert len(parts) == -(-payload // (step * per))
    sent = []
    for head, start, end in parts:
        sub = bytearray(head + bytes(whole[start:end]))
        assert packet.checksum(sub[:20]) == 0 and struct.unpack_from("!H", sub, 2)[0] == len(sub)
        sent += datagrams(segments.cut(memoryview(sub), mss, MTU, True))
    assert sent == datagrams(segments.cut(memoryview(whole), mss, MTU, True))
