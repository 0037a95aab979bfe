"""The lease table as the data path uses it: every peer, found in constant time by an inner address or its public IP."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network
from typing import Dict, Iterable, Optional, Tuple

from flannelette.host.datapath import formats
from flannelette.host.datapath.packet import ADDRESSES, NOT_OUR_SUBNET, SPOOFED_SOURCE, UNKNOWN_PEER
from flannelette.model.config import WIRE_FLANNEL


class Counts:
    """What went to and came from one peer: inner packets and their bytes."""

    __slots__ = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes")

    def __init__(self):
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0

    def as_tuple(self) -> Tuple[int, int, int, int]:
        return (self.tx_packets, self.tx_bytes, self.rx_packets, self.rx_bytes)

    def add(self, other: "Counts") -> None:
        self.tx_packets += other.tx_packets
        self.tx_bytes += other.tx_bytes
        self.rx_packets += other.rx_packets
        self.rx_bytes += other.rx_bytes


class Peer:
    """Another host: where its subnet's packets go, in which format, and what went there.

    `format` is what the data path sends it (flannelette.host.datapath.formats);
    the capability exchange (`exchange`) is the only thing that changes it.
    `heard` is the monotonic time of the last datagram accepted from it; from a
    peer that encrypts, of its last message that authenticated.
    """

    __slots__ = ("host", "subnet", "public_ip", "address", "ip", "key", "counts", "marked_flannel",
                 "format", "exchange", "heard", "frames", "train", "public_key", "tunnel", "units", "loss",
                 "unit_limit", "lease")

    def __init__(self, host: str, subnet: IPv4Network, public_ip: IPv4Address, port: int, marked_flannel: bool = False,
                 public_key: Optional[bytes] = None):
        self.host, self.subnet, self.public_ip = host, subnet, public_ip
        self.public_key = public_key  # its WireGuard public key, from its lease
        self.tunnel = None  # flannelette.host.datapath.sessions.Tunnel, where both ends have keys
        self.units = None  # sealed units from it not yet whole (flannelette.host.datapath.encrypted)
        self.loss = None  # how many of its sealed datagrams arrive (encrypted.LossMeter)
        self.unit_limit = 0  # the longest sealed unit, in datagrams, it asked of this host (0: any)
        self.key = int(subnet.network_address) >> (32 - subnet.prefixlen)
        self.address = (str(public_ip), port)
        self.ip = int(public_ip)  # how a received datagram's sender is looked up
        self.counts = Counts()
        self.marked_flannel = marked_flannel  # a flanneld host, by its lease: flannel's format, never asked
        self.format = formats.FLANNEL
        self.exchange = None  # flannelette.host.datapath.exchange.Exchange, set by the exchange
        self.heard: Optional[float] = None
        self.frames = None  # reassembly of the previous release's frames (flannelette.host.datapath.frames)
        self.train = None  # the train from it not yet whole (flannelette.host.datapath.trains)
        self.lease = None  # the Lease it was made from: the next table finds it by that object

    @property
    def identity(self) -> tuple:
        # Ints, not ipaddress objects, whose hashing in Python took most of a 10,000-peer reload.
        return (self.host, self.key, self.subnet.prefixlen, self.ip, self.address[1], self.marked_flannel,
                self.public_key)


class LeaseTable:
    """Every peer, by subnet key and by public IP.

    All subnets of a network share SubnetLen, so an address shifted right by
    32 - SubnetLen is its subnet's key, however many leases there are. A peer
    whose lease is unchanged keeps its object (counters, exchange state)
    across reloads: found by its Lease object where the reload kept that
    (config.parse_leases' `previous`), by its identity otherwise.
    """

    def __init__(self, own, leases: Iterable, subnet_len: int, port: int, previous: Optional["LeaseTable"] = None,
                 force_flannel: bool = False):
        self.shift = 32 - subnet_len
        self.own_key = int(own.subnet.network_address) >> self.shift
        self.force_flannel = force_flannel  # Backend.Wire flannel: the whole network on flannel's format
        # Peers hold their leases, so no id() here is reused while `previous` lives.
        by_lease = {id(peer.lease): peer for peer in previous.by_subnet.values()} if previous else {}
        kept: Optional[Dict[tuple, Peer]] = None
        self.by_subnet: Dict[int, Peer] = {}
        self.by_address: Dict[int, Peer] = {}
        for lease in leases:
            peer = by_lease.get(id(lease))
            if peer is None:
                if lease.public_ip == own.public_ip:
                    continue
                peer = Peer(lease.host, lease.subnet, lease.public_ip, port, lease.wire == WIRE_FLANNEL, lease.key)
                if previous is not None:
                    kept = previous.peers_by_identity() if kept is None else kept
                    peer = kept.get(peer.identity, peer)
                peer.lease = lease
            self.by_subnet[peer.key] = peer
            self.by_address[peer.ip] = peer

    def peers_by_identity(self) -> Dict[tuple, Peer]:
        return {peer.identity: peer for peer in self.by_subnet.values()}

    def peers_not_in(self, other: "LeaseTable") -> list:
        """This table's peers that `other` doesn't hold. A table made from another keeps the objects of the
        peers it shares with it, so this is the difference of their identities, found without making them."""
        held = set(map(id, other.by_subnet.values()))
        return [peer for peer in self.by_subnet.values() if id(peer) not in held]

    def peers(self) -> list:
        return sorted(self.by_subnet.values(), key=lambda peer: peer.key)  # by subnet: they share a length

    def peer_for(self, address: int) -> Optional[Peer]:
        return self.by_subnet.get(address >> self.shift)

    def peer_at(self, sender_ip: str) -> Optional[Peer]:
        return self.by_address.get(int.from_bytes(socket.inet_aton(sender_ip), "big"))

    def sender_problem(self, peer: Optional[Peer], packet) -> Optional[str]:
        """Why `packet`, from `peer` (None: no lease holder sent it), may not enter our subnet, or None.

        The one definition of the rule every inbound packet answers to; the
        checks of a whole run at once (flannelette.host.datapath.batch) are
        held to it by a property test.
        """
        if peer is None:
            return UNKNOWN_PEER
        source, destination = ADDRESSES.unpack_from(packet, 12)
        if peer.key != source >> self.shift:
            return SPOOFED_SOURCE
        if destination >> self.shift != self.own_key:
            return NOT_OUR_SUBNET
        return None
