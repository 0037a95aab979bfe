"""The packet loop in the fast format: once a peer has answered a hello, packets cross as segments, super-packets as trains."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flannelette.host.datapath import exchange, formats, packet, segments, trains, vnet
from flannelette.host.datapath.inbound import UNEXPECTED_ANSWER
from flannelette.host.kernel.udp import SOL_UDP, UDP_SEGMENT
from ipv4_packets import ipv4, tcp
from test_datapath import MTU, OTHER, OWN, PEER, Rig, eventually
from test_segments import partial, transport_sum_ok
from test_trains import CHUNK, cut as cut_train

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


def test_a_super_packet_leaves_as_a_train_that_gives_it_back(rig):
    big = super_packet()
    rig.tun_send(big, GSO)
    first = rig.peer.recv(70000)
    _, number, _, count = trains.HEADER.unpack(first[:4])
    datagrams = [first] + received(rig, count - 1)
    assert all(len(d) <= MTU for d in datagrams)
    assert [trains.HEADER.unpack(d[:4]) for d in datagrams] == [(0xF4, number, i, count) for i in range(count)]
    train = trains.Assembly(number, count, 0.0)
    for i, d in enumerate(datagrams):
        assert train.add(i, memoryview(bytearray(d))[4:])
    pieces, length = train.frame_parts()
    assert b"".join(bytes(p) for p in pieces) == GSO + decremented(big)
    assert eventually(lambda: rig.path.totals()[:2] == [count, len(big)])


def decremented(data):
    out = bytearray(data)
    packet.decrement_ttl(out)
    return bytes(out)


def train_of(big, number=5):
    return cut_train(GSO + bytes(big), number=number)


def test_a_train_datagram_by_datagram_enters_the_tun_whole(rig):
    big = super_packet("10.244.2.7", "10.244.1.5", segments=20)
    for datagram in train_of(big):
        rig.peer.sendto(datagram, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(big)
    assert sum(rig.path.drops.values()) == 0


def test_a_train_in_one_coalesced_read_enters_the_tun_whole(rig):
    big = super_packet("10.244.2.7", "10.244.1.5", segments=20)
    datagrams = train_of(big)
    block = b"".join(datagrams)
    rig.peer.sendmsg([block], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(datagrams[0])))], 0, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(big)


def test_a_train_that_lost_a_datagram_still_delivers_the_rest(rig):
    big = super_packet("10.244.2.7", "10.244.1.5", segments=20)
    datagrams = train_of(big)
    del datagrams[3]
    for datagram in datagrams + train_of(super_packet("10.244.2.7", "10.244.1.5", segments=2), number=6):
        rig.peer.sendto(datagram, ("127.0.0.1", rig.port))
    before, after = rig.tun_recv_frame(), rig.tun_recv_frame()
    payload = bytes(big[52:])
    lost = (3 * CHUNK - 62, 4 * CHUNK - 62)  # the payload bytes the fourth datagram carried
    assert before[10 + 52:] == payload[:lost[0]] and after[10 + 52:] == payload[lost[1]:]
    assert rig.wait_drops(trains.TRAIN_INCOMPLETE, 1) == 1


def test_a_train_that_lost_its_first_datagram_is_salvaged_from_the_copy(rig):
    big = super_packet("10.244.2.7", "10.244.1.5", segments=20)
    datagrams = train_of(big)[1:]
    for datagram in datagrams:
        rig.peer.sendto(datagram, ("127.0.0.1", rig.port))
    frame = rig.tun_recv_frame()  # after the train's wait ran out: the bytes behind the lost chunk
    assert frame[10 + 52:] == bytes(big[52:])[CHUNK - 62:]
    assert struct.unpack_from("!I", frame, 10 + 24)[0] == 1 + CHUNK - 62


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
    ("peer", b"\xf4\x01\x05\x02" + bytes(100), trains.BAD_TRAIN),
]


def test_a_whole_train_with_a_spoofed_inner_source_is_dropped_and_counted(rig):
    for datagram in train_of(super_packet("10.244.3.7", "10.244.1.5", segments=5)):
        rig.peer.sendto(datagram, ("127.0.0.1", rig.port))
    assert rig.wait_drops(packet.SPOOFED_SOURCE, 1) == 1


@pytest.mark.parametrize("sender, data, reason", HOSTILE, ids=[c[2] + "-" + c[1][:1].hex() for c in HOSTILE])
def test_hostile_datagrams_are_dropped_and_counted(rig, sender, data, reason):
    rig.assert_dropped(sender, data, reason)


def test_a_hello_is_answered_with_its_nonce(rig):
    rig.peer.sendto(exchange.encode(formats.HELLO, 5, 424242, "peer"), ("127.0.0.1", rig.port))
    answer = rig.peer.recv(2048)
    message = exchange.decode(answer, len(answer))
    assert message.kind == formats.ANSWER and message.nonce == 424242 and message.release == "test"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([formats.SEGMENT, formats.TRAIN, formats.HELLO, formats.ANSWER]),
                          st.binary(max_size=3000)),
                min_size=1, max_size=10))
def test_no_datagram_of_our_formats_stops_the_loop(rig, datagrams):
    for first, rest in datagrams:
        rig.peer.sendto(bytes([first]) + rest, ("127.0.0.1", rig.port))
    good = seg(partial(tcp("10.244.2.7", "10.244.1.5", 1, b"still-forwarding")))
    rig.peer.sendto(good, ("127.0.0.1", rig.port))
    while not rig.tun_recv_frame().endswith(b"still-forwarding"):
        pass  # anything random that happened to be valid arrives first
    assert rig.path.alive()
