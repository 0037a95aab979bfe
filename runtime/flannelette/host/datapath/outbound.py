"""flannel0 to UDP: frames read from the TUN device in runs, checked, TTL-decremented and sent.

One half of flannelette.host.datapath.loop.DataPath, which holds the state both halves
share (lease table, socket, counters).
"""

from __future__ import annotations

import errno
import io
import logging
import socket
from typing import Iterator

from flannelette.host.datapath import batch, packet, vnet
from flannelette.host.datapath.packet import DESTINATION
from flannelette.host.kernel.udp import BUFFER_SIZE, BURST, SEGMENT, SOL_UDP, UDP_SEGMENT
from flannelette.host.datapath.vnet import PLAIN, VNET_HDR_LEN

log = logging.getLogger("flannelette.host.datapath.loop")

BATCH_BYTES = 60000  # under the 64 KiB a UDP send can carry, however the packets divide it
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS before Linux 6.2
SMALL = 256  # bytes: a packet this short read on waking leaves at once
NOT_IPV4 = "not_ipv4"


class Outbound:
    """The send half: reads flannel0, sends to peers; uses the DataPath's table, socket, MTU and counters."""

    def _tun_to_udp(self) -> Iterator[bool]:
        # The hot loop: one read per packet and little else. Each frame
        # (virtio-net header, then the packet) is read into a batch buffer
        # behind the ones before; while they are of one size they form a run,
        # which is checked, TTL-decremented and sent as a whole (_send_run), a
        # shorter frame ending it. In the fast format the frames leave as they
        # are, and a super-packet too large for one datagram of the underlay
        # on its own; in flannel's, only the packets, without their headers.
        # The run goes out as soon as the TUN queue is empty, so no packet
        # waits for company.
        buf = bytearray(BATCH_BYTES + BUFFER_SIZE)
        view = memoryview(buf)
        readinto = io.FileIO(self.tun_fd, "rb", closefd=False).readinto  # None when the queue is empty
        largest, send_run = self.mtu + VNET_HDR_LEN, self._send_run
        table, since = self.table, 0  # since: frames sent since the other direction last had a turn
        fast = table.fast
        # The run: buf[:end], count frames of size bytes, the last maybe shorter.
        end, count, size = 0, 0, -1
        woke = False
        while not self._stopping:
            if not count and self.table is not table:  # a reload: what is read from here on follows the new table
                table = self.table
                fast = table.fast
            n = readinto(view[end:])
            if n is None:
                if count:
                    send_run(view, end, count, size, fast)
                    end, count, size = 0, 0, -1
                yield False
                woke, since = True, 0
                continue
            if n == size:  # the common case, kept short: the run grows
                end += n
                count += 1
                if count < MAX_SEGMENTS and end + size <= BATCH_BYTES:
                    continue
                send_run(view, end, count, size, fast)
                since += count
                end, count, size = 0, 0, -1
            elif n > largest:  # a super-packet: alone
                if count:
                    send_run(view, end, count, size, fast)
                self._send_frame(view[end:end + n], fast)
                since += count + 1
                end, count, size, woke = 0, 0, -1, False
            elif not count:
                if woke and n <= SMALL:  # likely alone (a ping, an ACK): no read for company first
                    send_run(view, n, 1, n, fast)
                    since += 1
                else:
                    end, count, size = n, 1, n
                woke = False
                continue
            elif n < size:  # a shorter frame ends the run
                send_run(view, end + n, count + 1, size, fast)
                since += count + 1
                end, count, size = 0, 0, -1
            else:  # a longer one starts the next
                send_run(view, end, count, size, fast)
                since += count
                buf[:n] = buf[end:end + n]
                end, count, size = n, 1, n
                continue
            if since >= BURST:  # between runs: the other direction's turn
                since = 0
                yield True
        if count:
            send_run(view, end, count, size, fast)

    def _send_run(self, view, end: int, count: int, size: int, fast: bool) -> None:
        """Send buf[:end]: count frames of `size` bytes, the last maybe shorter, checked all at once when they can be."""
        table = self.table
        full, tail = divmod(end, size)
        peer = None
        shortest = VNET_HDR_LEN + packet.IPV4_HEADER_LEN
        # A fast-format frame of a full-sized packet is larger than a datagram of
        # the underlay: the kernel must fragment it, which it does not for a
        # segmented send (EMSGSIZE). Such frames go one by one.
        if count > 1 and size >= shortest and (not tail or tail >= shortest) \
                and (size <= self.mtu if fast else self._finished(view, end, count, size)):
            fields = batch.outbound_layout(full, size, VNET_HDR_LEN).unpack_from(view, 0)
            key = batch.outbound_key(fields, full, table.shift)
            if tail and key is not None and batch.outbound_key(
                    batch.OUTBOUND.unpack_from(view, full * size + VNET_HDR_LEN), 1, table.shift) != key:
                key = None
            peer = table.by_subnet.get(key) if key is not None else None
        if peer is None:  # a lone frame, or something to drop, answer or send elsewhere: frame by frame
            self._send_each(view, end, count, size, fast)
            return
        batch.decrement_ttls(view, VNET_HDR_LEN, fields[batch.OUT_CHECK::batch.OUT_WIDTH], full, size)
        if tail:
            packet.decrement_ttl(view[full * size + VNET_HDR_LEN:end])
        if fast:
            self._send([view[:end]], count, size, end - VNET_HDR_LEN * count, peer)
        else:
            packets = batch.payloads(view, 0, full, size, VNET_HDR_LEN)
            if tail:
                packets.append(view[full * size + VNET_HDR_LEN:end])
            self._send(packets, count, size - VNET_HDR_LEN, end - VNET_HDR_LEN * count, peer)

    @staticmethod
    def _finished(view, end: int, count: int, size: int) -> bool:
        """Whether no frame of the run leaves the kernel a checksum or a segmentation to do (flags, gso_type zero)."""
        return bytes(view[0:end:size]).count(0) == count and bytes(view[1:end:size]).count(0) == count

    def _send_each(self, view, end: int, count: int, size: int, fast: bool) -> None:
        """The run frame by frame: each checked on its own, dropped or answered with its reason, or sent alone.

        A finished packet (its virtio-net header all zero: a ping) leaves in
        flannel's format in either mode: that says all of it.
        """
        table = self.table
        for start in range(0, end, size):
            n = min(size, end - start)
            frame = view[start:start + n]
            peer = self._route(table, frame[VNET_HDR_LEN:], n - VNET_HDR_LEN, None if fast else frame[:VNET_HDR_LEN])
            if peer is not None:
                wire = frame if fast and frame[:VNET_HDR_LEN] != PLAIN else frame[VNET_HDR_LEN:]
                self._send([wire], 1, len(wire), n - VNET_HDR_LEN, peer)

    def _route(self, table, data, n: int, header):
        """The peer a packet read from flannel0 goes to, its TTL lowered; None when it is dropped or answered."""
        if n < packet.IPV4_HEADER_LEN or data[0] >> 4 != 4:
            self._drop(NOT_IPV4, "%d bytes from the TUN device are not an IPv4 packet", n)
            return None
        peer = table.by_subnet.get(DESTINATION.unpack_from(data, 16)[0] >> table.shift)
        if peer is None:
            self._unreachable(data[:n])
            return None
        if data[8] <= 1:
            self._drop(packet.TTL_EXPIRED, "TTL expired for %s", peer.host)
            return None
        if header is not None and (header[0] & vnet.F_NEEDS_CSUM or header[1]):
            self._drop(vnet.OFFLOAD_TO_PLAIN_PEER, "%d bytes to %s need the kernel's offloads", n, peer.host)
            return None
        packet.decrement_ttl(data)
        return peer

    def _send_frame(self, frame, fast: bool) -> None:
        """A frame too large for one datagram: in the fast format, checked, then cut by the kernel."""
        if not fast:  # in flannel's format it can only be dropped (offloads) or, finished, fragmented by the kernel
            self._send_each(frame, len(frame), 1, len(frame), fast)
            return
        peer = self._route(self.table, frame[VNET_HDR_LEN:], len(frame) - VNET_HDR_LEN, None)
        if peer is not None:
            self._send_fast(frame, peer)

    def _send(self, parts, count: int, size: int, carried: int, peer) -> None:
        """Send `parts` (buffers, end to end) to `peer` as `count` datagrams of `size` bytes, the last maybe shorter."""
        try:
            if count == 1:
                self.sock.sendto(parts[0], peer.address)
            elif self.gso:
                self.sock.sendmsg(parts, [(SOL_UDP, UDP_SEGMENT, SEGMENT.pack(size))], 0, peer.address)
            else:
                data, sendto, address = b"".join(parts), self.sock.sendto, peer.address
                for start in range(0, len(data), size):
                    sendto(data[start:start + size], address)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT) and self.gso and count > 1:
                log.info("UDP segmentation offload unavailable (%s); sending one datagram per call", e.strerror)
                self.gso = False
                return self._send(parts, count, size, carried, peer)
            self.drops[packet.SEND_FAILED] += count
            self.warnings.warn(packet.SEND_FAILED, "%d packets to %s (%s): %s", count, peer.host, peer.address[0], e.strerror)
            return None
        counts = peer.counts
        counts[0] += count
        counts[1] += carried
        return None

    def _send_fast(self, frame, peer) -> None:
        # A frame too large for one datagram of the underlay: a super-packet
        # is cut by the kernel (UDP_SEGMENT) into datagrams the underlay
        # carries whole, the last one always shorter, so the peer's UDP_GRO
        # hands the frame over in one read, and ends the read there. Between
        # namespaces it never even leaves the kernel as datagrams. Anything
        # else, or without UDP_SEGMENT, leaves as one datagram, which the
        # kernel fragments (the socket does not set DF).
        length = len(frame)
        try:
            if frame[1] and self.gso:
                chunk = self.mtu if length % self.mtu else self.mtu - 4
                self.sock.sendmsg([frame], [(SOL_UDP, UDP_SEGMENT, SEGMENT.pack(chunk))], 0, peer.address)
            else:
                self.sock.sendto(frame, peer.address)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT) and self.gso and frame[1]:
                log.info("UDP segmentation offload unavailable (%s); sending one datagram per call", e.strerror)
                self.gso = False
                return self._send_fast(frame, peer)
            self.drops[packet.SEND_FAILED] += 1
            self.warnings.warn(packet.SEND_FAILED, "%d bytes to %s (%s): %s", length, peer.host, peer.address[0], e.strerror)
            return None
        counts = peer.counts
        counts[0] += 1
        counts[1] += length - VNET_HDR_LEN
        return None

    def _unreachable(self, offender) -> None:
        self._drop(packet.NO_LEASE, "no lease holds %s", socket.inet_ntoa(offender[16:20]))
        reply = packet.net_unreachable(offender, self.tun_address)
        if reply is not None and self._write_tun(PLAIN + reply):
            self.icmp_sent += 1
