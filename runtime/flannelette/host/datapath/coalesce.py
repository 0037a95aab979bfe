"""Join consecutive segments of one TCP flow into one large packet for the TUN device, as GRO does.

A run of segments read from the underlay in one UDP_GRO batch is written into
flannel0 as a single packet with a virtio-net header saying "TCP, segmented at
this MSS, checksum to complete". The receiving host's TCP stack then handles
one packet instead of dozens, and acknowledges it once. The outer UDP checksum,
verified by the kernel on receipt, already covers every byte of each segment.
"""

from __future__ import annotations

import struct

from flannelette.host.datapath.packet import checksum, decrement_ttl
from flannelette.host.datapath.segments import vnet_header
from flannelette.host.datapath.vnet import F_NEEDS_CSUM, GSO_TCPV4, IPPROTO_TCP, PLAIN, VNET_HDR, VNET_HDR_LEN

TCP_ACK, TCP_PSH = 0x10, 0x08
TCP_CHECK_OFFSET = 16
MAX_PACKET = 65535
MAX_SEGMENTS = 64
H = struct.Struct("!H")
HHHH = struct.Struct("!HHHH")


# The IPv4 header without options, then TCP up to its window: what a join needs, in one unpack.
HEADERS = struct.Struct("!BBHHHBBHIIIIIBBH")
VER_IHL, TOS, TOTAL, IDENT, FRAG, TTL, PROTO, CHECK, SRC, DST, PORTS, SEQ, ACK, OFFSET, FLAGS, WINDOW = range(16)


class Coalescer:
    """Collects packets, then writes each run of one TCP flow as one packet, the rest as they came.

    `add` takes a packet the caller has validated, with its HEADERS fields
    (or None when it is shorter than those); the TTL is decremented here, once
    per packet written. Only segments of an IPv4 header without options, no
    fragment, and TCP flags ACK or ACK+PSH join: SYN, FIN, RST, URG and ECN
    signals go through alone, as the kernel's own GRO would have them.
    """

    def __init__(self, write):
        self.write = write
        self.out = bytearray(VNET_HDR_LEN + MAX_PACKET)
        self.view = memoryview(self.out)
        self.count = self.end = 0
        self.flow = None
        self.options = b""
        self.next_seq = self.mss = self.last_payload = self.header_len = self.flags = self.window = 0
        self.partial = False

    def add(self, view, start: int, n: int, fields, partial: bool = False) -> None:
        """Queue the packet of `n` bytes at `start`; `partial`: its checksum is left to the kernel (a segment)."""
        if fields is not None and fields[PROTO] == IPPROTO_TCP and fields[FLAGS] & ~TCP_PSH == TCP_ACK \
                and not fields[FRAG] & 0x3FFF:
            header_len = 20 + (fields[OFFSET] >> 4) * 4
            payload = n - header_len
            if payload > 0 and header_len >= 40:
                flow = (fields[SRC], fields[DST], fields[PORTS], fields[ACK], fields[TOS], header_len)
                if self.count and flow == self.flow and self._joins(view, start, fields[SEQ], header_len, payload):
                    self._append(view, start, n, header_len, payload, fields)
                    return
                self._start(view, start, n, partial)
                self.flow, self.header_len, self.mss = flow, header_len, payload
                self.options = bytes(view[start + 40:start + header_len])
                self.next_seq, self.last_payload = (fields[SEQ] + payload) & 0xFFFFFFFF, payload
                self.flags, self.window = fields[FLAGS], fields[WINDOW]
                return
        self._start(view, start, n, partial)
        self.flow = None

    def _joins(self, view, start: int, seq: int, header_len: int, payload: int) -> bool:
        return (seq == self.next_seq and self.last_payload == self.mss and payload <= self.mss
                and self.end + payload <= len(self.out) and self.count < MAX_SEGMENTS
                and view[start + 40:start + header_len] == self.options)

    def _start(self, view, start: int, n: int, partial: bool) -> None:
        self.flush()
        self.partial = partial
        out, ip = self.out, VNET_HDR_LEN
        out[ip:ip + n] = view[start:start + n]
        decrement_ttl(self.view[ip:ip + n])  # the caller has checked it is above 1
        self.end, self.count = ip + n, 1

    def _append(self, view, start: int, n: int, header_len: int, payload: int, fields) -> None:
        end = self.end
        self.out[end:end + payload] = view[start + header_len:start + n]
        self.end = end + payload
        self.count += 1
        self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
        self.last_payload = payload
        self.flags |= fields[FLAGS] & TCP_PSH
        self.window = fields[WINDOW]

    def flush(self) -> int:
        """Write what is queued; the number of packets it carried."""
        count = self.count
        if not count:
            return 0
        if count == 1:
            out = self.out
            self.out[:VNET_HDR_LEN] = vnet_header((out[VNET_HDR_LEN] & 0x0F) * 4, out[VNET_HDR_LEN + 9]) \
                if self.partial else PLAIN
        else:
            self._finish_headers()
        self.count = 0
        self.write(self.view[:self.end])
        return count

    def _finish_headers(self) -> None:
        finish_gso(self.out, self.end - VNET_HDR_LEN, self.header_len, self.mss, self.flags, self.window)


def finish_gso(out, length: int, header_len: int, mss: int, flags: int, window: int) -> None:
    """Make `out` (virtio-net header, then the first segment's headers, TTL already lowered) head a joined packet.

    The IPv4 packet is `length` bytes; the kernel cuts it back into segments of
    `mss` bytes of payload if it has to forward it.
    """
    ip = VNET_HDR_LEN
    H.pack_into(out, ip + 2, length)
    H.pack_into(out, ip + 10, 0)
    H.pack_into(out, ip + 10, checksum(out[ip:ip + 20]))
    out[ip + 33] = flags
    H.pack_into(out, ip + 34, window)
    # CHECKSUM_PARTIAL: the check field holds the pseudo-header sum; the stack
    # completes (or, delivering locally, trusts) the rest.
    H.pack_into(out, ip + 20 + TCP_CHECK_OFFSET, _pseudo_header_sum(out, ip, length - 20))
    VNET_HDR.pack_into(out, 0, F_NEEDS_CSUM, GSO_TCPV4,
                       header_len, mss, 20, TCP_CHECK_OFFSET)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo_header_sum(out, ip: int, tcp_length: int) -> int:
    return _fold(sum(HHHH.unpack_from(out, ip + 12)) + IPPROTO_TCP + tcp_length)
