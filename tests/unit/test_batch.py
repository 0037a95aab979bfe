"""Runs of packets checked and rewritten at once: the same verdicts and bytes as packet by packet."""

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flannelette.host.datapath import batch, packet, segments, vnet
from flannelette.host.datapath.vnet import VNET_HDR_LEN
from flannelette.host.kernel.udp import SEGMENT, SOL_UDP, UDP_SEGMENT
from ipv4_packets import ipv4, tcp
from test_coalesce import coalesce
from test_datapath import OWN, eventually, rig  # noqa: F401  (rig: the fixture, shared)

A, B = "10.244.2.7", "10.244.1.5"  # from the peer's subnet to ours
SHIFT, PEER_KEY, OWN_KEY = 8, 0x0AF402, 0x0AF401
MSS = 100


def with_field(p, offset, fmt, value):
    """`p` with one IPv4 header field changed and the header checksum made right again."""
    p = bytearray(p)
    struct.pack_into(fmt, p, offset, value)
    struct.pack_into("!H", p, 10, 0)
    struct.pack_into("!H", p, 10, packet.checksum(p[:20]))
    return p


def stream(count, seq=5000, payload=MSS):
    return [tcp(A, B, seq + i * payload, bytes([65 + i % 26]) * payload) for i in range(count)]


def fields_of(packets):
    data = memoryview(b"".join(map(bytes, packets)))
    return batch.unpack_run(data, 0, len(packets), len(packets[0]))


def test_decrement_ttls_matches_one_packet_at_a_time():
    packets = [ipv4(A, B, payload=bytes(40), ttl=ttl) for ttl in (2, 64, 128, 255)]
    packets.append(with_field(ipv4(A, B, payload=bytes(40)), 4, "!H", 0xFFFF))  # a header whose checksum needs the end-around carry
    data = bytearray(b"".join(map(bytes, packets)))
    size = len(packets[0])
    batch.decrement_ttls(memoryview(data), 0, fields_of(packets)[batch.CHECK::batch.WIDTH], len(packets), size)
    for p in packets:
        assert packet.decrement_ttl(p)
    assert bytes(data) == b"".join(map(bytes, packets))
    assert all(packet.checksum(data[i:i + 20]) == 0 for i in range(0, len(data), size))


@given(st.lists(st.tuples(st.integers(2, 255), st.integers(0, 0xFFFF)), min_size=1, max_size=40))
def test_decrement_ttls_matches_one_packet_at_a_time_for_any_ttl_and_checksum(headers):
    size = 24
    data = bytearray(size * len(headers))
    for i, (ttl, check) in enumerate(headers):  # 0xFFxx and 0xFEFF take the slower of the two ways
        struct.pack_into("!BxH", data, i * size + 8, ttl, check)
    expected = bytearray(data)
    for i in range(len(headers)):
        assert packet.decrement_ttl(memoryview(expected)[i * size:(i + 1) * size])
    batch.decrement_ttls(memoryview(data), 0, tuple(check for _, check in headers), len(headers), size)
    assert data == expected


@pytest.mark.parametrize("defect", [
    lambda p: with_field(p, 0, "!B", 0x46),  # IP options
    lambda p: with_field(p, 8, "!B", 1),  # TTL expires here
    lambda p: with_field(p, 12, "!4s", bytes([10, 244, 3, 7])),  # spoofed source
    lambda p: with_field(p, 16, "!4s", bytes([10, 244, 3, 5])),  # not our subnet
    lambda p: with_field(p, 2, "!H", 60),  # total length not the datagram's
])
@pytest.mark.parametrize("where", [0, 3, 7])
def test_any_bad_packet_fails_the_whole_run(defect, where):
    packets = stream(8)
    assert batch.valid_run(fields_of(packets), 8, len(packets[0]), SHIFT, PEER_KEY, OWN_KEY)
    packets[where] = defect(packets[where])
    assert not batch.valid_run(fields_of(packets), 8, len(packets[0]), SHIFT, PEER_KEY, OWN_KEY)


