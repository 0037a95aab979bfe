"""Pure packet logic of the data path: IPv4 checks, TTL, checksums, ICMP net-unreachable.

Nothing here touches a device or a socket, so every rule is tested on bytes.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from typing import Optional

IPV4_HEADER_LEN = 20
IPPROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
# The ICMP messages that are not errors (RFC 792, 950, 1256): echo, router
# advertisement and solicitation, timestamp, information and address mask,
# requests and replies. An error is never sent about an ICMP error, which
# could loop (RFC 1812 4.3.2.7); unknown types count as errors, as in Linux.
ICMP_QUERY_TYPES = frozenset({0, 8, 9, 10, 13, 14, 15, 16, 17, 18})
# The reply is read by the sending host's own stack, one hop away; flannel uses a
# small TTL for it too.
ICMP_REPLY_TTL = 8

ADDRESSES = struct.Struct("!II")  # source and destination, at offset 12
CHECKSUM = struct.Struct("!H")  # the header checksum, at offset 10
DESTINATION = struct.Struct("!I")  # at offset 16
# Version and IHL, total length, TTL, header checksum, source, destination: the common checks in one unpack.
IPV4_FIELDS = struct.Struct("!B1xH4xBxHII")
TOTAL_LENGTH = struct.Struct("!H")  # at offset 2
WORD = struct.Struct("!H")

# Why a datagram from the underlay is not written into the TUN device.
SHORT = "short"
OVERSIZED = "oversized"
MALFORMED = "malformed"
UNKNOWN_PEER = "unknown_peer"
SPOOFED_SOURCE = "spoofed_source"
NOT_OUR_SUBNET = "not_our_subnet"
TTL_EXPIRED = "ttl_expired"
# Why a packet read from the TUN device is not sent.
NO_LEASE = "no_lease"
SEND_FAILED = "send_failed"
TUN_WRITE_FAILED = "tun_write_failed"

DROP_REASONS = (
    SHORT, OVERSIZED, MALFORMED, UNKNOWN_PEER, SPOOFED_SOURCE, NOT_OUR_SUBNET,
    TTL_EXPIRED, NO_LEASE, SEND_FAILED, TUN_WRITE_FAILED,
)


def header_problem(packet, length: int, mtu: int) -> Optional[str]:
    """Why the first `length` bytes of `packet` are not one well-formed IPv4 packet, or None.

    The header checksum is left to the kernel: ip_rcv verifies it when the packet
    is written into the TUN device, and checking it here would cost every packet.
    """
    if length < IPV4_HEADER_LEN:
        return SHORT
    if length > mtu:
        return OVERSIZED
    first = packet[0]
    if first >> 4 != 4 or (first & 0x0F) * 4 < IPV4_HEADER_LEN or (first & 0x0F) * 4 > length:
        return MALFORMED
    if TOTAL_LENGTH.unpack_from(packet, 2)[0] != length:
        return MALFORMED
    return None


def decrement_ttl(packet) -> bool:
    """Decrement the TTL in place and patch the header checksum; False when it expires.

    Each flannel hop decrements the TTL as a router would, so a routing loop
    through the overlay ends. The checksum is updated incrementally (RFC 1624,
    equation 3: HC' = ~(~HC + ~m + m')), which also handles HC = 0xFFFF.
    """
    ttl = packet[8]
    if ttl <= 1:
        return False
    packet[8] = ttl - 1
    WORD.pack_into(packet, 10, check_after_ttl(WORD.unpack_from(packet, 10)[0]))
    return True


def check_after_ttl(check: int) -> int:
    """The header checksum `check` once the TTL has dropped by one (RFC 1624, equation 3)."""
    # ~m + m' is constant: the word holding TTL drops by 0x0100, i.e. + 0xFEFF.
    total = (~check & 0xFFFF) + 0xFEFF
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def checksum(data) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def is_icmp_query(ip, header_len: int) -> bool:
    """Whether the ICMP message in IPv4 packet `ip` is a query or reply, not an error (which gets no error back)."""
    return len(ip) > header_len and ip[header_len] in ICMP_QUERY_TYPES


def net_unreachable(offender, source: IPv4Address) -> Optional[bytes]:
    """An ICMP net-unreachable for `offender`, from `source`, or None when none is due.

    As RFC 1812 asks: never about an ICMP error (flannel refuses every ICMP
    packet, so a ping there gets silence; here it gets an answer), nor about
    a fragment other than the first; the reply quotes the offender's header
    and the first 8 bytes of its payload.
    """
    if len(offender) < IPV4_HEADER_LEN or offender[0] >> 4 != 4:
        return None
    header_len = (offender[0] & 0x0F) * 4
    if header_len < IPV4_HEADER_LEN or WORD.unpack_from(offender, 6)[0] & 0x1FFF:
        return None
    if offender[9] == IPPROTO_ICMP and not is_icmp_query(offender, header_len):
        return None
    quote = bytes(offender[: header_len + 8])
    icmp = bytearray(struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, 0) + quote)
    WORD.pack_into(icmp, 2, checksum(icmp))
    header = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, IPV4_HEADER_LEN + len(icmp), 0, 0, ICMP_REPLY_TTL,
        IPPROTO_ICMP, 0, source.packed, bytes(offender[12:16]),
    ))
    WORD.pack_into(header, 10, checksum(header))
    return bytes(header + icmp)
