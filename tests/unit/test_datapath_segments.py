"""The packet loop in the fast format: once a peer has answered a hello, super-packets cross as segments."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flannelette.host.datapath import exchange, formats, packet, segments, vnet
from flannelette.host.datapath.inbound import UNEXPECTED_ANSWER
from flannelette.host.kernel.udp import SOL_UDP, UDP_SEGMENT
from ipv4_packets import ipv4, tcp
from test_datapath import MTU, OTHER, OWN, PEER, Rig, eventually
from test_segments import partial, transport_sum_ok

GSO = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 52, 1420, 20, 16)
PARTIAL_TCP = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 20, 16)
PARTIAL_UDP = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 20, 6)


def super_packet(src="10.244.1.5", dst="10.244.2.7", segments=40, ttl=64):
    return partial(tcp(src, dst, 1, bytes(range(200)) * (segments * 1420 // 200), ttl=ttl))


@pytest.fixture
def rig():
    r = Rig([OWN, PEER, OTHER], fast=True)
    r.answer_hello()
    yield r
    r.close()


def received(rig, count):
    return [rig.peer.recv(70000) for _ in range(count)]


def tun_frames(rig, payload_bytes):
    """Frames from the TUN until they carry `payload_bytes` of TCP payload (40-byte TCP header, no options)."""
    got, total = [], 0
    while total < payload_bytes:
        frame = rig.tun_recv_frame()
        got.append(frame)
        total += len(frame) - 10 - 52
    return got


def test_flannel0_hands_over_super_packets_once_a_peer_takes_segments(rig):
    assert rig.offloads == [True] and rig.path.offload


def test_a_super_packet_leaves_as_segments_each_one_datagram(rig):
    big = super_packet()
    rig.tun_send(big, GSO)
    step = MTU - 4 - 52
    count = -(-(len(big) - 52) // step)
    datagrams = received(rig, count)
    assert all(d[:4] == segments.HEADER and len(d) <= MTU for d in datagrams)
    assert b"".join(d[4 + 52:] for d in datagrams) == bytes(big[52:])
    for d in datagrams:
        ip = bytearray(d[4:])
        assert ip[8] == 63 and packet.checksum(ip[:20]) == 0
        segments.complete_checksum(ip, 20, 16)
        assert transport_sum_ok(ip)
    assert eventually(lambda: rig.path.totals()[:2] == [count, len(big)])


def test_small_partial_packets_leave_behind_a_segment_header_batched_or_not(rig):
    sent = [partial(ipv4("10.244.1.5", "10.244.2.7", payload=struct.pack("!HHHH", 1, 2, 108, 0) + bytes([i]) * 100))
            for i in range(20)]
    for data in sent:
        rig.tun_send(data, PARTIAL_UDP)
    for data in sent:
        got = rig.peer.recv(2048)
        assert got[:4] == segments.HEADER and got[4:12] == data[:8] and got[4 + 8] == 63 and got[4 + 20:] == data[20:]


def test_a_full_sized_partial_tcp_packet_is_cut_in_two(rig):
    full = partial(tcp("10.244.1.5", "10.244.2.7", 1, bytes(MTU - 52)))
    rig.tun_send(full, PARTIAL_TCP)
    a, b = received(rig, 2)
    assert a[:4] == b[:4] == segments.HEADER and len(a) <= MTU and a[4 + 52:] + b[4 + 52:] == bytes(MTU - 52)


def test_a_full_sized_partial_udp_packet_leaves_finished_in_flannels_format(rig):
    payload = bytes(MTU - 28)
    full = partial(ipv4("10.244.1.5", "10.244.2.7", payload=struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload))
    rig.tun_send(full, PARTIAL_UDP)
    got = rig.peer.recv(2048)
    assert len(got) == MTU and formats.is_plain(got[0]) and transport_sum_ok(got)


def test_a_lone_finished_packet_leaves_in_flannels_format(rig):
    ping = ipv4("10.244.1.5", "10.244.2.7", proto=1, payload=bytes(64))
    rig.tun_send(ping)
    got = rig.peer.recv(2048)
    assert got[8] == 63 and got[12:] == bytes(ping[12:])


def test_a_peer_that_has_not_answered_gets_finished_segments():
    r = Rig([OWN, PEER], fast=True)
    try:
        hello = r.peer.recv(2048)
        assert hello[0] == formats.HELLO
        big = super_packet(segments=5)
        r.tun_send(big, GSO)
        datagrams = received(r, 5)
        assert all(formats.is_plain(d[0]) and transport_sum_ok(d) for d in datagrams)
        assert b"".join(d[52:] for d in datagrams) == bytes(big[52:])
    finally:
        r.close()


def cut(big):
    sends = segments.cut(memoryview(bytearray(big)), 1420, MTU, True)
    return [b"".join(bytes(p) for p in iov) for iov, _, _ in sends], [size for _, _, size in sends]


def test_segments_datagram_by_datagram_enter_the_tun_joined(rig):
    big = super_packet("10.244.2.7", "10.244.1.5", segments=10)
    blocks, sizes = cut(big)
    for block, size in zip(blocks, sizes):
        for i in range(0, len(block), size):
            rig.peer.sendto(block[i:i + size], ("127.0.0.1", rig.port))
    frames = tun_frames(rig, len(big) - 52)
    assert b"".join(f[10 + 52:] for f in frames) == bytes(big[52:])
    for frame in frames:
        flags, gso_type, _, gso_size, start, offset = vnet.VNET_HDR.unpack_from(frame)
        assert flags == vnet.F_NEEDS_CSUM and (start, offset) == (20, 16) and frame[10 + 8] == 63
        assert gso_type in (vnet.GSO_NONE, vnet.GSO_TCPV4) and struct.unpack_from("!H", frame, 12)[0] == len(frame) - 10
    assert eventually(lambda: rig.path.totals()[2] == sum(-(-len(b) // s) for b, s in zip(blocks, sizes)))


def test_segments_in_one_coalesced_read_enter_the_tun_as_one_packet(rig):
    big = super_packet("10.244.2.7", "10.244.1.5", segments=20)
    (block,), (size,) = cut(big)
    rig.peer.sendmsg([block], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, ("127.0.0.1", rig.port))
    frame = rig.tun_recv_frame()
    assert vnet.VNET_HDR.unpack_from(frame)[:2] == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4)
    assert frame[10 + 52:] == bytes(big[52:]) and frame[10 + 8] == 63


def seg(data):
    return segments.HEADER + bytes(data)


HOSTILE = [
    ("peer", seg(partial(tcp("10.244.3.7", "10.244.1.5", 1, bytes(100)))), packet.SPOOFED_SOURCE),
    ("peer", seg(partial(tcp("10.244.2.7", "10.244.3.5", 1, bytes(100)))), packet.NOT_OUR_SUBNET),
    ("peer", seg(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(100), ttl=1))), packet.TTL_EXPIRED),
    ("stranger", seg(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(100)))), packet.UNKNOWN_PEER),
    ("peer", seg(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(100))))[:-1], packet.MALFORMED),
    ("peer", b"\xf3\x00\x00\x00" + bytes(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(100)))), packet.MALFORMED),
    ("peer", seg(ipv4("10.244.2.7", "10.244.1.5", proto=1, payload=bytes(64))), segments.BAD_SEGMENT),
    ("peer", seg(partial(tcp("10.244.2.7", "10.244.1.5", 1, bytes(1500)))), packet.OVERSIZED),
    ("peer", exchange.encode(formats.ANSWER, 7, 12345, "forged"), UNEXPECTED_ANSWER),
    ("peer", b"\xf1" + bytes(30), packet.MALFORMED),
    ("peer", b"\x99" + bytes(30), packet.MALFORMED),
]


@pytest.mark.parametrize("sender, data, reason", HOSTILE, ids=[c[2] + "-" + c[1][:1].hex() for c in HOSTILE])
def test_hostile_datagrams_are_dropped_and_counted(rig, sender, data, reason):
    rig.assert_dropped(sender, data, reason)


def test_a_hello_is_answered_with_its_nonce(rig):
    rig.peer.sendto(exchange.encode(formats.HELLO, 5, 424242, "peer"), ("127.0.0.1", rig.port))
    answer = rig.peer.recv(2048)
    message = exchange.decode(answer, len(answer))
    assert message.kind == formats.ANSWER and message.nonce == 424242 and message.release == "test"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([formats.SEGMENT, formats.HELLO, formats.ANSWER]), st.binary(max_size=3000)),
                min_size=1, max_size=10))
def test_no_datagram_of_our_formats_stops_the_loop(rig, datagrams):
    for first, rest in datagrams:
        rig.peer.sendto(bytes([first]) + rest, ("127.0.0.1", rig.port))
    good = seg(partial(tcp("10.244.2.7", "10.244.1.5", 1, b"still-forwarding")))
    rig.peer.sendto(good, ("127.0.0.1", rig.port))
    while not rig.tun_recv_frame().endswith(b"still-forwarding"):
        pass  # anything random that happened to be valid arrives first
    assert rig.path.alive()
