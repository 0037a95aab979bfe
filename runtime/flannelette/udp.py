"""The kernel's UDP offloads as the data path uses them, and what one read may bring.

UDP_SEGMENT (Linux 4.18): one sendmsg of many equal datagrams. UDP_GRO (5.0):
one read of many datagrams of one sender, all of the size it reports, the
last maybe shorter.
"""

from __future__ import annotations

import socket
import struct

SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SEGMENT = struct.Struct("=H")
GRO_SIZE = struct.Struct("=i")
ANCILLARY_SPACE = socket.CMSG_SPACE(GRO_SIZE.size)
MSG_DONTWAIT = socket.MSG_DONTWAIT
BUFFER_SIZE = 65536  # larger than any datagram, so an oversized one is seen whole and counted
BURST = 32  # packets or reads one direction handles before the other gets a turn


def segment_size(ancillary) -> int:
    """The datagram size UDP_GRO reports for a coalesced read, or 0."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return GRO_SIZE.unpack(data[:GRO_SIZE.size])[0]
    return 0
