"""The packet loop in fast mode: TCP super-packets cross as they are, behind their virtio-net header."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flannelette.host.datapath import packet, vnet
from ipv4_packets import ipv4, tcp
from flannelette.host.kernel.udp import SOL_UDP, UDP_GRO, UDP_SEGMENT
from flannelette.host.datapath.vnet import VNET_HDR_LEN
from test_datapath import MTU, OTHER, OWN, PEER, Rig, eventually

GSO = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 52, 1420, 20, 16)


def super_packet(src="10.244.1.5", dst="10.244.2.7", segments=40, ttl=64):
    return tcp(src, dst, 1, bytes(range(200)) * (segments * 1420 // 200), ttl=ttl)


@pytest.fixture
def rig():
    r = Rig([OWN, PEER, OTHER], fast=True)
    yield r
    r.close()


def decremented(data):
    expected = bytearray(data)
    packet.decrement_ttl(expected)
    return bytes(expected)


def test_a_super_packet_leaves_cut_into_datagrams_the_underlay_carries(rig):
    big = super_packet()
    rig.peer.setsockopt(SOL_UDP, UDP_GRO, 1)  # as the peer's runtime reads them: in one coalesced read
    rig.tun_send(big, GSO)
    data, ancillary, _, _ = rig.peer.recvmsg(70000, 64)
    assert data == GSO + decremented(big)
    chunk = struct.unpack("=i", ancillary[0][2][:4])[0]
    assert chunk == MTU and len(data) % chunk  # the last datagram is shorter: it ends the coalesced read
    assert eventually(lambda: rig.path.totals()[:2] == [1, len(big)])


def test_a_frame_of_whole_datagrams_is_cut_one_short(rig):
    # 2 * 1472 bytes in all: cut at 1472 its last datagram would be as long as the others
    big = tcp("10.244.1.5", "10.244.2.7", 1, bytes(2 * MTU - 10 - 52))
    rig.peer.setsockopt(SOL_UDP, UDP_GRO, 1)
    rig.tun_send(big, GSO)
    data, ancillary, _, _ = rig.peer.recvmsg(70000, 64)
    assert len(data) == 2 * MTU and struct.unpack("=i", ancillary[0][2][:4])[0] == MTU - 4


def test_a_frame_cut_into_datagrams_enters_the_tun_whole(rig):
    big = super_packet("10.244.2.7", "10.244.1.5")
    frame = GSO + big
    rig.peer.sendmsg([frame], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", MTU))], 0, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(big)
    assert eventually(lambda: rig.path.totals()[2:] == [1, len(big)])


def test_a_frame_missing_a_datagram_is_dropped_once(rig):
    frame = GSO + super_packet("10.244.2.7", "10.244.1.5")
    cut = frame[:MTU] + frame[2 * MTU:]  # the second datagram lost on the way
    rig.assert_dropped("peer", cut[:len(cut) // MTU * MTU], packet.MALFORMED)
    assert sum(rig.path.drops.values()) == 1


def test_small_frames_leave_one_per_datagram_batched_or_not(rig):
    partial_udp = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 20, 6)
    sent = [ipv4("10.244.1.5", "10.244.2.7", payload=bytes([i]) * 100) for i in range(20)]
    for data in sent:
        rig.tun_send(data, partial_udp)
    for data in sent:
        assert rig.peer.recv(2048) == partial_udp + decremented(data)
    assert eventually(lambda: rig.path.totals()[:2] == [20, 20 * len(sent[0])])


def test_full_sized_frames_leave_one_per_send_for_the_kernel_to_fragment(rig):
    partial_tcp = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, 0, 0, 0, 20, 16)
    frames = [partial_tcp + bytes(tcp("10.244.1.5", "10.244.2.7", 1 + i * 1420, bytes(1420))) for i in range(3)]
    assert len(frames[0]) > MTU  # 10 bytes more than a datagram of the underlay carries
    sends = []
    send = rig.path._send
    rig.path._send = lambda parts, count, size, *rest: sends.append((count, size)) or send(parts, count, size, *rest)
    rig.path._send_run(memoryview(bytearray(b"".join(frames))), 3 * len(frames[0]), 3, len(frames[0]), True)
    assert sends == [(1, len(frames[0]))] * 3
    for frame in frames:
        assert rig.peer.recv(2048) == frame[:VNET_HDR_LEN] + decremented(frame[VNET_HDR_LEN:])


def test_a_lone_finished_packet_leaves_in_flannels_format(rig):
    ping = ipv4("10.244.1.5", "10.244.2.7", proto=1, payload=bytes(64))
    rig.tun_send(ping)  # a plain virtio-net header: nothing left for the peer's kernel to do
    assert rig.peer.recv(2048) == decremented(ping)
    assert eventually(lambda: rig.path.totals()[:2] == [1, len(ping)])


def test_a_fast_datagram_enters_the_tun_as_it_came_ttl_aside(rig):
    big = super_packet("10.244.2.7", "10.244.1.5")
    rig.peer.sendto(GSO + big, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(big)
    assert eventually(lambda: rig.path.totals()[2:] == [1, len(big)])


def test_plain_datagrams_are_still_accepted_in_fast_mode(rig):
    inbound = ipv4("10.244.2.7", "10.244.1.5")
    rig.peer.sendto(inbound, ("127.0.0.1", rig.port))
    assert rig.tun_recv()[12:] == inbound[12:]


def test_flannel_mode_drops_and_counts_what_still_needs_offloads():
    r = Rig([OWN, PEER])
    try:
        r.tun_send(super_packet(), GSO)
        assert r.wait_drops(vnet.OFFLOAD_TO_PLAIN_PEER, 1) == 1
        plain = ipv4("10.244.1.5", "10.244.2.7")
        r.tun_send(plain)
        assert r.peer.recv(2048) == decremented(plain)  # nothing else went out before it
    finally:
        r.close()


def fast(data, header=GSO):
    return bytes(header) + bytes(data)


HOSTILE = [
    ("peer", fast(super_packet("10.244.3.7", "10.244.1.5")), packet.SPOOFED_SOURCE),
    ("peer", fast(super_packet("10.244.2.7", "10.244.3.5")), packet.NOT_OUR_SUBNET),
    ("peer", fast(super_packet("10.244.2.7", "10.244.1.5", ttl=1)), packet.TTL_EXPIRED),
    ("stranger", fast(super_packet("10.244.2.7", "10.244.1.5")), packet.UNKNOWN_PEER),
    ("peer", fast(super_packet("10.244.2.7", "10.244.1.5"))[:-1], packet.MALFORMED),
    ("peer", fast(super_packet("10.244.2.7", "10.244.1.5"), b"\x01\x05" + GSO[2:]), vnet.BAD_VNET_HDR),
    ("peer", fast(super_packet("10.244.2.7", "10.244.1.5"), GSO[:4] + b"\x01\x00" + GSO[6:]), vnet.BAD_GSO),
    ("peer", fast(ipv4("10.244.2.7", "10.244.1.5", payload=bytes(MTU)), bytes(10)), packet.OVERSIZED),
]


@pytest.mark.parametrize("sender, data, reason", HOSTILE, ids=[c[2] for c in HOSTILE])
def test_hostile_fast_datagrams_are_dropped_and_counted(rig, sender, data, reason):
    rig.assert_dropped(sender, data, reason)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 0x3F), st.binary(max_size=3000)), min_size=1, max_size=10))
def test_no_fast_looking_datagram_stops_the_loop(rig, datagrams):
    for first, rest in datagrams:
        rig.peer.sendto(bytes([first]) + rest, ("127.0.0.1", rig.port))
    good = fast(super_packet("10.244.2.7", "10.244.1.5", segments=2))
    rig.peer.sendto(good, ("127.0.0.1", rig.port))
    while rig.tun_recv_frame()[10 + 12:] != good[10 + 12:]:
        pass  # anything random that happened to be valid arrives first
    assert rig.path.alive()
