"""Frames: the fast format of flannelette 0.1, received from hosts of that release during an upgrade, never sent.

A frame is what flannel0 hands over with IFF_VNET_HDR: a 10-byte
virtio_net_hdr, then one IPv4 packet, up to a 64 KB TCP super-packet. A frame
larger than a datagram of the underlay was cut by the sender's kernel
(UDP_SEGMENT) into datagrams of one size, the last always shorter, and
nothing in the later datagrams says whose they are. On a veth they arrive in
one UDP_GRO read; on a real wire one by one or in reads of a few, so they are
put back together here across reads, from the sizes alone: every datagram but
the last is as long as the first, the last exactly what is missing and
shorter. A lost datagram shows as a size that does not fit, and the frame is
dropped whole (TCP sends it again), never filled with another frame's bytes.

Nothing here touches a device or a socket: the checks are tested on bytes.
"""

from __future__ import annotations

import struct
from typing import Optional

from flannelette.host.datapath import formats
from flannelette.host.datapath.packet import IPV4_HEADER_LEN, MALFORMED, OVERSIZED, SHORT, checksum
from flannelette.host.datapath.vnet import (
    CSUM_OFFSETS, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, IPPROTO_TCP, TCP_MIN_MSS, VNET_HDR,
    VNET_HDR_LEN,
)

TOTAL_LENGTH = struct.Struct("!H")
GSO_TYPES = (GSO_NONE, GSO_TCPV4, GSO_TCPV4 | GSO_ECN)
MAX_AGE = 1.0  # seconds a frame may take to arrive whole

# Why a frame is not written into the TUN device (besides packet's reasons).
BAD_VNET_HDR = "bad_vnet_hdr"
BAD_GSO = "bad_gso"
FRAME_INCOMPLETE = "frame_incomplete"  # a datagram of a frame was lost (or came out of order)
DROP_REASONS = (BAD_VNET_HDR, BAD_GSO, FRAME_INCOMPLETE)


def claimed(view, start: int, n: int) -> int:
    """The bytes the frame starting at `start` claims (header and packet), or `n` when it claims nothing readable."""
    if n >= VNET_HDR_LEN + 4:
        return TOTAL_LENGTH.unpack_from(view, start + VNET_HDR_LEN + 2)[0] + VNET_HDR_LEN
    return n


def first_of_many(n: int, want: int, mtu: int) -> bool:
    """Whether a datagram of `n` bytes starting a frame of `want` may be the first of several: the previous
    release cut frames into datagrams of the overlay MTU (4 bytes less where the frame would divide evenly),
    and no frame is larger than 64 KB."""
    return (n == mtu or n == mtu - 4) and want <= 65535 + VNET_HDR_LEN


def problem(frame, length: int, mtu: int) -> Optional[str]:
    """Why the first `length` bytes of `frame` are not one sound frame, or None.

    Every field the kernel would act on is checked against the bytes it
    describes, so a hostile datagram can make it neither segment nor checksum
    anything but the TCP payload of the one packet it carries, in segments no
    larger than the overlay's MTU.
    """
    if length < VNET_HDR_LEN + IPV4_HEADER_LEN:
        return SHORT
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame, 0)
    n = length - VNET_HDR_LEN
    ihl = _ipv4_header_len(frame, n)
    if ihl is None:
        return MALFORMED
    if flags not in (0, F_NEEDS_CSUM, F_DATA_VALID) or gso_type not in GSO_TYPES:
        return BAD_VNET_HDR
    if flags == F_NEEDS_CSUM:
        if csum_start != ihl or csum_offset != CSUM_OFFSETS.get(frame[VNET_HDR_LEN + 9]) or ihl + csum_offset + 2 > n:
            return BAD_VNET_HDR
    elif csum_start or csum_offset:
        return BAD_VNET_HDR
    if gso_type == GSO_NONE:
        if gso_size or hdr_len > n:
            return BAD_GSO
        return OVERSIZED if n > mtu else None
    return _gso_problem(frame, n, ihl, flags, hdr_len, gso_size, mtu)


def _ipv4_header_len(frame, n: int) -> Optional[int]:
    first = frame[VNET_HDR_LEN]
    ihl = (first & 0x0F) * 4
    if first >> 4 != 4 or ihl < IPV4_HEADER_LEN or ihl > n:
        return None
    if TOTAL_LENGTH.unpack_from(frame, VNET_HDR_LEN + 2)[0] != n:
        return None
    return ihl


def _gso_problem(frame, n: int, ihl: int, flags: int, hdr_len: int, gso_size: int, mtu: int) -> Optional[str]:
    ip = VNET_HDR_LEN
    if frame[ip + 9] != IPPROTO_TCP or flags != F_NEEDS_CSUM:
        return BAD_GSO  # TCPV4 claimed for something that is not a checksum-pending TCP packet
    if TOTAL_LENGTH.unpack_from(frame, ip + 6)[0] & 0x3FFF:
        return BAD_GSO  # a fragment can't be segmented
    if ihl + 20 > n:
        return BAD_GSO
    header = ihl + (frame[ip + ihl + 12] >> 4) * 4
    if header < ihl + 20 or header >= n or hdr_len > n:
        return BAD_GSO
    if gso_size < TCP_MIN_MSS or header + gso_size > mtu:
        return BAD_GSO  # segments the overlay could not carry, or a flood of tiny ones
    return None


def looks_like_a_start(view, start: int, n: int) -> bool:
    """Whether a datagram reads as the start of something (a plain packet, or a frame), never a frame's later part:
    an IPv4 header, at the start or after a virtio-net header, whose checksum holds and whose length fits."""
    first = view[start]
    if formats.is_plain(first):
        return _sound_ipv4_header(view, start, n, n)
    if formats.is_frame(first) and n >= VNET_HDR_LEN + IPV4_HEADER_LEN and view[start + 1] in GSO_TYPES:
        return _sound_ipv4_header(view, start + VNET_HDR_LEN, n - VNET_HDR_LEN, None)
    return False


def _sound_ipv4_header(view, start: int, room: int, length: Optional[int]) -> bool:
    ihl = (view[start] & 0x0F) * 4
    if view[start] >> 4 != 4 or ihl < IPV4_HEADER_LEN or ihl > room:
        return False
    total = TOTAL_LENGTH.unpack_from(view, start + 2)[0]
    if total < ihl or (length is not None and total != length):
        return False
    return checksum(view[start:start + ihl]) == 0


class Reassembly:
    """One frame of one peer, arriving in datagrams over several reads."""

    __slots__ = ("buffer", "have", "want", "chunk", "started")

    def __init__(self, view, start: int, n: int, want: int, now: float):
        self.buffer = bytearray(want)
        self.buffer[:n] = view[start:start + n]
        self.have, self.want, self.chunk, self.started = n, want, n, now

    def take(self, view, start: int, n: int, now: float) -> Optional[bool]:
        """Add the next datagram: True when the frame is whole, False when it still waits, None when it can't be
        this frame's (the frame is then lost, and the datagram is not consumed)."""
        missing = self.want - self.have
        if now - self.started > MAX_AGE or looks_like_a_start(view, start, n):
            return None
        if not (n == self.chunk < missing or n == missing <= self.chunk):
            return None
        self.buffer[self.have:self.have + n] = view[start:start + n]
        self.have += n
        return self.have == self.want
