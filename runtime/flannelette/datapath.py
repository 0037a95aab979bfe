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
import io
import logging
import os
import select
import socket
import struct
import threading
from ipaddress import IPv4Address
from typing import Dict, Iterator, List, Optional

from flannelette import batch, packet, vnet
from flannelette.coalesce import HEADERS, PLAIN, VNET_HDR_LEN, Coalescer, finish_gso
from flannelette.packet import LeaseTable
from flannelette.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

BUFFER_SIZE = 65536  # larger than any datagram, so an oversized one is seen whole and counted
CHECKSUM = struct.Struct("!H")  # at offset 10
DESTINATION = struct.Struct("!I")  # at offset 16
IPV4 = struct.Struct("!B1xH4xBxHII")  # version and IHL, total length, TTL, checksum, source, destination
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
SMALL = 256  # bytes: a packet this short read on waking leaves at once


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

    def __init__(self, tun_fd: int, sock: socket.socket, table: LeaseTable, mtu: int, tun_address: IPv4Address, clock,
                 send_sock: Optional[socket.socket] = None):
        # send_sock: where datagrams leave from, when not `sock`. Queues of a
        # multi-queue TUN each send from a port of their own, so the peer's
        # SO_REUSEPORT group spreads what they send over its queues too.
        self.tun_fd, self.recv_sock, self.table, self.mtu = tun_fd, sock, table, mtu
        self.sock = send_sock or sock
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
        loops = {self.tun_fd: self._tun_to_udp(), self.recv_sock.fileno(): self._udp_to_tun()}
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
        table, burst = self.table, 0
        fast = table.fast
        # The run: buf[:end], count frames of size bytes, the last maybe shorter.
        end, count, size = 0, 0, -1
        woke = False
        while not self._stopping:
            if self.table is not table:  # a reload: what is read from here on follows the new table
                if count:
                    send_run(view, end, count, size, fast)
                    end, count, size = 0, 0, -1
                table = self.table
                fast = table.fast
            n = readinto(view[end:])
            if n is None:
                if count:
                    send_run(view, end, count, size, fast)
                    end, count, size = 0, 0, -1
                yield False
                woke = True
                continue
            burst += 1
            if burst == BURST:
                burst = 0
                yield True
            if woke:
                woke = False
                if n <= SMALL and not count:  # likely alone (a ping, an ACK): no read for company first
                    send_run(view, n, 1, n, fast)
                    continue
            if n == size:
                end += n
                count += 1
                if count == MAX_SEGMENTS or end + size > BATCH_BYTES:
                    send_run(view, end, count, size, fast)
                    end, count, size = 0, 0, -1
            elif n > largest:  # a super-packet: alone
                if count:
                    send_run(view, end, count, size, fast)
                self._send_frame(view[end:end + n], fast)
                end, count, size = 0, 0, -1
            elif not count:
                end, count, size = n, 1, n
            elif n < size:  # a shorter frame ends the run
                send_run(view, end + n, count + 1, size, fast)
                end, count, size = 0, 0, -1
            else:  # a longer one starts the next
                send_run(view, end, count, size, fast)
                buf[:n] = buf[end:end + n]
                end, count, size = n, 1, n
        if count:
            send_run(view, end, count, size, fast)

    def _send_run(self, view, end: int, count: int, size: int, fast: bool) -> None:
        """Send buf[:end]: count frames of `size` bytes, the last maybe shorter, checked all at once when they can be."""
        if count == 1:
            self._send_one(view, end, fast)
            return
        table = self.table
        full, tail = divmod(end, size)
        peer = None
        if size >= VNET_HDR_LEN + batch.IPV4_MIN and (not tail or tail >= VNET_HDR_LEN + batch.IPV4_MIN) \
                and (fast or self._finished(view, end, count, size)):
            fields = batch.outbound_layout(full, size, VNET_HDR_LEN).unpack_from(view, 0)
            key = batch.outbound_key(fields, full, table.shift)
            if tail and key is not None and batch.outbound_key(
                    batch.OUTBOUND.unpack_from(view, full * size + VNET_HDR_LEN), 1, table.shift) != key:
                key = None
            peer = table.by_subnet.get(key) if key is not None else None
        if peer is None:  # something to drop, answer or send elsewhere: frame by frame
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

    def _send_one(self, view, n: int, fast: bool) -> None:
        """A lone frame: the common case checked inline, the rest by _route, which says why it drops."""
        if n >= VNET_HDR_LEN + IPV4.size:
            table = self.table
            ver_ihl, _, ttl, check, _, destination = IPV4.unpack_from(view, VNET_HDR_LEN)
            peer = table.by_subnet.get(destination >> table.shift)
            finished = view[:VNET_HDR_LEN] == PLAIN
            if peer is not None and 0x45 <= ver_ihl <= 0x4F and ttl > 1 and (fast or finished):
                view[VNET_HDR_LEN + 8] = ttl - 1
                CHECKSUM.pack_into(view, VNET_HDR_LEN + 10, batch.CHECK_AFTER_TTL[check])
                # A finished packet leaves in flannel's format in either mode: it says all.
                wire = view[VNET_HDR_LEN:n] if finished else view[:n]
                self._send([wire], 1, len(wire), n - VNET_HDR_LEN, peer)
                return
        self._send_each(view, n, 1, n, fast)

    def _send_each(self, view, end: int, count: int, size: int, fast: bool) -> None:
        """The run frame by frame: each checked on its own, dropped or answered with its reason, or sent alone."""
        table = self.table
        for start in range(0, end, size):
            n = min(size, end - start)
            frame = view[start:start + n]
            peer = self._route(table, frame[VNET_HDR_LEN:], n - VNET_HDR_LEN, None if fast else frame[:VNET_HDR_LEN])
            if peer is not None:
                wire = frame if fast else frame[VNET_HDR_LEN:]
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
        peer = self._route(self.table, frame[VNET_HDR_LEN:], len(frame) - VNET_HDR_LEN, None if fast else frame)
        if peer is not None and fast:
            self._send_fast(frame, peer)
        elif peer is not None:  # finished, yet larger than the overlay's MTU: the kernel fragments it
            self._send([frame[VNET_HDR_LEN:]], 1, len(frame) - VNET_HDR_LEN, len(frame) - VNET_HDR_LEN, peer)

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

    def _udp_to_tun(self) -> Iterator[bool]:
        # With UDP_GRO the kernel may hand over several datagrams of one sender
        # in one read, all of the size it reports, the last maybe shorter. A
        # run that passes the checks all at once (flannelette.batch) is written
        # as one joined TCP packet, or packet by packet; anything else is
        # checked datagram by datagram (_deliver), and consecutive TCP segments
        # are still joined (flannelette.coalesce).
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        recvmsg_into, bufs = self.recv_sock.recvmsg_into, [buf]
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
            step = _segment_size(ancillary) or got
            if step == got:
                if not self._deliver_one(view, got, peer):
                    self._deliver(view, 0, got, got, peer, sender, coalescer)
            elif vnet.is_fast(view[0]) and vnet.span(view, 0, step, got) == got:  # one super-packet, cut in datagrams
                if self._deliver_fast(self.table, view[:got], got, sender):
                    counts = peer.counts
                    counts[2] += 1
                    counts[3] += got - VNET_HDR_LEN
            elif not self._deliver_run(view, got, step, peer, sender, coalescer):
                self._deliver(view, 0, got, step, peer, sender, coalescer)

    def _deliver_one(self, view, got: int, peer) -> bool:
        """A lone datagram that passes the common checks, written with its TTL lowered; False for anything else.

        Plain, or a fast-format frame of one packet; anything more is left
        to _deliver, which also finds the reason to drop what it drops.
        """
        at = 0
        if vnet.is_fast(view[0]):
            if view[1] or vnet.problem(view, got, self.mtu) is not None:
                return False
            at = VNET_HDR_LEN
        n = got - at
        if n < IPV4.size or n > self.mtu:
            return False
        table = self.table
        ver_ihl, total, ttl, check, source, destination = IPV4.unpack_from(view, at)
        if ver_ihl != 0x45 or total != n or ttl <= 1 or source >> table.shift != peer.key \
                or destination >> table.shift != table.own_key:
            return False
        view[at + 8] = ttl - 1
        CHECKSUM.pack_into(view, at + 10, batch.CHECK_AFTER_TTL[check])
        if self._writev_tun([view[:got]] if at else [PLAIN, view[:got]]):
            counts = peer.counts
            counts[2] += 1
            counts[3] += n
        return True

    def _deliver_run(self, view, got: int, step: int, peer, sender, coalescer) -> bool:
        """A read of equal-size plain datagrams checked all at once; False, untouched, when any check fails."""
        count, tail = divmod(got, step)
        if count < 2 or step < batch.MIN_SIZE or step > self.mtu or view[0] != 0x45:  # e.g. a fast-format frame
            return False
        table = self.table
        fields = batch.unpack_run(view, 0, count, step)
        if not batch.valid_run(fields, count, step, table.shift, peer.key, table.own_key):
            return False
        full = count * step
        joined = False
        if batch.may_join(fields, count, step):
            parts = batch.joins(fields, count, step)
            if parts is None:
                return False  # TCP data that does not join whole: the per-packet path joins what parts do
            first, n, payload = parts[-1]
            part = fields[first * batch.WIDTH:]
            joined = bool(tail) and batch.continues(view, full, tail, step - payload, part, n, payload)
            for first, n, payload in parts:
                self._write_joined(view, first * step, n, step, payload, fields[first * batch.WIDTH:(first + n) * batch.WIDTH],
                                   got if joined and first + n == count else 0)
        else:
            batch.decrement_ttls(view, 0, fields[batch.CHECK::batch.WIDTH], count, step)
            writev = self._writev_tun
            for start in range(0, full, step):
                writev([PLAIN, view[start:start + step]])
        counts = peer.counts
        counts[2] += count + joined
        counts[3] += got if joined else full
        if tail and not joined:
            self._deliver(view, full, got, step, peer, sender, coalescer)
        return True

    def _write_joined(self, view, start: int, count: int, step: int, payload: int, fields, tail_end: int) -> None:
        """Write `count` segments of one flow from `start` (and the shorter one up to `tail_end`, if any) as one packet."""
        headers, end = step - payload, start + count * step
        if count == 1 and not tail_end:  # nothing to join: as it came, TTL aside
            packet.decrement_ttl(view[start:end])
            self._writev_tun([PLAIN, view[start:end]])
            return
        iov = batch.payloads(view, start, count, step, headers)
        last, length, push = end - step, headers + count * payload, batch.any_push(fields)
        if tail_end:
            iov.append(view[end + headers:tail_end])
            last, length = end, length + tail_end - end - headers
            push = push or view[end + 33] & batch.TCP_PSH
        frame = bytearray(VNET_HDR_LEN + headers)
        frame[VNET_HDR_LEN:] = view[start:start + headers]
        frame[VNET_HDR_LEN + 8] -= 1  # TTL: checked above 1; the header checksum is redone whole
        finish_gso(frame, length, headers, payload, batch.TCP_ACK | (batch.TCP_PSH if push else 0),
                   CHECKSUM.unpack_from(view, last + 34)[0])
        iov.insert(0, frame)
        self._writev_tun(iov)

    def _deliver(self, view, start: int, got: int, step: int, peer, sender, coalescer) -> None:
        """Check each datagram of a read from `start` on and pass the good ones to the TUN device."""
        table, mtu, headers, add = self.table, self.mtu, HEADERS.unpack_from, coalescer.add
        shift, source_key, own_key = table.shift, peer.key, table.own_key
        delivered = carried = 0
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
        return self._writev_tun([frame])

    def _writev_tun(self, parts) -> bool:
        """Write one frame, given in parts (virtio-net header, packet or its pieces), into the TUN device."""
        for _ in range(3):  # a non-blocking TUN write can fail transiently under memory pressure
            try:
                os.writev(self.tun_fd, parts)
                return True
            except BlockingIOError:
                continue
            except OSError as e:
                self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: %s", sum(map(len, parts)), e.strerror)
                return False
        self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: device busy", sum(map(len, parts)))
        return False