@pytest.mark.parametrize("odd_one", [
    tcp(A, B, 9000, b"x" * MSS),  # a gap in the sequence (the fourth segment would start at 5300)
    tcp(A, B, 5300, b"x" * MSS, flags=0x11),  # FIN
    tcp(A, B, 5300, b"x" * MSS, ack=2000),
    tcp(A, B, 5300, b"x" * MSS, options=b"\x01\x01\x08\x0a\x00\x00\x00\x08\x00\x00\x00\x09"),
    tcp("10.244.2.8", B, 5300, b"x" * MSS),
    with_field(tcp(A, B, 5300, b"x" * MSS), 1, "!B", 0x10),  # another TOS
    with_field(tcp(A, B, 5300, b"x" * MSS), 6, "!H", 0x2000),  # a fragment
    ipv4(A, B, payload=bytes(MSS + 32)),  # UDP of the same size
])
def test_what_breaks_a_join(odd_one):
    packets = stream(6)
    assert batch.joining_payload(fields_of(packets), 6, len(packets[0])) == MSS
    packets[3] = odd_one
    assert batch.joining_payload(fields_of(packets), 6, len(packets[0])) == 0
    assert batch.may_join(fields_of(packets), 6, len(packets[0]))


def test_runs_that_never_join_are_known_without_a_look_at_each():
    acks = [tcp(A, B, 5000, b"", ack=1000 + i) for i in range(4)]
    udp = [ipv4(A, B, payload=bytes(40)) for _ in range(4)]
    assert not batch.may_join(fields_of(acks), 4, len(acks[0]))
    assert not batch.may_join(fields_of(udp), 4, len(udp[0]))


def test_outbound_key_is_the_one_subnet_a_run_goes_to():
    out = [ipv4(B, A) for _ in range(3)]
    layout = batch.outbound_layout(3, len(out[0]), 0)
    assert batch.outbound_key(layout.unpack_from(b"".join(map(bytes, out))), 3, SHIFT) == PEER_KEY
    for odd in (ipv4(B, "10.244.3.1"), ipv4(B, A, ttl=1), b"\x60" + bytes(len(out[0]) - 1)):
        mixed = out[:2] + [odd]
        assert batch.outbound_key(layout.unpack_from(b"".join(map(bytes, mixed))), 3, SHIFT) is None


# -- through a running data path: a run sent with UDP_SEGMENT arrives as one UDP_GRO read ----------

def send_run(rig, packets):
    rig.peer.sendmsg([b"".join(map(bytes, packets))], [(SOL_UDP, UDP_SEGMENT, SEGMENT.pack(len(packets[0])))],
                     0, ("127.0.0.1", rig.port))


def arriving(rig, count):
    return [rig.tun_recv_frame() for _ in range(count)]


