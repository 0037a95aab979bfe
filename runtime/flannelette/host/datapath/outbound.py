"""flannel0 to UDP: frames read from the TUN device in runs, checked, TTL-decremented and sent in each peer's format.

One half of flannelette.host.datapath.loop.DataPath, which holds the state
both halves share (lease table, socket, counters, the capability exchange).

While a peer takes segments (flannelette.host.datapath.segments), flannel0
hands over TCP super-packets of up to 64 KB with their checksums pending, and
they leave cut into segments, many per sendmsg (UDP_SEGMENT). To a peer on
flannel's format every packet leaves finished: flannel0 does it when no peer
takes segments (no offloads asked of it), the runtime where some do.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
from typing import Iterator

from flannelette.host.datapath import batch, formats, packet, segments, trains
from flannelette.host.datapath.packet import DESTINATION
from flannelette.host.datapath.vnet import (
    CSUM_OFFSETS, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, PLAIN, VNET_HDR, VNET_HDR_LEN,
)
from flannelette.host.kernel import tun
from flannelette.host.kernel.udp import BUFFER_SIZE, BURST, SEGMENT, SOL_UDP, UDP_SEGMENT

log = logging.getLogger("flannelette.host.datapath")

BATCH_BYTES = 60000  # under the 64 KiB a UDP send can carry, however the packets divide it
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS before Linux 6.2
SMALL = 256  # bytes: a packet this short read on waking leaves at once
NOT_IPV4 = "not_ipv4"
DROP_REASONS = (NOT_IPV4,)
TRAIN_SLOTS = 47  # datagrams of the longest train: a 64 KB frame in chunks of 1468 bytes, and the header copy
SMALL_READS = 8  # reads of small frames after which flannel0 is read whole again, not scattered for a train
# Where the segment header goes in a frame's slot: over the last bytes of its virtio-net header.
HEADER_AT = VNET_HDR_LEN - segments.HEADER_LEN


class Outbound:
    """The send half: reads flannel0, sends to peers."""

    def _tun_to_udp(self) -> Iterator[bool]:
        # The hot loop: one read per frame and little else. Each frame
        # (virtio-net header, then the packet) is read into a batch buffer
        # behind the ones before; while they are of one size they form a run,
        # which is checked, TTL-decremented and sent as a whole (_send_run), a
        # shorter frame ending it. A super-packet goes on its own. The run goes
        # out as soon as the TUN queue is empty, so no packet waits for company.
        # After a super-packet, reads are scattered (ScatterReader): a frame's
        # first chunk lands in the batch buffer, the rest straight in the slots
        # of a train, so the next super-packet needs no copy to leave as one.
        buf = bytearray(BATCH_BYTES + BUFFER_SIZE)
        view = memoryview(buf)
        readinto = io.FileIO(self.tun_fd, "rb", closefd=False).readinto  # None when the queue is empty
        room = self.mtu
        chunk = room - trains.HEADER_LEN
        self._train = train = bytearray(TRAIN_SLOTS * room)
        self._train_view = slots = memoryview(train)
        slots[0::room] = bytes((formats.TRAIN,)) * TRAIN_SLOTS  # what every train's datagrams share, written once
        slots[2::room] = bytes(range(TRAIN_SLOTS))
        scatter = tun.scatter_reader(self.tun_fd, buf, train, chunk, room, trains.HEADER_LEN, TRAIN_SLOTS)
        scattered, small = False, 0
        largest, send_run = self.mtu + VNET_HDR_LEN, self._send_run
        since = 0  # frames sent since the other direction last had a turn
        # The run: buf[:end], count frames of size bytes, the last maybe shorter.
        end, count, size = 0, 0, -1
        woke = False
        while not self._stopping:
            n = scatter.read(end) if scattered else readinto(view[end:])
            if n is None:
                if count:
                    send_run(view, end, count, size)
                    end, count, size = 0, 0, -1
                yield False
                woke, since = True, 0
                continue
            if scattered:
                if n <= chunk:
                    small += 1
                    scattered = small < SMALL_READS
                elif n <= largest:  # a full-sized frame: its tail back behind its head, as a run wants it
                    view[end + chunk:end + n] = slots[room + trains.HEADER_LEN:room + trains.HEADER_LEN + n - chunk]
            if n == size:  # the common case, kept short: the run grows
                end += n
                count += 1
                if count < MAX_SEGMENTS and end + size <= BATCH_BYTES:
                    continue
                send_run(view, end, count, size)
                since += count
                end, count, size = 0, 0, -1
            elif n > largest:  # a super-packet: alone
                if count:
                    send_run(view, end, count, size)
                self._send_large(view, end, n, scattered)
                since += count + 1
                end, count, size, woke = 0, 0, -1, False
                scattered, small = scatter is not None, 0
            elif not count:
                if woke and n <= SMALL:  # likely alone (a ping, an ACK): no read for company first
                    send_run(view, n, 1, n)
                    since += 1
                else:
                    end, count, size = n, 1, n
                woke = False
                continue
            elif n < size:  # a shorter frame ends the run
                send_run(view, end + n, count + 1, size)
                since += count + 1
                end, count, size = 0, 0, -1
            else:  # a longer one starts the next
                send_run(view, end, count, size)
                since += count
                buf[:n] = buf[end:end + n]
                end, count, size = n, 1, n
                continue
            if since >= BURST:  # between runs: the other direction's turn
                since = 0
                yield True
        if count:
            send_run(view, end, count, size)

    # -- a super-packet --------------------------------------------------------------

    def _send_large(self, view, end: int, n: int, scattered: bool) -> None:
        """A frame larger than a datagram: to a peer taking the fast format as a train, to others cut into plain
        segments. `scattered`: its first chunk is at view[end:], the rest in the train's slots."""
        room = self.mtu
        chunk = room - trains.HEADER_LEN
        slots = self._train_view
        head = view[end:end + chunk] if scattered else view[end:end + n]
        peer = self._route(head[VNET_HDR_LEN:], n - VNET_HDR_LEN)
        if peer is None:
            return
        at = trains.HEADER_LEN
        if peer.format == formats.SEALED:
            pieces = [head]
            if scattered:  # the slots' chunks without the room left for train headers, joined in C
                last = -(-n // chunk) - 1
                if last > 1:
                    pieces.append(b"".join(batch.gapped(last - 1, at, chunk).unpack_from(slots, room)))
                if last:
                    pieces.append(slots[last * room + at:last * room + at + n - last * chunk])
            self._seal_records(pieces, n, 1, peer)
            return
        if peer.format == formats.FAST and head[1] & 0x7F == GSO_TCPV4:
            if scattered:
                slots[at:at + chunk] = head
            else:
                for i, start in enumerate(range(0, n, chunk)):
                    piece = head[start:start + chunk]
                    slots[i * room + at:i * room + at + len(piece)] = piece
            self._send_train(n, peer)
            return
        frame = head
        if scattered:  # whole again, for the ways that need it so (rare: a peer on flannel's format)
            pieces = [head] + [slots[i * room + at:i * room + at + chunk] for i in range(1, -(-n // chunk))]
            frame = memoryview(bytearray(b"".join(pieces)[:n]))
        self._send_routed(frame, n, peer)

    def _send_train(self, n: int, peer) -> None:
        """The frame in the train's slots leaves as a train: headers completed, the header copy placed, sent."""
        room = self.mtu
        chunk, at = room - trains.HEADER_LEN, trains.HEADER_LEN
        slots = self._train_view
        copy = trains.copy_length(slots[at:at + chunk])
        count, last_length, shared = trains.layout(n, copy, chunk)
        chunks = -(-n // chunk)
        tail = n - (chunks - 1) * chunk
        self._train_id = frame = (self._train_id + 1) & 0xFF
        span = count * room
        slots[1:span:room] = bytes((frame,)) * count
        slots[3:span:room] = bytes((count,)) * count
        last = (count - 1) * room + at
        if copy:
            if shared:  # the last datagram: the copy, then the last chunk behind it
                slots[last + copy:last + copy + tail] = slots[last:last + tail]
            else:  # the last chunk padded, so every datagram before the copy's is of one size
                padding = (chunks - 1) * room + at + tail
                slots[padding:(chunks - 1) * room + room] = bytes(room - at - tail)
            slots[last:last + copy] = slots[at:at + copy]
        total = (count - 1) * room + last_length
        per_send = min(segments.MAX_SEGMENTS, segments.MAX_SEND // room)
        for start in range(0, count, per_send):
            stop = min(count, start + per_send)
            self._send([slots[start * room:min(total, stop * room)]], stop - start, room, 0, peer)
        peer.counts.tx_bytes += n - VNET_HDR_LEN

    # -- a run of frames -----------------------------------------------------------

    def _send_run(self, view, end: int, count: int, size: int) -> None:
        """Send buf[:end]: count frames of `size` bytes, the last maybe shorter, checked all at once when they can be."""
        table = self.table
        full, tail = divmod(end, size)
        peer = None
        shortest = VNET_HDR_LEN + packet.IPV4_HEADER_LEN
        if count > 1 and size >= shortest and (not tail or tail >= shortest):
            fields = batch.outbound_layout(full, size, VNET_HDR_LEN).unpack_from(view, 0)
            key = batch.outbound_key(fields, full, table.shift)
            if tail and key is not None and batch.outbound_key(
                    batch.OUTBOUND.unpack_from(view, full * size + VNET_HDR_LEN), 1, table.shift) != key:
                key = None
            peer = table.by_subnet.get(key) if key is not None else None
        if peer is None:  # a lone frame, or something to drop, answer or send elsewhere: frame by frame
            self._send_each(view, end, size)
            return
        if peer.format == formats.SEALED:  # the run, headers and all, in one sealed unit
            self._decrement_run(view, fields, full, size, tail, end)
            self._seal_records([view[:end]], end, count, peer, size)
            return
        flags, gso_types = bytes(view[0:end:size]), bytes(view[1:end:size])
        if gso_types.count(GSO_NONE) != count:
            self._send_each(view, end, size)
        elif flags.count(0) == count:  # finished packets: flannel's format to anyone
            self._decrement_run(view, fields, full, size, tail, end)
            packets = batch.payloads(view, 0, full, size, VNET_HDR_LEN)
            if tail:
                packets.append(view[full * size + VNET_HDR_LEN:end])
            self._send(packets, count, size - VNET_HDR_LEN, end - VNET_HDR_LEN * count, peer)
        elif flags.count(F_NEEDS_CSUM) == count and peer.format == formats.FAST \
                and size - HEADER_AT <= self.mtu and self._completable_run(view, fields, full, size, tail, end):
            self._decrement_run(view, fields, full, size, tail, end)
            for k, byte in enumerate(segments.HEADER):
                view[HEADER_AT + k:end:size] = bytes((byte,)) * count
            datagrams = [view[at:at + size - HEADER_AT] for at in range(HEADER_AT, full * size, size)]
            if tail:
                datagrams.append(view[full * size + HEADER_AT:end])
            self._send(datagrams, count, size - HEADER_AT, end - VNET_HDR_LEN * count, peer)
        else:
            self._send_each(view, end, size)

    @staticmethod
    def _decrement_run(view, fields, full: int, size: int, tail: int, end: int) -> None:
        batch.decrement_ttls(view, VNET_HDR_LEN, fields[batch.OUT_CHECK::batch.OUT_WIDTH], full, size)
        if tail:
            packet.decrement_ttl(view[full * size + VNET_HDR_LEN:end])

    @staticmethod
    def _completable_run(view, fields, full: int, size: int, tail: int, end: int) -> bool:
        """Whether every frame of the run is a TCP or UDP packet without options whose checksum the kernel left
        where a segment says it is (csum_start 20, csum_offset 16 or 6)."""
        protocols = fields[batch.OUT_PROTO::batch.OUT_WIDTH]
        protocol = protocols[0]
        offset = CSUM_OFFSETS.get(protocol)
        if offset is None or protocols.count(protocol) != full or fields[batch.OUT_VER_IHL::batch.OUT_WIDTH].count(0x45) != full:
            return False
        starts = bytes(view[6:end:size])
        offsets = bytes(view[8:end:size])
        count = full + (1 if tail else 0)
        if starts.count(20) != count or offsets.count(offset) != count:
            return False
        return not tail or (view[full * size + VNET_HDR_LEN] == 0x45 and view[full * size + VNET_HDR_LEN + 9] == protocol)

    def _send_each(self, view, end: int, size: int) -> None:
        """The run frame by frame, each checked on its own, dropped or answered with its reason, or sent."""
        for start in range(0, end, size):
            n = min(size, end - start)
            self._send_one(view[start:start + n], n)

    # -- one frame ---------------------------------------------------------------------

    def _send_one(self, frame, n: int) -> None:
        """One frame (virtio-net header, then a packet, maybe a TCP super-packet), in its peer's format."""
        peer = self._route(frame[VNET_HDR_LEN:n], n - VNET_HDR_LEN)
        if peer is not None:
            self._send_routed(frame, n, peer)

    def _send_routed(self, frame, n: int, peer) -> None:
        """A frame whose peer is known and whose TTL is lowered."""
        if peer.format == formats.SEALED:
            self._seal_records([frame[:n]], n, 1, peer)
            return
        ip = frame[VNET_HDR_LEN:n]
        flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame, 0)
        partial = peer.format == formats.FAST
        if gso_type & ~0x80 == GSO_TCPV4:
            self._send_cut(segments.cut(ip, gso_size, self.mtu, partial), len(ip), peer)
        elif flags != F_NEEDS_CSUM:  # finished: flannel's format says all of it
            self._send([ip], 1, len(ip), len(ip), peer)
        elif partial and self._completable(ip, csum_start, csum_offset):
            if segments.fits(len(ip), self.mtu):
                self._send([segments.HEADER, ip], 1, len(ip) + segments.HEADER_LEN, len(ip), peer)
            elif ip[9] == segments.IPPROTO_TCP:
                ihl = (ip[0] & 0x0F) * 4
                self._send_cut(segments.cut(ip, len(ip) - ihl - segments.tcp_header_len(ip, ihl), self.mtu, True),
                               len(ip), peer)
            else:  # a full-sized UDP packet: one datagram can't hold it and a segment header
                segments.complete_checksum(ip, csum_start, csum_offset)
                self._send([ip], 1, len(ip), len(ip), peer)
        else:
            segments.complete_checksum(ip, csum_start, csum_offset)
            self._send([ip], 1, len(ip), len(ip), peer)

    @staticmethod
    def _completable(ip, csum_start: int, csum_offset: int) -> bool:
        ihl = (ip[0] & 0x0F) * 4
        return csum_start == ihl and CSUM_OFFSETS.get(ip[9]) == csum_offset and not packet.WORD.unpack_from(ip, 6)[0] & 0x3FFF

    def _route(self, data, n: int):
        """The peer a packet read from flannel0 goes to, its TTL lowered; None when it is dropped or answered."""
        if n < packet.IPV4_HEADER_LEN or data[0] >> 4 != 4:
            self._drop(NOT_IPV4, "%d bytes from the TUN device are not an IPv4 packet", n)
            return None
        table = self.table
        peer = table.by_subnet.get(DESTINATION.unpack_from(data, 16)[0] >> table.shift)
        if peer is None:
            self._unreachable(data[:n])
            return None
        if data[8] <= 1:
            self._drop(packet.TTL_EXPIRED, "TTL expired for %s", peer.host)
            return None
        packet.decrement_ttl(data)
        return peer

    # -- the socket ----------------------------------------------------------------------

    def _send_cut(self, sends, carried: int, peer) -> None:
        for parts, count, size in sends:
            self._send(parts, count, size, 0, peer)
        peer.counts.tx_bytes += carried

    def _send(self, parts, count: int, size: int, carried: int, peer) -> None:
        """Send `parts` (buffers, end to end) to `peer` as `count` datagrams of `size` bytes, the last maybe shorter."""
        tunnel = peer.tunnel
        if tunnel is not None:
            if peer.format == formats.WIREGUARD:
                return self._send_transport(parts, count, size, carried, peer)
            if tunnel.initiated is None and tunnel.current is None:  # plain until the peer shows it speaks WireGuard
                initiation = self.sessions.initiate(tunnel, self.clock())
                if initiation is not None:
                    self._send_control(initiation, peer)
        if self._transmit(parts, count, size, peer):
            counts = peer.counts
            counts.tx_packets += count
            counts.tx_bytes += carried
        return None

    def _transmit(self, parts, count: int, size: int, peer) -> bool:
        """`parts` (buffers, end to end) to `peer` as `count` datagrams of `size` bytes, the last maybe shorter: in
        one UDP_SEGMENT send where the kernel has it (Linux 4.18), one by one where it has not."""
        try:
            if count == 1:
                self.sock.sendmsg(parts, (), 0, peer.address)
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
                return self._transmit(parts, count, size, peer)
            self.drops[packet.SEND_FAILED] += count
            self.warnings.warn(packet.SEND_FAILED, "%d datagrams to %s (%s): %s", count, peer.host, peer.address[0],
                               e.strerror)
            return False
        return True

    def _send_control(self, message: bytes, peer) -> None:
        """A message of the capability exchange."""
        try:
            self.sock.sendto(message, peer.address)
        except OSError as e:
            self.drops[packet.SEND_FAILED] += 1
            self.warnings.warn(packet.SEND_FAILED, "a hello to %s (%s): %s", peer.host, peer.address[0], e.strerror)

    def _unreachable(self, offender) -> None:
        self._drop(packet.NO_LEASE, "no lease holds %s", socket.inet_ntoa(offender[16:20]))
        reply = packet.net_unreachable(offender, self.tun_address)
        if reply is not None and self._write_tun(PLAIN + reply):
            self.icmp_sent += 1
