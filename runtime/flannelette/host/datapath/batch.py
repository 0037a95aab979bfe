"""Check and rewrite a run of equal-size packets in a few calls into C, not a Python step per packet.

UDP_GRO hands over up to 64 datagrams of one size from one sender in one read,
and a TCP stream fills flannel0 with packets of one size. One
`struct.unpack_from` over the whole run gives every header field of every
packet in one tuple; its slices (`fields[SRC::WIDTH]` is every source) are checked
with min, max and count, which run in C. A run that fails any check goes back
to the per-packet path, which finds the offending packet and counts why.

Nothing here touches a device or a socket: it is tested on bytes.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from itertools import groupby

from flannelette.host.datapath.coalesce import TCP_ACK, TCP_PSH
from flannelette.host.datapath.vnet import IPPROTO_TCP, IPPROTO_UDP
from flannelette.host.datapath.packet import CHECKSUM, IPV4_FIELDS, IPV4_HEADER_LEN, WORD, check_after_ttl

# What one packet of a run gives, in words that must match across a run that
# joins: version, TOS and length; fragment field, TTL and protocol; then the
# header checksum (patched with the TTL), addresses, ports, sequence and ACK
# numbers, TCP data offset and flags, and the TCP options, compared whole.
# The IP ID, window and TCP checksum and urgent pointer may differ: skipped.
HEAD, MIDDLE, CHECK, SRC, DST, PORTS, SEQ, ACK, OFF_FLAGS, OPTIONS = range(10)
WIDTH = 10
PACKET_FIELDS = "I2xIHIIIIIH6x"  # 40 bytes
MIN_SIZE = 40
SEQ_SPACE = 1 << 32
NOT_FRAGMENTED = (0, 0x4000)  # flags and offset of a whole packet, DF clear or set
JOINING_FLAGS = (TCP_ACK, TCP_ACK | TCP_PSH)  # as in flannelette.host.datapath.coalesce: nothing else joins
SAME_IN_A_JOIN = (HEAD, MIDDLE, SRC, DST, PORTS, ACK, OPTIONS)
TTL_DOWN = bytes([0]) + bytes(range(255))  # a bytes.translate table: every TTL one lower (0 stays 0)


PLUS_ONE = bytes(range(1, 256)) + bytes([0])  # a bytes.translate table: every byte one higher


def header_len(view, start: int, size: int) -> int:
    """IPv4 + TCP header length of the packet at `start` when it is TCP, else MIN_SIZE: the run's layout key."""
    if size > 33 and view[start + 9] == IPPROTO_TCP:
        length = 20 + (view[start + 32] >> 4) * 4
        if MIN_SIZE <= length <= size:
            return length
    return MIN_SIZE


@lru_cache(maxsize=512)
def run_layout(count: int, stride: int, headers: int) -> struct.Struct:
    """The fields of `count` packets `stride` bytes apart whose headers take `headers` bytes.

    The layout ends with the last packet's headers, so it fits a buffer whose
    last slot is no longer than its packet.
    """
    fields = f"{PACKET_FIELDS}{headers - MIN_SIZE}s"
    return struct.Struct("!" + f"{fields}{stride - headers}x" * (count - 1) + fields)


@lru_cache(maxsize=512)
def _headers_layout(count: int, stride: int, length: int) -> struct.Struct:
    return struct.Struct(f"{length}s{stride - length}x" * (count - 1) + f"{length}s")


def unpack_headers(view, start: int, count: int, stride: int, length: int) -> tuple:
    """The first `length` bytes of each of `count` slots `stride` apart from `start`, as bytes."""
    return _headers_layout(count, stride, length).unpack_from(view, start)


def same_headers(view, count: int, size: int, length: int, expected=None) -> bool:
    """Whether the first `length` bytes of each of `count` slots of `size` bytes are the same (and `expected`)."""
    headers = _headers_layout(count, size, length).unpack_from(view, 0)
    return headers.count(headers[0] if expected is None else expected) == count


def unpack_run(view, start: int, count: int, stride: int, size: int = 0):
    """The fields of the `count` packets of `size` bytes (default: `stride`), `stride` apart from `start` (WIDTH values each)."""
    return run_layout(count, stride, header_len(view, start, size or stride)).unpack_from(view, start)


def valid_run(fields, count: int, size: int, shift: int, source_key: int, own_key: int) -> bool:
    """Every packet an IPv4 packet without options of exactly `size` bytes, TTL above 1, from the sender's subnet to ours.

    Version, TOS, length, fragment field, TTL and protocol must be the same in
    every packet: a run that mixes them is left to the per-packet path.
    """
    heads, middles = fields[HEAD::WIDTH], fields[MIDDLE::WIDTH]
    head, middle = heads[0], middles[0]
    if head >> 24 != 0x45 or head & 0xFFFF != size or (middle >> 8) & 0xFF <= 1:
        return False
    if heads.count(head) != count or middles.count(middle) != count:
        return False
    sources, destinations = fields[SRC::WIDTH], fields[DST::WIDTH]
    return (min(sources) >> shift == source_key == max(sources) >> shift
            and min(destinations) >> shift == own_key == max(destinations) >> shift)