ODD_ONES = st.sampled_from([
    lambda i: tcp(A, B, 9000, b"x" * MSS),
    lambda i: tcp(A, B, 5000 + i * MSS, b"x" * MSS, flags=0x18),
    lambda i: tcp(A, B, 5000 + i * MSS, b"x" * MSS, flags=0x11),
    lambda i: tcp("10.244.2.8", B, 5000 + i * MSS, b"x" * MSS),
    lambda i: ipv4(A, B, payload=bytes(MSS + 32)),
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(2, 40), odd=st.dictionaries(st.integers(0, 39), ODD_ONES, max_size=3),
       tail=st.sampled_from([None, 1, 60, MSS - 1]))
def test_a_run_enters_the_tun_as_the_per_packet_path_would_write_it(rig, count, odd, tail):
    packets = stream(count)
    for i, make in odd.items():
        if i < count:
            packets[i] = make(i)
    if tail:
        packets.append(tcp(A, B, 5000 + count * MSS, b"t" * tail))
    want = coalesce(*packets)
    send_run(rig, packets)
    assert arriving(rig, len(want)) == want
    assert eventually(lambda: rig.path.totals()[2] >= len(packets))


NEXT_WRITE = b"\x01\x01\x08\x0a\x00\x00\x00\x08\x00\x00\x00\x09"  # the timestamp of the sender's next write


@pytest.mark.parametrize("split", [1, 5, 11])
@pytest.mark.parametrize("tail", [None, 40])
def test_a_run_splits_into_joins_where_the_timestamp_changes(rig, split, tail):
    packets = stream(12)
    packets[split - 1] = tcp(A, B, 5000 + (split - 1) * MSS, bytes(MSS), flags=0x18)  # PSH ends a write
    for i in range(split, 12):
        packets[i] = tcp(A, B, 5000 + i * MSS, bytes([i]) * MSS, options=NEXT_WRITE)
    if tail:
        packets.append(tcp(A, B, 5000 + 12 * MSS, b"t" * tail, options=NEXT_WRITE))
    want = coalesce(*packets)
    assert len(want) == 2
    send_run(rig, packets)
    assert arriving(rig, 2) == want


@pytest.mark.parametrize("run", [
    stream(40) + [tcp(A, B, 5000 + 40 * MSS, b"t" * 30)],  # one join, with its shorter last segment
    stream(5) + [tcp(A, B, 5000 + i * MSS, b"n" * MSS, options=NEXT_WRITE) for i in range(5, 9)],  # two joins
    [tcp(A, B, 5000, b"", ack=1000 + i) for i in range(10)],  # pure ACKs: each written as it came
])
def test_a_clean_run_is_checked_and_written_without_a_step_per_packet(rig, run):
    per_packet = []
    rig.path._deliver_each = lambda *args: per_packet.append(args)
    want = coalesce(*run)
    send_run(rig, run)
    assert arriving(rig, len(want)) == want
    assert per_packet == []


def test_a_clean_run_read_from_flannel0_is_sent_without_a_step_per_packet(rig):
    frames = [bytes(VNET_HDR_LEN) + bytes(ipv4(B, A, payload=bytes([i]) * 80)) for i in range(6)]
    frames.append(bytes(VNET_HDR_LEN) + bytes(ipv4(B, A, payload=bytes(20))))  # a shorter one ends the run
    per_packet = []
    rig.path._send_each = lambda *args: per_packet.append(args)
    rig.path._send_run(memoryview(bytearray(b"".join(frames))), sum(map(len, frames)), 7, len(frames[0]))
    for frame in frames:
        inner = bytearray(frame[VNET_HDR_LEN:])
        assert packet.decrement_ttl(inner)
        assert rig.peer.recv(2048) == bytes(inner)
    assert per_packet == []


def test_a_spoofed_packet_in_a_run_is_dropped_alone(rig):
    packets = stream(10)
    packets[4] = tcp("10.244.3.7", B, 5400, b"x" * MSS)
    send_run(rig, packets)
    want = coalesce(*packets[:4]) + coalesce(*packets[5:])
    assert arriving(rig, 2) == want
    assert rig.wait_drops(packet.SPOOFED_SOURCE, 1) == 1


def test_a_run_read_from_the_tun_leaves_as_that_many_datagrams(rig):
    packets = [ipv4(B, A, payload=bytes(80)) for _ in range(6)] + [ipv4(B, A, payload=bytes(20))]
    for p in packets:
        rig.tun_send(p)
    for p in packets:
        assert packet.decrement_ttl(p)
        assert rig.peer.recv(2048) == bytes(p)


def test_a_run_with_one_packet_for_no_lease_sends_the_rest_and_answers_that_one(rig):
    packets = [ipv4(B, A, payload=bytes(80)) for _ in range(5)]
    packets[2] = ipv4(B, "10.244.9.9", payload=bytes(80))
    for p in packets:
        rig.tun_send(p)
    assert rig.tun_recv() == packet.net_unreachable(packets[2], OWN.subnet.network_address)
    for p in packets[:2] + packets[3:]:
        assert packet.decrement_ttl(p)
        assert rig.peer.recv(2048) == bytes(p)


def inner_addresses_ok(frame):
    """What the TUN may ever receive from this peer: IPv4 from its subnet to ours, TTL lowered from above 1."""
    ip = frame[VNET_HDR_LEN:]
    return (len(ip) >= 20 and ip[0] >> 4 == 4 and ip[12:15] == bytes([10, 244, 2]) and ip[16:19] == bytes([10, 244, 1])
            and ip[8] >= 1 and struct.unpack_from("!H", ip, 2)[0] == len(ip))


def received_frames(rig):
    frames = []
    rig.tun.settimeout(0.05)
    try:
        while True:
            frames.append(rig.tun_recv_frame())
    except socket.timeout:
        return frames


def udp_segments(count):
    """Datagrams of the fast format carrying UDP: a segment header, then the packet (its checksum left pending)."""
    return [bytearray(segments.HEADER + ipv4(A, B, payload=struct.pack("!HHHH", 1, 2, 128, 0) + bytes([i]) * 120))
            for i in range(count)]


def test_a_run_of_segments_enters_the_tun_packet_by_packet_its_checksums_left_to_the_kernel(rig):
    datagrams = udp_segments(8)
    per_packet = []
    rig.path._deliver_each = lambda *args: per_packet.append(args)
    send_run(rig, datagrams)
    expected = []
    for datagram in datagrams:
        ip = bytearray(datagram[segments.HEADER_LEN:])
        assert packet.decrement_ttl(ip)
        expected.append(segments.vnet_header(20, 17) + bytes(ip))
    assert arriving(rig, 8) == expected
    assert eventually(lambda: rig.path.totals()[2:] == [8, 8 * (len(datagrams[0]) - segments.HEADER_LEN)])
    assert per_packet == []  # checked as a run


def test_a_spoofed_packet_in_a_run_of_segments_is_dropped_alone(rig):
    datagrams = udp_segments(6)
    datagrams[3] = bytearray(segments.HEADER + ipv4("10.244.3.7", B, payload=struct.pack("!HHHH", 1, 2, 128, 0)
                                                    + bytes(120)))
    send_run(rig, datagrams)
    assert len(arriving(rig, 5)) == 5
    assert rig.wait_drops(packet.SPOOFED_SOURCE, 1) == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(2, 24), fast=st.booleans(),
       damage=st.lists(st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 255)), min_size=1, max_size=6))
