"""UDP to flannel0: datagrams checked, one by one or a UDP_GRO run at once, and written into the TUN device.

One half of flannelette.datapath.DataPath, which holds the state both halves
share (lease table, socket, counters).
"""

from __future__ import annotations

import logging
import os
from typing import Iterator

from flannelette import batch, packet, vnet
from flannelette.coalesce import HEADERS, PLAIN, VNET_HDR_LEN, Coalescer, finish_gso
from flannelette.packet import CHECKSUM, IPV4_FIELDS
from flannelette.udp import ANCILLARY_SPACE, BUFFER_SIZE, BURST, MSG_DONTWAIT, segment_size

log = logging.getLogger("flannelette.datapath")


class Inbound:
    """The receive half: reads the UDP socket, writes into flannel0; uses the DataPath's table, MTU and counters."""

    def _udp_to_tun(self) -> Iterator[bool]:
        # With UDP_GRO the kernel may hand over several datagrams of one sender
        # in one read, all of the size it reports, the last maybe shorter. A
        # run that passes the checks all at once (flannelette.batch) is written
        # as one joined TCP packet, or packet by packet; anything else is
        # checked datagram by datagram (_deliver), and consecutive TCP segments
        # are still joined (flannelette.coalesce).
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
        if n < IPV4_FIELDS.size or n > self.mtu:
            return False
        table = self.table
        ver_ihl, total, ttl, check, source, destination = IPV4_FIELDS.unpack_from(view, at)
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
        if count < 2 or step < batch.MIN_SIZE:
            return False
        if vnet.is_fast(view[0]):
            return self._deliver_frames(view, got, step, count, peer)
        if step > self.mtu or view[0] != 0x45:
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

    def _deliver_frames(self, view, got: int, step: int, count: int, peer) -> bool:
        """A read of equal fast-format frames of one packet each (UDP, ACKs): checked at once, written one by one."""
        size = step - VNET_HDR_LEN
        if got != count * step or size < batch.MIN_SIZE or vnet.problem(view, step, self.mtu) is not None:
            return False
        if not batch.same_headers(view, count, step, VNET_HDR_LEN):  # so the first one's verdict holds for all
            return False
        table = self.table
        fields = batch.run_layout(count, step, batch.MIN_SIZE).unpack_from(view, VNET_HDR_LEN)
        if not batch.valid_run(fields, count, size, table.shift, peer.key, table.own_key):
            return False
        batch.decrement_ttls(view, VNET_HDR_LEN, fields[batch.CHECK::batch.WIDTH], count, step)
        writev = self._writev_tun
        for start in range(0, got, step):
            writev([view[start:start + step]])
        counts = peer.counts
        counts[2] += count
        counts[3] += count * size
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
