"""The fast format between flannelette hosts: every datagram one standalone IPv4 packet, its checksum left to the receiver.

    0       1       2       3       4
    +-------+-------+-------+-------+-------------------------------------------
    | 0xF3  | 0x01  |   0   |   0   | one IPv4 packet, TCP or UDP, not a fragment;
    +-------+-------+-------+-------+ its transport checksum field holds the
                                      pseudo-header sum (as CHECKSUM_PARTIAL)

The sender reads TCP super-packets of up to 64 KB from flannel0 and cuts them
here into real TCP segments, as the kernel's own segmentation would, with
header fields patched and no payload ever summed; the receiver writes each
segment (or a run of them, joined) into its flannel0 with a virtio-net header
asking its kernel to complete the checksum. Nothing depends on how the kernels
on the path batch the datagrams: each one is a packet on its own, so a lost
datagram costs one TCP segment, as it would through a kernel tunnel.

To a peer on flannel's format the same cutter makes plain segments, each with
its full checksum summed here (slower, but a flanneld host needs it).

Nothing here touches a device or a socket: it is tested on bytes.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import List, Optional, Tuple

from flannelette.host.datapath import formats
from flannelette.host.datapath.packet import IPV4_HEADER_LEN, MALFORMED, OVERSIZED, SHORT, checksum, header_problem
from flannelette.host.datapath.vnet import (
    CSUM_OFFSETS, F_NEEDS_CSUM, GSO_NONE, IPPROTO_TCP, IPPROTO_UDP, VNET_HDR, VNET_HDR_LEN,
)

HEADER = bytes((formats.SEGMENT, F_NEEDS_CSUM, 0, 0))
HEADER_LEN = len(HEADER)
BAD_SEGMENT = "bad_segment"  # a segment the receiver's kernel could not complete: not TCP or UDP, a fragment, cut short
DROP_REASONS = (BAD_SEGMENT,)

MAX_SEND = 65507  # bytes of UDP payload one send can carry, however the kernel cuts it
MAX_SEGMENTS = 64  # datagrams per UDP_SEGMENT send (the kernel's UDP_MAX_SEGMENTS before Linux 6.2)
WORD = struct.Struct("!H")
SEQ = struct.Struct("!I")
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
DF = 0x4000
SEQ_SPACE = 1 << 32


# -- receiving -----------------------------------------------------------------


def problem(datagram, n: int, mtu: int) -> Optional[str]:
    """Why the first `n` bytes of `datagram` are not one sound segment, or None.

    Sound: the header as above, then a well-formed IPv4 packet of exactly the
    rest, no larger than the overlay MTU, TCP or UDP, not a fragment, with its
    whole transport header inside it, so the checksum the kernel completes is
    that of this one packet.
    """
    if n < HEADER_LEN + IPV4_HEADER_LEN:
        return SHORT
    if bytes(datagram[:HEADER_LEN]) != HEADER:
        return MALFORMED
    inner = datagram[HEADER_LEN:n]
    reason = header_problem(inner, n - HEADER_LEN, mtu)
    if reason is not None:
        return reason
    return _transport_problem(inner, n - HEADER_LEN)


def _transport_problem(inner, length: int) -> Optional[str]:
    ihl = (inner[0] & 0x0F) * 4
    if WORD.unpack_from(inner, 6)[0] & 0x3FFF:
        return BAD_SEGMENT
    protocol = inner[9]
    if protocol == IPPROTO_TCP:
        if ihl + 20 > length or (inner[ihl + 12] >> 4) < 5 or ihl + (inner[ihl + 12] >> 4) * 4 > length:
            return BAD_SEGMENT
        return None
    if protocol == IPPROTO_UDP and ihl + 8 <= length:
        return None
    return BAD_SEGMENT


@lru_cache(maxsize=32)
def vnet_header(ihl: int, protocol: int) -> bytes:
    """The virtio-net header a segment is written into flannel0 with: complete the checksum, nothing else."""
    return VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, CSUM_OFFSETS[protocol])


# -- checksums -------------------------------------------------------------------


def ones_sum(data) -> int:
    """The ones'-complement sum of `data` as 16-bit big-endian words (RFC 1071), in a few calls into C.

    A number written in base 65536 is congruent to the sum of its digits
    modulo 65535, which is what the end-around carry computes.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    if not value:
        return 0
    return value % 0xFFFF or 0xFFFF


def fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_base(ip) -> int:
    """The pseudo-header sum of an IPv4 packet without its length: addresses and protocol."""
    src_hi, src_lo, dst_hi, dst_lo = struct.unpack_from("!HHHH", ip, 12)
    return src_hi + src_lo + dst_hi + dst_lo + ip[9]


def complete_checksum(ip, csum_start: int, csum_offset: int) -> None:
    """Finish in place the transport checksum of a packet whose check field holds its pseudo-header sum."""
    at = csum_start + csum_offset
    check = ~ones_sum(ip[csum_start:]) & 0xFFFF
    if check == 0 and ip[9] == IPPROTO_UDP:
        check = 0xFFFF  # in UDP, 0 would mean "no checksum"
    WORD.pack_into(ip, at, check)


# -- sending ---------------------------------------------------------------------


@lru_cache(maxsize=256)
def _slices(count: int, size: int) -> struct.Struct:
    return struct.Struct(f"{size}s" * count)


@lru_cache(maxsize=64)
def _numbers(count: int) -> struct.Struct:
    return struct.Struct(f"!{count}I")


def tcp_header_len(ip, ihl: int) -> int:
    return (ip[ihl + 12] >> 4) * 4


def cut(ip, mss: int, room: int, partial: bool) -> List[Tuple[list, int, int]]:
    """A TCP packet (a super-packet, or one too large to send whole) as segments: [(iov, datagrams, datagram size)].

    `ip` is the IPv4 packet, its TTL already lowered, its TCP check field
    holding the pseudo-header sum (CHECKSUM_PARTIAL); `mss` the payload per
    segment the sender's TCP asked for; `room` the bytes one datagram carries.
    With `partial`, each datagram is HEADER + a segment whose check field is
    left for the receiver's kernel; without, a plain segment with its full
    checksum. Each send of the list is one UDP_SEGMENT sendmsg: datagrams of
    one size, the last maybe shorter.

    As the kernel's TCP segmentation does it: sequence numbers advance by the
    payload, CWR only on the first segment, FIN and PSH only on the last. With
    DF set the IP ID stays the same in every segment (RFC 6864: an atomic
    datagram's ID means nothing), so all full segments share one header but
    for the sequence number; without DF each segment gets the next ID.
    """
    ihl = (ip[0] & 0x0F) * 4
    headers = ihl + tcp_header_len(ip, ihl)
    prefix = HEADER if partial else b""
    mss = min(mss, room - len(prefix) - headers)
    payload = len(ip) - headers
    count = -(-payload // mss)
    last = payload - (count - 1) * mss
    if not partial or WORD.unpack_from(ip, 6)[0] & DF == 0 or count == 1:
        segments = [_segment(ip, ihl, headers, mss, i, count, last, partial) for i in range(count)]
        return _sends([prefix + s for s in segments], [ip[headers + i * mss:headers + i * mss + (last if i == count - 1 else mss)]
                                                      for i in range(count)], headers + len(prefix) + mss)
    full = segment_header(ip, ihl, headers, headers + mss, ip[ihl + 13] & ~(TCP_FIN | TCP_PSH | TCP_CWR), partial)
    size = len(prefix) + headers
    block = bytearray((prefix + full) * (count - 1))
    seq = SEQ.unpack_from(ip, ihl + 4)[0]
    if seq + (count - 1) * mss <= SEQ_SPACE:
        numbers = _numbers(count - 1).pack(*range(seq, seq + (count - 1) * mss, mss))
    else:  # the sequence space wraps inside this super-packet
        numbers = _numbers(count - 1).pack(*[(seq + i * mss) % SEQ_SPACE for i in range(count - 1)])
    at = len(prefix) + ihl + 4
    view = memoryview(block)
    for k in range(4):
        view[at + k::size] = numbers[k::4]
    if ip[ihl + 13] & TCP_CWR:
        block[len(prefix) + ihl + 13] |= TCP_CWR
    heads = list(_slices(count - 1, size).unpack_from(block))
    heads.append(prefix + _segment(ip, ihl, headers, mss, count - 1, count, last, partial))
    bodies = list(_slices(count - 1, mss).unpack_from(ip, headers))
    bodies.append(ip[headers + (count - 1) * mss:])
    return _sends(heads, bodies, size + mss)


def _sends(heads: list, bodies: list, size: int) -> List[Tuple[list, int, int]]:
    per_send = min(MAX_SEGMENTS, MAX_SEND // size)
    iov = [None] * (2 * len(heads))
    iov[0::2] = heads
    iov[1::2] = bodies
    return [(iov[2 * i:2 * (i + per_send)], min(per_send, len(heads) - i), size) for i in range(0, len(heads), per_send)]


def _segment(ip, ihl: int, headers: int, mss: int, index: int, count: int, last: int, partial: bool) -> bytes:
    """The headers of segment `index` of `count`, built on their own (the rare paths, and the last segment)."""
    flags = ip[ihl + 13]
    if index:
        flags &= ~TCP_CWR
    if index != count - 1:
        flags &= ~(TCP_FIN | TCP_PSH)
    length = last if index == count - 1 else mss
    ident = None if WORD.unpack_from(ip, 6)[0] & DF else (WORD.unpack_from(ip, 4)[0] + index) & 0xFFFF
    head = bytearray(segment_header(ip, ihl, headers, headers + length, flags, True, ident))
    SEQ.pack_into(head, ihl + 4, (SEQ.unpack_from(ip, ihl + 4)[0] + index * mss) % SEQ_SPACE)
    if not partial:
        start = headers + index * mss
        WORD.pack_into(head, ihl + 16, 0)
        total = pseudo_base(head) + (headers - ihl + length) + ones_sum(head[ihl:]) + ones_sum(ip[start:start + length])
        WORD.pack_into(head, ihl + 16, ~fold(total) & 0xFFFF)
    return bytes(head)


def segment_header(ip, ihl: int, headers: int, total: int, flags: int, partial: bool, ident=None) -> bytes:
    """IPv4 + TCP headers for a segment of `total` bytes: length, flags, IP checksum, pseudo-header sum set."""
    head = bytearray(ip[:headers])
    WORD.pack_into(head, 2, total)
    if ident is not None:
        WORD.pack_into(head, 4, ident)
    head[ihl + 13] = flags
    WORD.pack_into(head, 10, 0)
    WORD.pack_into(head, 10, checksum(head[:ihl]))
    if partial:
        WORD.pack_into(head, ihl + 16, fold(pseudo_base(head) + total - ihl))
    return bytes(head)


def smaller(ip, mss: int, per: int) -> List[Tuple[bytes, int, int]]:
    """A TCP super-packet as smaller ones of at most `per` segments each: [(IPv4 and TCP headers, payload start, end)].

    `ip` is the super-packet as flannel0 hands it over (its TCP check field
    holding the pseudo-header sum); each smaller one is what its first `per`
    segments would have been, joined: sequence number and IP ID of its first
    segment, CWR only on the first, FIN and PSH only on the last, its own
    length, IP checksum and pseudo-header sum. Cut by the kernel at `mss`,
    they give exactly the segments the whole one would have given. The
    payload stays where it is: each entry gives its span in `ip`.
    """
    ihl = (ip[0] & 0x0F) * 4
    headers = ihl + tcp_header_len(ip, ihl)
    payload = len(ip) - headers
    step = mss * per
    flags = ip[ihl + 13]
    seq = SEQ.unpack_from(ip, ihl + 4)[0]
    ident = None if WORD.unpack_from(ip, 6)[0] & DF else WORD.unpack_from(ip, 4)[0]
    out = []
    for first in range(0, payload, step):
        length = min(step, payload - first)
        these = flags & ~(TCP_CWR if first else 0) & ~(TCP_FIN | TCP_PSH if first + length < payload else 0)
        head = bytearray(segment_header(ip, ihl, headers, headers + length, these, True,
                                        None if ident is None else (ident + first // mss) & 0xFFFF))
        SEQ.pack_into(head, ihl + 4, (seq + first) % SEQ_SPACE)
        out.append((bytes(head), headers + first, headers + first + length))
    return out


def fits(length: int, room: int) -> bool:
    """Whether a packet of `length` bytes goes as one segment datagram."""
    return length + HEADER_LEN <= room

