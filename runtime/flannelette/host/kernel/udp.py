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
SOCKET_BUFFER = 4 << 20  # room for bursts at line rate while the data path serves the other direction
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux: as root, past net.core.*mem_max
# A fast-mode frame of a full-sized packet is 10 bytes more than one datagram of
# the underlay carries: the kernel fragments it, which it does only with DF clear.
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0


def segment_size(ancillary) -> int:
    """The datagram size UDP_GRO reports for a coalesced read, or 0."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return GRO_SIZE.unpack(data[:GRO_SIZE.size])[0]
    return 0


def tunnel_socket(reuse_port: bool = False) -> socket.socket:
    """An unbound UDP socket as the data path needs it: deep buffers, fragmentation allowed.

    With `reuse_port`, one of an SO_REUSEPORT group on one port (one per queue).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for forced, option in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.*mem_max allows
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    return sock
