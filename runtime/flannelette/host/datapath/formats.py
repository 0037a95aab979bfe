"""Every format on the UDP port, told apart by its first bytes, and the versions hosts agree on (docs/wire.md).

| first bytes                    | what                                                       |
| ------------------------------ | ---------------------------------------------------------- |
| 0x45..0x4F                     | flannel's format: one IPv4 packet, nothing added           |
| 0x00..0x02 (virtio flags byte) | frames: the fast format of flannelette 0.1, received only   |
| 0x01..0x04, then 0, 0, 0       | WireGuard's four message types (the encrypted format)       |
| 0xF1, 0xF2                     | the capability exchange: hello, answer (flannelette.host.datapath.exchange) |
| 0xF3                           | a segment: a 4-byte header, then one IPv4 packet whose TCP or UDP checksum the receiver's kernel completes |
| 0xF4                           | a train: one of the datagrams a larger frame was cut into (flannelette.host.datapath.trains) |
| 0xF5                           | a sealed datagram: part of an encrypted unit between flannelette hosts (flannelette.host.datapath.encrypted) |

A flanneld host writes whatever arrives into its TUN device, which refuses
anything whose first nibble is not 4 or 6: every byte above stays clear of
both, so a stray datagram there is refused, never injected.
"""

from __future__ import annotations

# Format versions, as the capability exchange carries them (one bit each). The
# fast format is segments for what fits a datagram and trains for what does not;
# sealed is the encrypted fast format (WireGuard's sessions, units of many packets).
FLANNEL, FRAMES, FAST, SEALED = 0, 1, 2, 3
# WireGuard's own transport messages: what every peer with a key takes, never asked.
WIREGUARD = 4
NAMES = {FLANNEL: "flannel", FRAMES: "frames", FAST: "fast", SEALED: "sealed", WIREGUARD: "wireguard"}
ENCRYPTED = (SEALED, WIREGUARD)
# What this release sends when both ends take it, best first. Frames are only
# received: they need every datagram of a super-packet to arrive in one read.
SENDABLE = (SEALED, FAST, FLANNEL)

HELLO, ANSWER, SEGMENT, TRAIN, SEALED_UNIT = 0xF1, 0xF2, 0xF3, 0xF4, 0xF5
NAMES_OF_MESSAGES = {HELLO: "hello", ANSWER: "answer"}
PLAIN_LOW, PLAIN_HIGH = 0x45, 0x4F  # version 4, header length 5..15 words
FRAME_FLAGS = (0, 1, 2)  # virtio_net_hdr flags: none, NEEDS_CSUM, DATA_VALID


def is_plain(first: int) -> bool:
    return PLAIN_LOW <= first <= PLAIN_HIGH


def is_frame(first: int) -> bool:
    return first in FRAME_FLAGS


def mask(*versions: int) -> int:
    """The bitmask of format versions the exchange carries."""
    bits = 0
    for version in versions:
        bits |= 1 << version
    return bits


def best_common(theirs: int, ours: int = mask(*SENDABLE)) -> int:
    """The best format both ends take; flannel's when nothing else is common."""
    for version in SENDABLE:
        if theirs & ours & (1 << version):
            return version
    return FLANNEL