def accepts(fields, length: int, mtu: int, shift: int, source_key: int, own_key: int) -> bool:
    """The common case of the inbound rule for one packet, from its IPV4_FIELDS: no options, exactly `length` bytes
    within the MTU, TTL above 1, from the sender's subnet to ours. False leaves the verdict to the full rule
    (packet.header_problem, LeaseTable.sender_problem), which a property test holds this to."""
    ver_ihl, total, ttl, _, source, destination = fields
    return (ver_ihl == 0x45 and total == length <= mtu and ttl > 1
            and source >> shift == source_key and destination >> shift == own_key)


def completable(fields, size: int) -> bool:
    """Whether the checksum of every packet of a valid run can be left to the receiving kernel (segments):
    TCP with its whole header inside, or UDP, and no fragment."""
    middle = fields[MIDDLE]
    if (middle >> 16) & 0x3FFF:
        return False
    if middle & 0xFF == IPPROTO_UDP:
        return True
    offsets = fields[OFF_FLAGS::WIDTH]
    return middle & 0xFF == IPPROTO_TCP and min(offsets) >> 12 >= 5 and 20 + (max(offsets) >> 12) * 4 <= size


@lru_cache(maxsize=512)
def _uniform_layout(count: int, stride: int, headers: int) -> struct.Struct:
    # Per packet: the bytes before the TCP sequence number, the number, the bytes after it up to the payload.
    one = f"{UNIFORM_SEQ_AT}sI{headers - UNIFORM_SEQ_AT - 4}s"
    return struct.Struct("!" + f"{one}{stride - headers}x" * (count - 1) + one)


UNIFORM_SEQ_AT = 24  # an IPv4 header without options, then TCP's ports


def uniform_run(view, ip: int, count: int, stride: int, size: int, shift: int, source_key: int, own_key: int) -> int:
    """The payload of each packet when the run is consecutive full segments of one TCP flow with headers the same
    to the byte but for the sequence number, the first of which passes the inbound rule; else 0.

    What the sender's cut (flannelette.host.datapath.segments) makes of a
    super-packet: one header for all full segments. A faster way to the same
    verdict as valid_run and joining_payload for such a run, which a property
    test holds it to; anything else (plain segments of a kernel's TSO, whose IP
    IDs and checksums differ) is left to them.
    """
    if count < 2 or size < MIN_SIZE or view[ip] != 0x45 or view[ip + 9] != IPPROTO_TCP:
        return 0
    headers = 20 + (view[ip + 32] >> 4) * 4
    payload = size - headers
    if headers < MIN_SIZE or payload <= 0:
        return 0
    fields = _uniform_layout(count, stride, headers).unpack_from(view, ip)
    before, seqs, after = fields[0::3], fields[1::3], fields[2::3]
    seq = seqs[0]
    end = seq + count * payload
    if before.count(before[0]) != count or after.count(after[0]) != count or end > SEQ_SPACE \
            or seqs != tuple(range(seq, end, payload)):
        return 0
    ver_ihl, total, ttl, _, source, destination = IPV4_FIELDS.unpack_from(view, ip)
    if total != size or ttl <= 1 or source >> shift != source_key or destination >> shift != own_key:
        return 0
    if WORD.unpack_from(view, ip + 6)[0] & 0x3FFF or view[ip + 33] not in JOINING_FLAGS:
        return 0
    return payload


def _joining_words(off_flags: int):
    """The two data-offset-and-flags words a segment that joins may have: ACK, or ACK and PSH."""
    offset = off_flags & 0xFF00
    return offset | JOINING_FLAGS[0], offset | JOINING_FLAGS[1]


def joining_payload(fields, count: int, size: int) -> int:
    """The payload of each segment when the run is consecutive full segments of one TCP flow; else 0.

    The same rules as flannelette.host.datapath.coalesce: one flow (addresses, ports, ACK
    number, TOS, options), sequence numbers without a gap, flags ACK or
    ACK+PSH only, no fragments.
    """
    first = fields[:WIDTH]
    middle, off_flags = first[MIDDLE], first[OFF_FLAGS]
    if middle & 0xFF != IPPROTO_TCP or middle >> 16 not in NOT_FRAGMENTED:
        return 0
    offset = off_flags >> 12
    payload = size - 20 - offset * 4
    if payload <= 0 or offset < 5:
        return 0
    for field in SAME_IN_A_JOIN:
        if fields[field::WIDTH].count(first[field]) != count:
            return 0
    words, ack, push = fields[OFF_FLAGS::WIDTH], *_joining_words(off_flags)
    if words.count(ack) + words.count(push) != count:
        return 0
    seq = first[SEQ]
    end = seq + count * payload
    if end > SEQ_SPACE or fields[SEQ::WIDTH] != tuple(range(seq, end, payload)):
        return 0  # a gap, or the sequence space wrapping inside the run (rare: left to the per-packet path)
    return payload


