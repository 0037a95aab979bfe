"""The packet loop: flannel0 to UDP and UDP to flannel0.

Between flannelette hosts each datagram carries what flannel0 hands over, a
TCP super-packet of up to 64 KB included (flannelette.vnet); to a flanneld
host, one inner IPv4 packet per datagram. Both formats are accepted from any
peer.

The rest of the runtime sees only `DataPath(...)`, `start()`, `stop()`,
`update_table()` and the counters, so a faster implementation can replace
this module without touching anything else.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
from ipaddress import IPv4Address
from typing import Dict, Iterator, List

from flannelette import packet, vnet
from flannelette.coalesce import HEADERS, PLAIN, VNET_HDR_LEN, Coalescer
from flannelette.packet import LeaseTable
from flannelette.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

BUFFER_SIZE = 65536  # larger than any datagram, so an oversized one is seen whole and counted
CHECKSUM = struct.Struct("!H")  # at offset 10
DESTINATION = struct.Struct("!I")  # at offset 16
MSG_DONTWAIT = socket.MSG_DONTWAIT
# UDP segmentation offload (Linux 4.18) and receive coalescing (5.0).
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SEGMENT = struct.Struct("=H")
GRO_SIZE = struct.Struct("=i")
ANCILLARY_SPACE = socket.CMSG_SPACE(GRO_SIZE.size)
BATCH_BYTES = 60000  # under the 64 KiB a UDP send can carry, however the packets divide it
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS before Linux 6.2
NOT_IPV4 = "not_ipv4"
DROP_REASONS = packet.DROP_REASONS + (NOT_IPV4,) + vnet.DROP_REASONS
BURST = 32  # packets or reads one direction handles before the other gets a turn


def _segment_size(ancillary) -> int:
    """The datagram size UDP_GRO reports for a coalesced read, or 0."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return GRO_SIZE.unpack(data[:GRO_SIZE.size])[0]
    return 0


