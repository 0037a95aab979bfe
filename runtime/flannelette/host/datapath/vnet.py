"""The fast wire format between flannelette hosts: a virtio_net_hdr, then one IPv4 packet, maybe a TCP super-packet.

It is what a read from flannel0 returns with IFF_VNET_HDR and TSO offload on,
carried unchanged in one UDP datagram and written unchanged (TTL aside) into
the peer's flannel0, so the kernels at both ends segment and checksum, and the
runtime handles tens of kilobytes per step. Plain flannel datagrams start with
the IPv4 version nibble (0x45..0x4F); these start with the header's flags byte,
always below 0x40, so a receiver tells the two apart by the first byte.

Nothing here touches a device or a socket: the checks are tested on bytes.
"""

from __future__ import annotations

import struct
from typing import Optional

from flannelette.host.datapath.packet import IPV4_HEADER_LEN, MALFORMED, OVERSIZED, SHORT

# struct virtio_net_hdr, little-endian as the TUN devices of x86 and arm64 hosts give it.
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
PLAIN = bytes(VNET_HDR_LEN)  # a finished packet: nothing for the kernel to do
F_NEEDS_CSUM, F_DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_ECN = 0, 1, 0x80
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# Where the checksum field of a partially checksummed packet sits in its transport header.
CSUM_OFFSETS = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}
TCP_MIN_MSS = 48  # the kernel's TCP_MIN_SND_MSS: no smaller segments, so no flood of tiny ones
FIRST_PLAIN_BYTE = 0x40  # a datagram starting at or above this is plain flannel (IPv4)
TOTAL_LENGTH = struct.Struct("!H")

# Why a fast-mode datagram is not written into the TUN device (besides packet's reasons).
BAD_VNET_HDR = "bad_vnet_hdr"
BAD_GSO = "bad_gso"
# Why a packet read from the TUN device is not sent: it needs the kernel's
# segmentation or checksum, and its peer speaks flannel's plain format. Happens
# only around a switch of mode, while the kernel still holds offloaded packets.
OFFLOAD_TO_PLAIN_PEER = "offload_to_plain_peer"
DROP_REASONS = (BAD_VNET_HDR, BAD_GSO, OFFLOAD_TO_PLAIN_PEER)


def is_fast(first_byte: int) -> bool:
    return first_byte < FIRST_PLAIN_BYTE


def span(view, start: int, datagram: int, read: int) -> int:
    """How many bytes of a read, from `start`, the frame there takes.

    A frame is one datagram, unless it claims more bytes than that: then the
    sender cut it into datagrams (UDP_SEGMENT) and the rest of the read, which
    UDP_GRO ends at the frame's shorter last datagram, is its. A frame with a
    datagram missing has a length that doesn't match, and `problem` says so.
    """
    if read - start >= VNET_HDR_LEN + 4 and TOTAL_LENGTH.unpack_from(view, start + VNET_HDR_LEN + 2)[0] + VNET_HDR_LEN > datagram:
        return read - start
    return datagram


def problem(frame, length: int, mtu: int) -> Optional[str]:
    """Why the first `length` bytes of `frame` are not one well-formed fast-mode datagram, or None.

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
    if flags not in (0, F_NEEDS_CSUM, F_DATA_VALID) or gso_type & ~GSO_ECN not in (GSO_NONE, GSO_TCPV4):
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