def test_a_damaged_run_delivers_only_what_passes_and_counts_the_rest(rig, count, fast, damage):
    packets = udp_segments(count) if fast else stream(count)
    for index, offset, value in damage:
        if index < count:
            packets[index][offset] = value
    before = rig.path.totals()[2] + sum(rig.path.drops.values())
    accounted = lambda: rig.path.totals()[2] + sum(rig.path.drops.values()) - before  # noqa: E731
    send_run(rig, packets)
    # Every datagram of the run is accounted for: delivered (alone or joined) or dropped with a reason.
    assert eventually(lambda: accounted() >= count)
    frames = received_frames(rig)
    assert accounted() <= count
    assert all(inner_addresses_ok(frame) for frame in frames), [bytes(f[:40]).hex() for f in frames]
    assert rig.path.alive()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 24),
       damage=st.lists(st.tuples(st.integers(0, 23), st.integers(0, 29), st.integers(0, 255)), max_size=6))
def test_what_leaves_for_a_flannel_peer_is_ipv4_for_its_subnet_whatever_flannel0_hands_over(rig, count, damage):
    frames = [bytearray(bytes(VNET_HDR_LEN) + ipv4(B, A, payload=bytes([i]) * 100)) for i in range(count)]
    for index, offset, value in damage:  # the virtio-net header and the IPv4 header
        if index < count:
            frames[index][offset] = value
    for frame in frames:
        rig.tun.send(bytes(frame))
    rig.peer.settimeout(0.05)
    sent = 0
    try:
        while True:
            data = rig.peer.recv(2048)
            assert data[0] >> 4 == 4 and data[16:19] == bytes([10, 244, 2]), data[:20].hex()
            sent += 1
    except socket.timeout:
        pass
    if not damage:
        assert sent == count
    received_frames(rig)  # answers (net unreachable) for what had no lease
    assert rig.path.alive()


@settings(max_examples=2000, deadline=None)
@given(ver_ihl=st.sampled_from([0x45, 0x46, 0x44, 0x55]), length=st.integers(0, 1600), claimed=st.integers(0, 1600),
       ttl=st.integers(0, 3), source=st.sampled_from([A, "10.244.3.1", B]), destination=st.sampled_from([B, A, "8.8.8.8"]))
def test_the_quick_check_of_one_packet_never_accepts_what_the_rule_refuses(ver_ihl, length, claimed, ttl, source,
                                                                           destination):
    from flannelette.host.datapath.leases import LeaseTable
    from test_datapath import PEER
    table = LeaseTable(OWN, [OWN, PEER], 24, 8285)
    peer = table.peer_at(str(PEER.public_ip))
    data = bytearray(max(length, 20))
    data[:20] = ipv4(source, destination, payload=b"", ttl=ttl)[:20]
    data[0] = ver_ihl
    struct.pack_into("!H", data, 2, claimed)
    data = data[:length] if length >= 20 else data
    fields = packet.IPV4_FIELDS.unpack_from(data)
    n = len(data)
    if batch.accepts(fields, n, 1472, table.shift, peer.key, table.own_key):
        assert packet.header_problem(data, n, 1472) is None and table.sender_problem(peer, data) is None and data[8] > 1
