"""Pure packet logic of the data path: IPv4 checks, TTL, ICMP net-unreachable, lease lookup.

Nothing here touches a device or a socket, so every rule is tested on bytes.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Dict, Iterable, Optional, Tuple

from flannelette.model.config import WIRE_FLANNEL

IPV4_HEADER_LEN = 20
IPPROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
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


def net_unreachable(offender, source: IPv4Address) -> Optional[bytes]:
    """An ICMP net-unreachable for `offender`, from `source`, or None when none is due.

    As flannel does (and RFC 1812 asks): never about an ICMP packet, which could
    loop, nor about a fragment other than the first; the reply quotes the
    offender's header and the first 8 bytes of its payload.
    """
    if len(offender) < IPV4_HEADER_LEN or offender[0] >> 4 != 4:
        return None
    header_len = (offender[0] & 0x0F) * 4
    if header_len < IPV4_HEADER_LEN or offender[9] == IPPROTO_ICMP:
        return None
    if WORD.unpack_from(offender, 6)[0] & 0x1FFF:
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


class Peer:
    """Another host: where its subnet's packets go, and what went there."""

    __slots__ = ("host", "subnet", "public_ip", "address", "key", "counts")

    def __init__(self, host: str, subnet: IPv4Network, public_ip: IPv4Address, port: int):
        self.host, self.subnet, self.public_ip = host, subnet, public_ip
        self.key = int(subnet.network_address) >> (32 - subnet.prefixlen)
        self.address = (str(public_ip), port)
        # tx packets, tx bytes, rx packets, rx bytes: a list so the data path
        # updates it in place without a lookup.
        self.counts = [0, 0, 0, 0]

    @property
    def identity(self) -> Tuple[str, IPv4Network, IPv4Address, int]:
        return (self.host, self.subnet, self.public_ip, self.address[1])


class LeaseTable:
    """Every peer, found in constant time by an inner address or by its public IP.

    All subnets of a network share SubnetLen, so an address shifted right by
    32 - SubnetLen is its subnet's key, however many leases there are.

    `fast` says this host sends the fast format (flannelette.host.datapath.vnet): only when
    no peer is a flanneld host and the network does not force flannel's format.
    It is one switch for the table, not one per peer, because it decides
    whether flannel0 hands over TCP super-packets at all; without them the
    fast format would only add 10 bytes to each packet.
    """

    def __init__(self, own, leases: Iterable, subnet_len: int, port: int, previous: Optional["LeaseTable"] = None,
                 force_flannel: bool = False):
        self.shift = 32 - subnet_len
        self.own_key = int(own.subnet.network_address) >> self.shift
        kept = previous.peers_by_identity() if previous else {}
        self.by_subnet: Dict[int, Peer] = {}
        self.by_public_ip: Dict[str, Peer] = {}
        self.fast = not force_flannel
        for lease in leases:
            if lease.public_ip == own.public_ip:
                continue
            if lease.wire == WIRE_FLANNEL:
                self.fast = False
            peer = Peer(lease.host, lease.subnet, lease.public_ip, port)
            peer = kept.get(peer.identity, peer)
            self.by_subnet[peer.key] = peer
            self.by_public_ip[peer.address[0]] = peer

    def peers_by_identity(self) -> Dict[tuple, Peer]:
        return {peer.identity: peer for peer in self.by_subnet.values()}

    def peers(self) -> list:
        return sorted(self.by_subnet.values(), key=lambda peer: peer.subnet)

    def peer_for(self, address: int) -> Optional[Peer]:
        return self.by_subnet.get(address >> self.shift)

    def sender_problem(self, sender_ip: str, packet) -> Optional[str]:
        """Why a datagram from `sender_ip` carrying `packet` may not enter our subnet, or None."""
        peer = self.by_public_ip.get(sender_ip)
        if peer is None:
            return UNKNOWN_PEER
        source, destination = ADDRESSES.unpack_from(packet, 12)
        if peer.key != source >> self.shift:
            return SPOOFED_SOURCE
        if destination >> self.shift != self.own_key:
            return NOT_OUR_SUBNET
        return None
