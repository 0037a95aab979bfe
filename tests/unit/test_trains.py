"""Trains on bytes: a frame cut into datagrams that say where they belong, put back together, salvaged on loss."""

import random
import struct

from hypothesis import example, given, settings, strategies as st

from flannelette.host.datapath import frames, trains, vnet
from ipv4_packets import tcp
from test_segments import partial

CHUNK = 1468
MTU = 1472


def frame_of(payload, mss=1420, flags=0x18, seq=1000):
    """A TCP super-packet as flannel0 hands it over: GSO header, then the packet, its checksum pending."""
    packet = partial(tcp("10.244.2.7", "10.244.1.5", seq, payload, flags=flags))
    return vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 52, mss, 20, 16) + bytes(packet)


def cut(frame, chunk=CHUNK, number=9):
    """The train's datagrams, as docs/wire.md lays them out (written here independently of the sender)."""
    copy = trains.copy_length(frame)
    count, _, shared = trains.layout(len(frame), copy, chunk)
    pieces = [frame[i:i + chunk] for i in range(0, len(frame), chunk)]
    if copy and shared:
        pieces[-1] = frame[:copy] + pieces[-1]
    elif copy:
        pieces[-1] = pieces[-1] + bytes(chunk - len(pieces[-1]))
        pieces.append(frame[:copy])
    assert len(pieces) == count
    return [trains.HEADER.pack(0xF4, number, i, count) + piece for i, piece in enumerate(pieces)]


def assemble(datagrams, now=0.0):
    first = datagrams[0]
    _, number, _, count = trains.HEADER.unpack_from(first)
    train = trains.Assembly(number, count, now)
    for datagram in datagrams:
        _, _, index, _ = trains.HEADER.unpack_from(datagram)
        assert train.add(index, memoryview(bytearray(datagram))[trains.HEADER_LEN:])
    return train


@settings(max_examples=300, deadline=None)
@given(payload=st.integers(1500, 64000), order=st.randoms(use_true_random=False))
def test_a_train_in_any_order_gives_back_its_frame(payload, order):
    frame = frame_of(bytes(range(256)) * (payload // 256) + bytes(payload % 256))
    datagrams = cut(frame)
    assert all(len(d) <= MTU for d in datagrams) and all(len(d) == MTU for d in datagrams[:-2])
    order.shuffle(datagrams)
    train = assemble(datagrams)
    assert train.whole()
    pieces, length = train.frame_parts()
    assert b"".join(bytes(p) for p in pieces) == frame and length == len(frame)
    assert frames.problem(bytes(pieces[0]), length, MTU) is None


def test_the_layout_puts_the_header_copy_where_it_fits():
    assert trains.layout(3000, 62, CHUNK) == (3, 4 + 62 + 64, True)  # 1468 + 1468 + 64: the copy beside the last chunk
    assert trains.layout(2900, 62, CHUNK) == (3, 4 + 62, False)  # 1432 left: no room, the copy alone
    assert trains.layout(2000, 0, CHUNK) == (2, 4 + 532, False)  # not a super-packet: no copy


def payload_at(frame, start, end):
    return frame[start:end]


@settings(max_examples=300, deadline=None)
@given(payload=st.integers(3000, 64000), lost=st.sets(st.integers(0, 60), min_size=1, max_size=3))
@example(payload=3000, lost={0, 1})  # only the last datagram: its chunk is placed from the frame's end
def test_what_came_of_a_train_goes_in_as_frames_of_their_own(payload, lost):
    data = bytes(random.Random(payload).getrandbits(8) for _ in range(payload))
    frame = frame_of(data, flags=0x18 | 0x01)  # PSH and FIN: on the last piece only
    datagrams = cut(frame)
    kept = [d for i, d in enumerate(datagrams) if i not in lost]
    if len(kept) == len(datagrams) or not kept:
        return
    train = assemble(kept)
    assert not train.whole()
    pieces = train.salvage()
    seq0 = struct.unpack_from("!I", frame, 10 + 24)[0]
    got = {}
    for piece in pieces:
        assert frames.problem(bytes(piece), len(piece), MTU) is None, bytes(piece[:60]).hex()
        ip = piece[10:]
        assert struct.unpack_from("!H", ip, 2)[0] == len(ip)
        seq = struct.unpack_from("!I", ip, 24)[0]
        body = bytes(ip[52:])
        start = seq - seq0
        assert data[start:start + len(body)] == body  # each piece carries the bytes its sequence number says
        assert not ip[33] & 0x01 or start + len(body) == payload  # FIN only where the stream ended
        got.update((start + i, True) for i in range(len(body)))
    # Everything of the payload that came in a kept chunk goes in (the headers from chunk 0 or the copy).
    count = len(datagrams)
    headers_known = 0 not in lost or count - 1 not in lost
    chunks = -(-len(frame) // CHUNK)
    for index in range(chunks):
        came = index not in lost if not (trains.layout(len(frame), 62, CHUNK)[2] and index == chunks - 1) \
            else count - 1 not in lost
        for offset in range(max(index * CHUNK, 62), min((index + 1) * CHUNK, len(frame)), 397):
            assert got.get(offset - 62, False) == (came and headers_known), (index, offset)


def test_a_datagram_claiming_an_impossible_place_is_refused():
    good = cut(frame_of(bytes(5000)))[0]
    assert trains.datagram_problem(good, len(good)) is None
    for broken in (good[:4], b"\xf4\x01\x05\x05" + good[4:], b"\xf4\x01\x00\x01" + good[4:], b"\xf4\x01\x00\x41" + good[4:],
                   b"\xf3" + good[1:]):
        assert trains.datagram_problem(broken, len(broken)) == trains.BAD_TRAIN


def test_a_train_whose_sizes_do_not_add_up_is_refused():
    datagrams = cut(frame_of(bytes(5000)))
    datagrams[-1] = datagrams[-1][:-1]
    assert assemble(datagrams).frame_parts() is None
    train = trains.Assembly(1, 3, 0.0)
    assert train.add(0, memoryview(bytearray(CHUNK)))
    assert not train.add(1, memoryview(bytearray(CHUNK - 1)))  # not the size of the chunks before it
    assert not train.add(0, memoryview(bytearray(CHUNK)))  # again


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.binary(min_size=0, max_size=1600)), min_size=1, max_size=8))
def test_random_bodies_never_raise_and_anything_taken_is_a_sound_frame(bodies):
    train = trains.Assembly(3, 6, 0.0)
    for index, body in bodies:
        train.add(index, memoryview(bytearray(body)))
    if train.whole():
        got = train.frame_parts()
        if got is not None:
            pieces, length = got
            assert sum(map(len, pieces)) == length
    for piece in train.salvage():
        assert frames.problem(bytes(piece), len(piece), 65535) is None
