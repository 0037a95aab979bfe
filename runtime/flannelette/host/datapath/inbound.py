"""UDP to flannel0: datagrams checked, one by one or a UDP_GRO run at once, and written into the TUN device.

One half of flannelette.host.datapath.loop.DataPath, which holds the state both halves
share (lease table, socket, counters).
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

from flannelette.host.datapath import batch, packet, vnet
from flannelette.host.datapath.coalesce import HEADERS, Coalescer, finish_gso
from flannelette.host.datapath.packet import CHECKSUM, IPV4_FIELDS
from flannelette.host.kernel.udp import ANCILLARY_SPACE, BUFFER_SIZE, BURST, MSG_DONTWAIT, segment_size
from flannelette.host.datapath.vnet import PLAIN, VNET_HDR_LEN

log = logging.getLogger("flannelette.host.datapath.loop")


class Inbound:
    """The receive half: reads the UDP socket, writes into flannel0; uses the DataPath's table, MTU and counters."""

    def _udp_to_tun(self) -> Iterator[bool]:
        # With UDP_GRO the kernel may hand over several datagrams of one sender
        # in one read, all of the size it reports, the last maybe shorter. A
        # run that passes the checks all at once (flannelette.host.datapath.batch) is written
        # as one joined TCP packet, or packet by packet; anything else is
        # checked datagram by datagram (_deliver), and consecutive TCP segments
        # are still joined (flannelette.host.datapath.coalesce).
        buf = bytearray(BUFFER_SIZE + VNET_HDR_LEN)  # a run of frames is unpacked from its first packet on
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
            step = segment_size(ancillary) or got
            if step == got:
                if not self._deliver_one(view, got, peer):
                    self._deliver(view, 0, got, got, peer, sender, coalescer)
            elif not self._deliver_run(view, got, step, peer, sender, coalescer):
                self._deliver(view, 0, got, step, peer, sender, coalescer)

    def _deliver_one(self, view, got: int, peer) -> bool:
        """A lone plain datagram that passes the common checks, written with its TTL lowered; False for anything else.

        Anything else is left to _deliver, which also finds the reason to drop what it drops.
        """
        if got < IPV4_FIELDS.size or got > self.mtu:
            return False
        table = self.table
        ver_ihl, total, ttl, _, source, destination = IPV4_FIELDS.unpack_from(view, 0)
        if ver_ihl != 0x45 or total != got or ttl <= 1 or source >> table.shift != peer.key \
                or destination >> table.shift != table.own_key:
            return False
        packet.decrement_ttl(view[:got])
        if self._writev_tun([PLAIN, view[:got]]):
            counts = peer.counts
            counts[2] += 1
            counts[3] += got
        return True

    def _deliver_run(self, view, got: int, step: int, peer, sender, coalescer) -> bool:
        """A read of equal-size datagrams checked all at once; False, untouched, when any check fails.

        Plain packets, or fast-format frames of one packet each (UDP, ACKs)
        whose virtio-net headers are all the same, so the first one's verdict
        holds for all. A super-packet cut into datagrams ends shorter: not a run.
        """
        count, tail = divmod(got, step)
        framed = vnet.is_fast(view[0])
        at = VNET_HDR_LEN if framed else 0
        size = step - at
        if count < 2 or size < batch.MIN_SIZE or size > self.mtu:
            return False
        if framed and (tail or vnet.problem(view, step, self.mtu) is not None
                       or not batch.same_headers(view, count, step, VNET_HDR_LEN)):
            return False
        table = self.table
        fields = batch.unpack_run(view, at, count, step)
        if not batch.valid_run(fields, count, size, table.shift, peer.key, table.own_key):
            return False
        full = count * step
        joined = False
        if not framed and batch.may_join(fields, count, step):
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
            batch.decrement_ttls(view, at, fields[batch.CHECK::batch.WIDTH], count, step)
            writev, header = self._writev_tun, [] if framed else [PLAIN]
            for start in range(0, full, step):
                writev([*header, view[start:start + step]])
        counts = peer.counts
        counts[2] += count + joined
        counts[3] += got if joined else count * size
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
            if vnet.is_fast(view[start]):  # a frame, maybe a super-packet cut into the rest of the read
                coalescer.flush()  # in order with what went before
                n = vnet.span(view, start, n, got)
                if self._deliver_fast(table, view[start:start + n], n, sender):
                    delivered += 1
                    carried += n - VNET_HDR_LEN
                start += n
                continue
            # The common case checked inline; the verdict with its reason is
            # worked out only for the rest.
            fields = headers(view, start) if n >= HEADERS.size else None
            if fields is None or not (fields[0] == 0x45 and fields[2] == n <= mtu and fields[5] > 1
                                      and fields[8] >> shift == source_key and fields[9] >> shift == own_key):
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
