"""Frames from a host of the previous release (flannelette 0.1) cross into flannel0, whole or put back together."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flannelette.host.datapath import formats, frames, packet, vnet
from flannelette.host.datapath.vnet import VNET_HDR_LEN
from flannelette.host.kernel.udp import SOL_UDP, UDP_SEGMENT
from ipv4_packets import ipv4, tcp
from test_datapath import MTU, OTHER, OWN, PEER, Rig, eventually

GSO = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 52, 1420, 20, 16)


def super_packet(src="10.244.2.7", dst="10.244.1.5", segments=40, ttl=64):
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


def chunks(frame):
    """The datagrams the previous release cut a frame into: of the overlay MTU, the last shorter."""
    chunk = MTU if len(frame) % MTU else MTU - 4
    return [frame[i:i + chunk] for i in range(0, len(frame), chunk)]


def test_a_frame_in_one_read_enters_the_tun_whole(rig):
    big = super_packet()
    frame = GSO + big
    rig.peer.sendmsg([frame], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", MTU))], 0, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(big)
    assert eventually(lambda: rig.path.totals()[2:] == [1, len(big)])


def test_a_frame_in_datagrams_of_their_own_enters_the_tun_whole(rig):
    big = super_packet()
    for piece in chunks(GSO + big):  # as a real wire delivers them: one datagram per read
        rig.peer.sendto(piece, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(big)
    assert sum(rig.path.drops.values()) == 0


def test_a_frame_missing_a_datagram_is_dropped_and_the_next_one_arrives(rig):
    lost = chunks(GSO + super_packet())
    del lost[2]
    good = super_packet(segments=3)
    for piece in lost + chunks(GSO + good):
        rig.peer.sendto(piece, ("127.0.0.1", rig.port))
    assert rig.tun_recv_frame() == GSO + decremented(good)
    assert rig.path.drops[frames.FRAME_INCOMPLETE] == 1


def test_the_previous_release_is_recognised_and_sent_flannels_format(rig):
    rig.peer.sendto(GSO + super_packet(segments=1), ("127.0.0.1", rig.port))
    rig.tun_recv_frame()
    peer = rig.path.table.peer_at("127.0.0.2")
    assert eventually(lambda: peer.exchange.state == "previous") and peer.format == formats.FLANNEL


def test_plain_datagrams_are_accepted_beside_frames(rig):
    inbound = ipv4("10.244.2.7", "10.244.1.5")
    rig.peer.sendto(inbound, ("127.0.0.1", rig.port))
    assert rig.tun_recv()[12:] == inbound[12:]


def framed(data, header=GSO):
    return bytes(header) + bytes(data)


HOSTILE = [
    ("peer", framed(super_packet("10.244.3.7", "10.244.1.5", segments=1)), packet.SPOOFED_SOURCE),
    ("peer", framed(super_packet("10.244.2.7", "10.244.3.5", segments=1)), packet.NOT_OUR_SUBNET),
    ("peer", framed(super_packet("10.244.2.7", "10.244.1.5", segments=1, ttl=1)), packet.TTL_EXPIRED),
    ("stranger", framed(super_packet("10.244.2.7", "10.244.1.5", segments=1)), packet.UNKNOWN_PEER),
    ("peer", framed(super_packet("10.244.2.7", "10.244.1.5", segments=1))[:-1], packet.MALFORMED),
    ("peer", framed(super_packet("10.244.2.7", "10.244.1.5", segments=1), b"\x01\x05" + GSO[2:]), frames.BAD_VNET_HDR),
    ("peer", framed(super_packet("10.244.2.7", "10.244.1.5", segments=1), GSO[:4] + b"\x01\x00" + GSO[6:]),
     frames.BAD_GSO),
    ("peer", framed(ipv4("10.244.2.7", "10.244.1.5", payload=bytes(MTU)), bytes(10)), packet.OVERSIZED),
]


@pytest.mark.parametrize("sender, data, reason", HOSTILE, ids=[c[2] for c in HOSTILE])
def test_hostile_frames_are_dropped_and_counted(rig, sender, data, reason):
    rig.assert_dropped(sender, data, reason)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=3000)), min_size=1, max_size=10))
def test_no_frame_looking_datagram_stops_the_loop(rig, datagrams):
    for first, rest in datagrams:
        rig.peer.sendto(bytes([first]) + rest, ("127.0.0.1", rig.port))
    good = framed(super_packet("10.244.2.7", "10.244.1.5", segments=1))
    for _ in range(2):  # a frame left waiting for its rest takes the first as its own, and is lost with it
        rig.peer.sendto(good, ("127.0.0.1", rig.port))
    while rig.tun_recv_frame()[10 + 12:] != good[10 + 12:]:
        pass  # anything random that happened to be valid arrives first
    assert rig.path.alive()