class DataPath:
    """Two loops, one per direction, taking turns in one thread; both queues empty park it in poll().

    One thread, not one per direction: measured between two namespace hosts,
    it carries 6-9% more TCP in both modes, because the two directions no
    longer hand the GIL back and forth, and the ACK a TUN write provokes is
    read by the thread that is already running.
    """

    def __init__(self, tun_fd: int, sock: socket.socket, table: LeaseTable, mtu: int, tun_address: IPv4Address, clock):
        self.tun_fd, self.sock, self.table, self.mtu = tun_fd, sock, table, mtu
        self.tun_address = tun_address
        self.drops: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.icmp_sent = 0
        self.retired = [0, 0, 0, 0]  # counts of peers since removed from the table
        self.warnings = RateLimitedLog(clock)
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._threads: List[threading.Thread] = []
        self.gso = True  # cleared at the first sign the kernel can't segment UDP
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:  # before Linux 5.0: one datagram per read, as before
            pass

    # -- the narrow interface ----------------------------------------------------

    def start(self) -> None:
        thread = threading.Thread(target=self._guarded, args=(self._take_turns,), name="data-path", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def update_table(self, table: LeaseTable) -> None:
        """Swap in a new lease table; the loops pick it up at their next packet."""
        gone = set(self.table.peers_by_identity()) - set(table.peers_by_identity())
        for peer in self.table.peers():
            if peer.identity in gone:
                self.retired = [a + b for a, b in zip(self.retired, peer.counts)]
        self.table = table

    def totals(self) -> List[int]:
        """tx packets, tx bytes, rx packets, rx bytes over all peers, past and present."""
        totals = list(self.retired)
        for peer in self.table.peers():
            totals = [a + b for a, b in zip(totals, peer.counts)]
        return totals

    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    # -- the loops ---------------------------------------------------------------

    def _guarded(self, loop) -> None:
        # A bug in one packet's handling must not stop the loop: log it and go on.
        while not self._stopping:
            try:
                loop()
            except Exception:
                log.exception("data path error; continuing")

    def _take_turns(self) -> None:
        # Each loop is a generator that yields False when its queue is empty
        # and True after BURST packets, so a busy direction never starves the
        # other; the thread sleeps in poll() only when both are empty.
        loops = {self.tun_fd: self._tun_to_udp(), self.sock.fileno(): self._udp_to_tun()}
        poller = select.poll()
        for fd in (*loops, self._wake_read):
            poller.register(fd, select.POLLIN)
        poll, ready = poller.poll, list(loops)
        while not self._stopping:
            for fd, _ in poll(0 if ready else None):
                if fd in loops and fd not in ready:
                    ready.append(fd)
            for fd in list(ready):
                if not next(loops[fd]):
                    ready.remove(fd)

    def _drop(self, reason: str, message: str, *args) -> None:
        self.drops[reason] += 1
        self.warnings.warn(reason, message, *args)

    def _tun_to_udp(self) -> Iterator[bool]:
        # The hot loop. Packets are read straight into a batch buffer; a run of
        # equal-sized ones to one peer leaves in a single sendmsg with
        # UDP_SEGMENT, which the kernel splits into one datagram per packet.
        # In flannel's format the virtio-net header is read aside, so the wire
        # carries exactly what flannel sends; in the fast format it is read in
        # place, before its packet, and a frame too large for one datagram of
        # the underlay (a TCP super-packet) leaves on its own (_send_fast).
        # The batch goes out as soon as the TUN queue is empty, so no packet
        # waits for company.
        buf = bytearray(BATCH_BYTES + BUFFER_SIZE)
        view = memoryview(buf)
        readv, fd, mtu = os.readv, self.tun_fd, self.mtu
        header = bytearray(VNET_HDR_LEN)
        plain_iov, fast_iov = [header, view], [view]
        destination, check, pack_check = DESTINATION.unpack_from, CHECKSUM.unpack_from, CHECKSUM.pack_into
        burst = 0
        flush, send_fast = self._flush, self._send_fast
        # The batch: buf[:end], count packets (frames, when framed) of size bytes, to peer.
        end, count, size, peer, framed = 0, 0, 0, None, False
        while not self._stopping:
            table = self.table
            fast = table.fast
            if count and fast is not framed:  # the format changed under a batch
                flush(view, end, count, size, peer, framed)
                end = count = 0
            try:
                if fast:
                    fast_iov[0] = view[end:]
                    n = readv(fd, fast_iov) - VNET_HDR_LEN
                    at = end + VNET_HDR_LEN
                else:
                    plain_iov[1] = view[end:]
                    n = readv(fd, plain_iov) - VNET_HDR_LEN
                    at = end
            except BlockingIOError:
                if count:
                    flush(view, end, count, size, peer, framed)
                    end = count = 0
                yield False
                continue
            burst += 1
            if burst == BURST:
                burst = 0
                yield True
            if n < 20 or buf[at] >> 4 != 4:
                self._drop(NOT_IPV4, "%d bytes from the TUN device are not an IPv4 packet", n)
                continue
            to = table.by_subnet.get(destination(buf, at + 16)[0] >> table.shift)
            if to is None:
                self._unreachable(view[at:at + n])
                continue
            ttl = buf[at + 8]
            if ttl <= 1:
                self._drop(packet.TTL_EXPIRED, "TTL expired for %s", to.host)
                continue
            buf[at + 8] = ttl - 1
            total = (~check(buf, at + 10)[0] & 0xFFFF) + 0xFEFF  # RFC 1624, as packet.decrement_ttl
            pack_check(buf, at + 10, ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF)
            if fast:
                n += VNET_HDR_LEN  # what is batched is the frame
                if n > mtu:
                    if count:
                        flush(view, end, count, size, peer, framed)
                    send_fast(view[end:end + n], to)
                    end = count = 0
                    continue
            elif header[0] & vnet.F_NEEDS_CSUM or header[1]:
                self._drop(vnet.OFFLOAD_TO_PLAIN_PEER, "%d bytes to %s need the kernel's offloads", n, to.host)
                continue
            if count and (to is not peer or n > size):
                flush(view, end, count, size, peer, framed)  # this packet can't join: send the batch
                buf[:n] = buf[end:end + n]
                end = count = 0
            if not count:
                peer, size, framed = to, n, fast
            end += n
            count += 1
            if n < size or end + size > BATCH_BYTES or count == MAX_SEGMENTS:  # a short packet ends a batch
                flush(view, end, count, size, peer, framed)
                end = count = 0
        if count:
            flush(view, end, count, size, peer, framed)

    def _flush(self, view, end: int, count: int, size: int, peer, framed: bool) -> None:
        try:
            if count == 1 or not self.gso:
                self._send_each(view, end, size, peer)
            else:
                self.sock.sendmsg([view[:end]], [(SOL_UDP, UDP_SEGMENT, SEGMENT.pack(size))], 0, peer.address)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT) and self.gso and count > 1:
                log.info("UDP segmentation offload unavailable (%s); sending one datagram per call", e.strerror)
                self.gso = False
                return self._flush(view, end, count, size, peer, framed)
            self.drops[packet.SEND_FAILED] += count
            self.warnings.warn(packet.SEND_FAILED, "%d packets to %s (%s): %s", count, peer.host, peer.address[0], e.strerror)
            return None
        counts = peer.counts
        counts[0] += count
        counts[1] += end - VNET_HDR_LEN * count if framed else end
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

    def _send_each(self, view, end: int, size: int, peer) -> None:
        sendto, address = self.sock.sendto, peer.address
        for start in range(0, end, size):
            sendto(view[start:min(start + size, end)], address)

    def _unreachable(self, offender) -> None:
        self._drop(packet.NO_LEASE, "no lease holds %s", socket.inet_ntoa(offender[16:20]))
        reply = packet.net_unreachable(offender, self.tun_address)
        if reply is not None and self._write_tun(PLAIN + reply):
            self.icmp_sent += 1

    def _udp_to_tun(self) -> Iterator[bool]:
        # With UDP_GRO the kernel may hand over several datagrams of one sender
        # in one read, all of the size it reports, the last maybe shorter;
        # each is checked on its own, then consecutive TCP segments are written
        # into the TUN device as one (see flannelette.coalesce).
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        recvmsg_into, bufs = self.sock.recvmsg_into, [buf]
        coalescer = Coalescer(self._write_tun)
        burst = 0
        while not self._stopping:
            try:
                got, ancillary, _, sender = recvmsg_into(bufs, ANCILLARY_SPACE, MSG_DONTWAIT)
            except BlockingIOError:
                yield False
                continue
            except OSError as e:  # e.g. a queued ICMP error for an earlier send
                log.debug("UDP receive: %s", e)
                continue
            burst += 1
            if burst == BURST:
                burst = 0
                yield True
            peer = self.table.by_public_ip.get(sender[0])
            if peer is None:
                self._drop(packet.UNKNOWN_PEER, "%d bytes from %s:%d", got, sender[0], sender[1])
                continue
            self._deliver(view, got, _segment_size(ancillary) or got, peer, sender, coalescer)

    def _deliver(self, view, got: int, step: int, peer, sender, coalescer) -> None:
        """Check each datagram of a read and pass the good ones to the TUN device."""
        table, mtu, headers, add = self.table, self.mtu, HEADERS.unpack_from, coalescer.add
        shift, source_key, own_key = table.shift, peer.key, table.own_key
        delivered = carried = start = 0
        while start < got:
            n = min(step, got - start)
            # The common case checked inline; the verdict with its reason is
            # worked out only for the rest.
            fields = headers(view, start) if n >= HEADERS.size else None
            if fields is None or not (fields[0] == 0x45 and fields[2] == n <= mtu and fields[5] > 1
                                      and fields[8] >> shift == source_key and fields[9] >> shift == own_key):
                if vnet.is_fast(view[start]):
                    coalescer.flush()  # in order with what went before
                    n = vnet.span(view, start, n, got)
                    if self._deliver_fast(table, view[start:start + n], n, sender):
                        delivered += 1
                        carried += n - VNET_HDR_LEN
                    start += n
                    continue
                if not self._acceptable(table, view[start:start + n], n, sender):
                    start += n
                    continue
                fields = None  # e.g. IP options: passed on as it came, never joined
            add(view, start, n, fields)
            delivered += 1
            carried += n
            start += n
        coalescer.flush()
        counts = peer.counts
        counts[2] += delivered
        counts[3] += carried

    def _deliver_fast(self, table, frame, n: int, sender) -> bool:
        """Check a fast-mode datagram and write it into the TUN device as it came, TTL aside."""
        inner = frame[VNET_HDR_LEN:]
        problem = vnet.problem(frame, n, self.mtu) or table.sender_problem(sender[0], inner)
        if problem is None and inner[8] <= 1:
            problem = packet.TTL_EXPIRED
        if problem is not None:
            self._drop(problem, "%d bytes (fast format) from %s:%d", n, sender[0], sender[1])
            return False
        packet.decrement_ttl(inner)  # in the one header the kernel copies into every segment
        return self._write_tun(frame)

    def _acceptable(self, table, data, n: int, sender) -> bool:
        """The full check, for a packet the inline one did not pass; drops and counts it when bad."""
        problem = packet.header_problem(data, n, self.mtu) or table.sender_problem(sender[0], data)
        if problem is None and data[8] <= 1:
            problem = packet.TTL_EXPIRED
        if problem is None:
            return True
        self._drop(problem, "%d bytes from %s:%d", n, sender[0], sender[1])
        return False

    def _write_tun(self, frame) -> bool:
        """Write one frame (virtio-net header + packet) into the TUN device."""
        for _ in range(3):  # a non-blocking TUN write can fail transiently under memory pressure
            try:
                os.write(self.tun_fd, frame)
                return True
            except BlockingIOError:
                continue
            except OSError as e:
                self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: %s", len(frame), e.strerror)
                return False
        self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: device busy", len(frame))
        return False