def joins(fields, count: int, size: int):
    """The run as consecutive joins, [(first packet, packets, payload each)], or None when a part would not join whole.

    A run splits where the TCP options change: a new timestamp, at the
    sender's next write, as the kernel's GRO splits it.
    """
    payload = joining_payload(fields, count, size)
    if payload:
        return [(0, count, payload)]
    parts, first = [], 0
    for _, group in groupby(fields[OPTIONS::WIDTH]):
        n = len(list(group))
        payload = joining_payload(fields[first * WIDTH:(first + n) * WIDTH], n, size)
        if not payload:
            return None
        parts.append((first, n, payload))
        first += n
    return parts if len(parts) > 1 else None


def may_join(fields, count: int, size: int) -> bool:
    """Whether any packet of a valid run might join another (TCP with a payload): if so, flannelette.host.datapath.coalesce decides."""
    if fields[MIDDLE] & 0xFF != IPPROTO_TCP:  # the same protocol throughout: valid_run saw to it
        return False
    return size > 20 + (min(fields[OFF_FLAGS::WIDTH]) >> 12) * 4


def any_push(fields) -> bool:
    return fields[OFF_FLAGS::WIDTH].count(_joining_words(fields[OFF_FLAGS])[1]) > 0


def decrement_ttls(view, start: int, checks, count: int, stride: int) -> None:
    """Decrement the TTL of `count` packets `stride` bytes apart from `start` and patch their header checksums (`checks`).

    Through strided views of `view` (a memoryview): no Python step per packet.
    """
    end = start + count * stride
    view[start + 8:end:stride] = bytes(view[start + 8:end:stride]).translate(TTL_DOWN)
    high = bytes(view[start + 10:end:stride])
    # A checksum below 0xFEFF rises by exactly 0x0100 when the TTL drops by
    # one: only its high byte moves. The few others are worked out one by one.
    view[start + 10:end:stride] = high.translate(PLUS_ONE)
    if 0xFF in high or 0xFEFF in checks:
        for i, check in enumerate(checks):
            if check >> 8 == 0xFF or check == 0xFEFF:
                CHECKSUM.pack_into(view, start + i * stride + 10, check_after_ttl(check))


@lru_cache(maxsize=64)
def gapped(count: int, gap: int, length: int) -> struct.Struct:
    """`count` slots of `gap` bytes to skip, then `length` bytes to take."""
    return struct.Struct(f"{gap}x{length}s" * count)


def payloads(view, start: int, count: int, stride: int, headers: int, size: int = 0) -> list:
    """Views of the bytes after its `headers` of each of `count` packets of `size` bytes (default: `stride`), `stride` apart.

    (Measured: a comprehension beats map over slices.)
    """
    payload = (size or stride) - headers
    return [view[at:at + payload] for at in range(start + headers, start + count * stride, stride)]


def continues(view, start: int, size: int, headers: int, fields, count: int, payload: int) -> bool:
    """Whether the shorter packet at `start` is the next segment of the run's flow, and may end the joined packet."""
    if size <= headers or size - headers > payload:
        return False
    tail = run_layout(1, size, headers).unpack_from(view, start)
    return (tail[HEAD] == (fields[HEAD] & ~0xFFFF) | size and tail[OFF_FLAGS] in _joining_words(fields[OFF_FLAGS])
            and all(tail[field] == fields[field] for field in SAME_IN_A_JOIN[1:])
            and tail[SEQ] == (fields[SEQ] + count * payload) % SEQ_SPACE)


# What the send side checks of each packet read from flannel0: version and
# header length, TTL, protocol, header checksum (patched with the TTL) and destination.
OUT_VER_IHL, OUT_TTL, OUT_PROTO, OUT_CHECK, OUT_DST = range(5)
OUT_WIDTH = 5
OUTBOUND_FIELDS = "B7xBBH4xI"  # IPV4_HEADER_LEN bytes
OUTBOUND = struct.Struct("!" + OUTBOUND_FIELDS)


@lru_cache(maxsize=512)
def outbound_layout(count: int, size: int, offset: int) -> struct.Struct:
    """The send side's fields of `count` packets of `size` bytes, each `offset` bytes into its slot."""
    return struct.Struct("!" + f"{offset}x{OUTBOUND_FIELDS}{size - offset - IPV4_HEADER_LEN}x" * (count - 1)
                         + f"{offset}x{OUTBOUND_FIELDS}")


def outbound_key(fields, count: int, shift: int):
    """The subnet key every packet of the run is for, when they are all IPv4 with a TTL above 1 and share one; else None."""
    versions, destinations = fields[OUT_VER_IHL::OUT_WIDTH], fields[OUT_DST::OUT_WIDTH]
    if min(versions) < 0x45 or max(versions) > 0x4F or min(fields[OUT_TTL::OUT_WIDTH]) <= 1:
        return None
    key = min(destinations) >> shift
    return key if max(destinations) >> shift == key else None
