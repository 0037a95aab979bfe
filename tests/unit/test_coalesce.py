"""Joining TCP segments into one packet with a virtio-net header, on golden bytes."""

import struct

from flannelette.host.datapath import packet
from flannelette.host.datapath.coalesce import HEADERS, Coalescer
from flannelette.host.datapath.vnet import PLAIN, VNET_HDR, VNET_HDR_LEN
from ipv4_packets import ipv4, tcp

A, B = "10.244.2.7", "10.244.1.5"


def coalesce(*packets):
    frames = []
    c = Coalescer(lambda frame: frames.append(bytes(frame)))
    for p in packets:
        view = memoryview(bytes(p))
        c.add(view, 0, len(p), HEADERS.unpack(view[:HEADERS.size]) if len(p) >= HEADERS.size else None)
    c.flush()
    return frames


def decremented(p):
    p = bytearray(p)
    assert packet.decrement_ttl(p)
    return bytes(p)


def test_a_run_of_one_flow_becomes_one_packet():
    first, second, last = tcp(A, B, 5000, b"a" * 100), tcp(A, B, 5100, b"b" * 100), tcp(A, B, 5200, b"c" * 50, 0x18)
    [frame] = coalesce(first, second, last)
    assert VNET_HDR.unpack(frame[:VNET_HDR_LEN]) == (1, 1, 52, 100, 20, 16)  # NEEDS_CSUM, TCPV4, headers, MSS
    ip = frame[VNET_HDR_LEN:]
    assert len(ip) == 52 + 250 and struct.unpack_from("!H", ip, 2)[0] == 302
    assert ip[8] == 63 and packet.checksum(ip[:20]) == 0
    assert ip[20:24] == first[20:24] and struct.unpack_from("!I", ip, 24)[0] == 5000
    assert ip[33] == 0x18  # ACK, and PSH from the last segment
    assert ip[52:] == b"a" * 100 + b"b" * 100 + b"c" * 50
    pseudo = sum(struct.unpack("!4H", ip[12:20])) + 6 + 282
    assert struct.unpack_from("!H", ip, 36)[0] == (pseudo & 0xFFFF) + (pseudo >> 16)


def test_single_packets_pass_as_they_came_with_ttl_decremented():
    udp = ipv4(A, B)
    assert coalesce(udp) == [PLAIN + decremented(udp)]
    one = tcp(A, B, 5000, b"x" * 10)
    assert coalesce(one) == [PLAIN + decremented(one)]


def test_what_never_joins():
    base = tcp(A, B, 5000, b"a" * 100)
    cases = [
        tcp(A, B, 5200, b"b" * 100),  # a gap in the sequence
        tcp(A, B, 5100, b"b" * 100, flags=0x11),  # FIN
        tcp(A, B, 5100, b"b" * 100, ack=2000),  # another ack number
        tcp(A, B, 5100, b"b" * 100, options=b"\x01\x01\x08\x0a\x00\x00\x00\x08\x00\x00\x00\x09"),  # timestamps differ
        tcp("10.244.2.8", B, 5100, b"b" * 100),  # another flow
        tcp(A, B, 5100, b"b" * 101),  # longer than the first, which set the MSS
        ipv4(A, B),
    ]
    for other in cases:
        assert coalesce(base, other) == [PLAIN + decremented(base), PLAIN + decremented(other)]


def test_a_short_segment_ends_the_run():
    frames = coalesce(tcp(A, B, 5000, b"a" * 100), tcp(A, B, 5100, b"b" * 60), tcp(A, B, 5160, b"c" * 100))
    assert len(frames) == 2
    assert frames[0][:VNET_HDR_LEN] != PLAIN and frames[1][:VNET_HDR_LEN] == PLAIN


def test_syn_and_short_packets_alone():
    syn = tcp(A, B, 5000, b"", flags=0x02)
    tiny = ipv4(A, B, payload=b"")
    assert coalesce(syn, tiny) == [PLAIN + decremented(syn), PLAIN + decremented(tiny)]
