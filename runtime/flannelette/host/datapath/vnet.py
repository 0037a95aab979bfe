"""struct virtio_net_hdr: what precedes every packet read from or written into flannel0 (IFF_VNET_HDR).

On a read it says what the kernel left undone (a checksum to complete, a TCP
super-packet to cut); on a write, what the runtime asks of it (the same, for
the segments it joined or received with their checksum pending).
"""

from __future__ import annotations

import struct

# Little-endian, as the TUN devices of x86 and arm64 hosts give it.
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
PLAIN = bytes(VNET_HDR_LEN)  # a finished packet: nothing for the kernel to do
F_NEEDS_CSUM, F_DATA_VALID = 1, 2
GSO_NONE, GSO_TCPV4, GSO_ECN = 0, 1, 0x80
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# Where the checksum field of a partially checksummed packet sits in its transport header.
CSUM_OFFSETS = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}
TCP_MIN_MSS = 48  # the kernel's TCP_MIN_SND_MSS: no smaller segments, so no flood of tiny ones
