"""UDP to flannel0: datagrams read many per call, checked a run at a time where they can be, written into the TUN device.

One half of flannelette.host.datapath.loop.DataPath, which holds the state
both halves share (lease table, socket, counters, the capability exchange).

A read (flannelette.host.kernel.udp.Receiver) brings up to 32 messages, each
one datagram, or several of one size when the kernel joined them (UDP_GRO).
Consecutive datagrams of one sender and one size form a run, wherever the
kernel's batching cut them; a run of plain packets or of segments that passes
the checks all at once (flannelette.host.datapath.batch) is written as joined
TCP packets or packet by packet. Anything else is taken datagram by datagram
(_deliver_each), which finds the reason to drop what it drops.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Iterator

from flannelette.host.datapath import batch, exchange, formats, frames, noise, packet, segments, trains
from flannelette.host.datapath.coalesce import HEADERS, Coalescer, finish_gso
from flannelette.host.datapath.encrypted import buffer_address
from flannelette.host.datapath.packet import CHECKSUM, IPV4_FIELDS
from flannelette.host.datapath.vnet import PLAIN, VNET_HDR_LEN
from flannelette.host.kernel.udp import Receiver

log = logging.getLogger("flannelette.host.datapath")

SEGMENT_HEADER = segments.HEADER
SEGMENT_AT = segments.HEADER_LEN
UNEXPECTED_ANSWER = "unexpected_answer"  # an answer to no hello of ours: stale, replayed or forged
DROP_REASONS = (UNEXPECTED_ANSWER,)


def _address(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


class Inbound:
    """The receive half: reads the UDP socket, writes into flannel0."""

    def _udp_to_tun(self) -> Iterator[bool]:
        receiver = Receiver(self.recv_sock)
        view, slot, receive = receiver.view, receiver.SLOT, receiver.receive
        self._receive_at = buffer_address(receiver.buffer)  # where transport messages are opened from
        self._coalescer = Coalescer(self._write_tun)
        while not self._stopping:
            try:
                k = receive()
            except OSError as e:  # e.g. a queued ICMP error for an earlier send
                log.debug("UDP receive: %s", e)
                continue
            if not k:
                yield False
                continue
            now = self.clock()
            lengths, senders, gro = receiver.lengths, receiver.senders, receiver.segments
            by_address = self.table.by_address
            i = 0
            while i < k:
                sender, n, step = senders[i], lengths[i], gro[i]
                peer = by_address.get(sender)
                if peer is None:
                    self._drop(packet.UNKNOWN_PEER, "%d bytes from %s:%d", n, _address(sender), receiver.port(i))
                    i += 1
                    continue
                if not self._encrypts(peer):  # an encrypting peer is heard when a message of its authenticates
                    peer.heard = now
                if step and step < n:  # the kernel joined datagrams of `step` bytes: they are the run
                    count, tail = divmod(n, step)
                    self._deliver(view, i * slot, count, step, step, tail, peer, now)
                    i += 1
                    continue
                # Consecutive messages of this sender and size, and one shorter after them, are the run.
                j = i + 1
                while j < k and senders[j] == sender and lengths[j] == n and (not gro[j] or gro[j] >= n):
                    j += 1
                tail = 0
                if j < k and senders[j] == sender and lengths[j] < n and (not gro[j] or gro[j] >= lengths[j]):
                    tail = lengths[j]
                self._deliver(view, i * slot, j - i, slot, n, tail, peer, now)
                i = j + (1 if tail else 0)
            if self._waiting_trains:
                self._keep_waiting_trains(now)
            if self._open_units:
                self._keep_waiting_units(now)
            yield True

    # -- a run ---------------------------------------------------------------------

    def _deliver(self, view, start: int, count: int, stride: int, size: int, tail: int, peer, now: float) -> None:
        """`count` datagrams of `size` bytes, `stride` apart from `start`, then maybe one of `tail` bytes, from `peer`."""
        first = view[start]
        if self._encrypts(peer) or first == formats.SEALED_UNIT or first == noise.TRANSPORT:
            firsts = bytes(view[start:start + count * stride:stride]) + (bytes(view[start + count * stride:][:1])
                                                                         if tail else b"")
            if firsts.count(first) == len(firsts):
                if first == formats.SEALED_UNIT:
                    self._deliver_sealed(view, start, count, stride, size, tail, peer, now)
                    return
                if first == noise.TRANSPORT:
                    for position, n in [(start + i * stride, size) for i in range(count)] + (
                            [(start + count * stride, tail)] if tail else []):
                        self._transport_datagram(view, position, n, peer, now)
                    return
            self._deliver_each(view, start, count, stride, size, tail, peer, now)
            return
        if first == formats.TRAIN and peer.frames is None:
            if peer.format != formats.FAST:
                self.exchanges.on_segments(peer, now)
            self._deliver_train(view, start, count, stride, size, tail, peer, now)
            return
        if peer.frames is None and (first == 0x45 or first == formats.SEGMENT):
            at = SEGMENT_AT if first == formats.SEGMENT else 0
            if at and peer.format != formats.FAST:
                self.exchanges.on_segments(peer, now)
            if count == 1 and not tail:
                if self._deliver_one(view, start, size, at, peer):
                    return
            elif bytes(view[start:start + count * stride:stride]).count(first) == count \
                    and self._deliver_run(view, start, count, stride, size, tail, at, peer):
                return
        self._deliver_each(view, start, count, stride, size, tail, peer, now)

    def _deliver_one(self, view, start: int, n: int, at: int, peer) -> bool:
        """A lone datagram that passes the common checks, written with its TTL lowered; False for anything else."""
        inner = n - at
        if inner < IPV4_FIELDS.size or inner > self.mtu or (at and view[start:start + at] != SEGMENT_HEADER):
            return False
        ip = start + at
        table = self.table
        if not batch.accepts(IPV4_FIELDS.unpack_from(view, ip), inner, self.mtu, table.shift, peer.key,
                             table.own_key):
            return False
        header = PLAIN
        if at:
            if segments.problem(view[start:start + n], n, self.mtu) is not None:
                return False
            header = segments.vnet_header(20, view[ip + 9])
        packet.decrement_ttl(view[ip:ip + inner])
        if self._writev_tun([header, view[ip:ip + inner]]):
            counts = peer.counts
            counts.rx_packets += 1
            counts.rx_bytes += inner
        return True

    def _deliver_run(self, view, start: int, count: int, stride: int, size: int, tail: int, at: int, peer) -> bool:
        """A run of plain packets or of segments checked all at once; False, untouched, when any check fails.

        The first datagram's verdict then holds for all: every one has the same
        version, length, TTL, protocol and fragment field, comes from the
        sender's subnet and goes to ours (batch.valid_run, held to the
        per-packet rule by a property test).
        """
        inner = size - at
        if count < 2 or inner < batch.MIN_SIZE or inner > self.mtu:
            return False
        if at and not batch.same_headers(view[start:], count, stride, at, SEGMENT_HEADER):
            return False
        ip = start + at
        table = self.table
        payload = batch.uniform_run(view, ip, count, stride, inner, table.shift, peer.key, table.own_key)
        uniform = bool(payload)
        if uniform:  # one flow's full segments under one header: the common case, checked in a few calls
            parts = [(0, count, payload)]
            fields = batch.unpack_run(view, ip, 1, stride, inner)  # the first's, which stand for all
        else:
            fields = batch.unpack_run(view, ip, count, stride, inner)
            if not batch.valid_run(fields, count, inner, table.shift, peer.key, table.own_key):
                return False
            if at and not batch.completable(fields, inner):
                return False
            parts = None
            if batch.may_join(fields, count, inner):
                parts = batch.joins(fields, count, inner)
                if parts is None:
                    return False  # TCP data that does not join whole: the per-packet path joins what parts do
        full_end = start + count * stride
        joined = False
        if parts is not None:
            first, n, payload = parts[-1]
            part = fields[first * batch.WIDTH:first * batch.WIDTH + batch.WIDTH]
            joined = bool(tail) and tail > at and (not at or view[full_end:full_end + at] == SEGMENT_HEADER) \
                and batch.continues(view, full_end + at, tail - at, inner - payload, part, n, payload)
            for first, n, payload in parts:
                last = first + n == count
                push = bool(view[ip + 33] & batch.TCP_PSH) if uniform else \
                    batch.any_push(fields[first * batch.WIDTH:(first + n) * batch.WIDTH])
                self._write_joined(view, ip + first * stride, n, stride, inner - payload, payload, push,
                                   full_end + at if joined and last else 0, tail - at if joined and last else 0, at)
        else:
            batch.decrement_ttls(view, ip, fields[batch.CHECK::batch.WIDTH], count, stride)
            header = segments.vnet_header(20, view[ip + 9]) if at else PLAIN
            writev = self._writev_tun
            for position in range(ip, ip + count * stride, stride):
                writev([header, view[position:position + inner]])
        counts = peer.counts
        counts.rx_packets += count + joined
        counts.rx_bytes += count * inner + (tail - at if joined else 0)
        if tail and not joined:
            self._deliver_each(view, full_end, 1, stride, tail, 0, peer, self.clock())
        return True

    def _write_joined(self, view, ip: int, count: int, stride: int, headers: int, payload: int, push: bool,
                      tail_ip: int, tail_len: int, at: int) -> None:
        """Write `count` segments of one flow, `stride` apart from `ip` (and the shorter one at `tail_ip`), as one packet."""
        if count == 1 and not tail_len:  # nothing to join: as it came, TTL aside
            packet.decrement_ttl(view[ip:ip + headers + payload])
            header = segments.vnet_header(20, view[ip + 9]) if at else PLAIN
            self._writev_tun([header, view[ip:ip + headers + payload]])
            return
        iov = batch.payloads(view, ip, count, stride, headers, headers + payload)
        last, length = ip + (count - 1) * stride, headers + count * payload
        if tail_len:
            iov.append(view[tail_ip + headers:tail_ip + tail_len])
            last, length = tail_ip, length + tail_len - headers
            push = push or view[tail_ip + 33] & batch.TCP_PSH
        frame = bytearray(VNET_HDR_LEN + headers)
        frame[VNET_HDR_LEN:] = view[ip:ip + headers]
        frame[VNET_HDR_LEN + 8] -= 1  # TTL: checked above 1; the header checksum is redone whole
        finish_gso(frame, length, headers, payload, batch.TCP_ACK | (batch.TCP_PSH if push else 0),
                   CHECKSUM.unpack_from(view, last + 34)[0])
        iov.insert(0, frame)
        self._writev_tun(iov)

    # -- datagram by datagram --------------------------------------------------------

    def _deliver_each(self, view, start: int, count: int, stride: int, size: int, tail: int, peer, now: float) -> None:
        """Check each datagram on its own, for any format, and pass on the good ones; every other one is counted."""
        coalescer = self._coalescer
        for position, n in [(start + i * stride, size) for i in range(count)] + ([(start + count * stride, tail)] if tail else []):
            if peer.frames is not None:
                whole = peer.frames.take(view, position, n, now)
                if whole is None:
                    partial, peer.frames = peer.frames, None
                    self._drop(frames.FRAME_INCOMPLETE, "a frame from %s lost a datagram: %d of %d bytes, then %d",
                               peer.host, partial.have, partial.want, n)
                elif whole:
                    coalescer.flush()
                    buffer, peer.frames = peer.frames.buffer, None
                    self._deliver_frame(memoryview(buffer), len(buffer), peer, now)
                    continue
                else:
                    continue
            first = view[position]
            if first == formats.SEALED_UNIT:
                coalescer.flush()  # in order with what went before
                self._sealed_datagram(view, position, n, peer, now)
                continue
            if first == noise.TRANSPORT:
                coalescer.flush()
                self._transport_datagram(view, position, n, peer, now)
                continue
            if first in noise.LENGTHS and noise.kind(view[position:position + 4], n) \
                    and peer.exchange.state != exchange.PREVIOUS:  # a frame of flannelette 0.1 may look the same
                self._handshake(view[position:position + n], n, first, peer, now)
                continue
            if self._encrypts(peer) and first != formats.HELLO and first != formats.ANSWER:
                self._refuse_plain(peer)
                continue
            if formats.is_plain(first):
                self._deliver_plain(view, position, n, 0, peer, coalescer)
            elif first == formats.SEGMENT:
                problem = segments.problem(view[position:position + n], n, self.mtu)
                if problem is not None:
                    self._drop(problem, "%d bytes (segment) from %s", n, peer.host)
                else:
                    self._deliver_plain(view, position + SEGMENT_AT, n - SEGMENT_AT, SEGMENT_AT, peer, coalescer)
            elif first == formats.TRAIN:
                coalescer.flush()
                self._train_datagram(view, position, n, peer, now)
            elif first == formats.HELLO or first == formats.ANSWER:
                self._exchange(view[position:position + n], n, peer, now)
            elif formats.is_frame(first):
                coalescer.flush()  # in order with what went before
                self.exchanges.on_frames(peer, now)
                want = frames.claimed(view, position, n)
                if want > n and frames.first_of_many(n, want, self.mtu):
                    peer.frames = frames.Reassembly(view, position, n, want, now)
                else:
                    self._deliver_frame(view[position:position + n], n, peer, now)
            else:
                self._drop(packet.MALFORMED, "%d bytes from %s start with 0x%02x, no format's first byte", n,
                           peer.host, first)
        coalescer.flush()

    def _deliver_plain(self, view, ip: int, n: int, at: int, peer, coalescer) -> None:
        """One IPv4 packet (plain, or a segment's, `at` bytes into its datagram): checked, then joined or written."""
        table = self.table
        fields = HEADERS.unpack_from(view, ip) if n >= HEADERS.size else None
        if fields is None or not batch.accepts(IPV4_FIELDS.unpack_from(view, ip), n, self.mtu, table.shift, peer.key,
                                               table.own_key):
            problem = packet.header_problem(view[ip:ip + n], n, self.mtu) or table.sender_problem(peer, view[ip:ip + n])
            if problem is None and view[ip + 8] <= 1:
                problem = packet.TTL_EXPIRED
            if problem is not None:
                self._drop(problem, "%d bytes from %s (%s)", n, peer.host, peer.address[0])
                return
            fields = None  # e.g. IP options: passed on as it came, never joined
        coalescer.add(view, ip, n, fields, partial=bool(at))
        counts = peer.counts
        counts.rx_packets += 1
        counts.rx_bytes += n

    # -- trains ------------------------------------------------------------------------

    def _deliver_train(self, view, start: int, count: int, stride: int, size: int, tail: int, peer, now: float) -> None:
        """A run of a train's datagrams; a whole train in it (a UDP_GRO read, a veth) goes in without a copy."""
        items = count + (1 if tail else 0)
        if peer.train is None and count >= 1 and items <= trains.MAX_DATAGRAMS:
            heads = batch.unpack_headers(view, start, count, stride, trains.HEADER_LEN)
            if tail:
                heads += (bytes(view[start + count * stride:start + count * stride + trains.HEADER_LEN]),)
            frame = heads[0][1]
            if heads == trains.whole_heads(frame, items) and size >= trains.HEADER_LEN + trains.MIN_CHUNK:
                train = trains.Assembly(frame, items, now)
                train.chunk = size - trains.HEADER_LEN
                parts = batch.payloads(view, start, count, stride, trains.HEADER_LEN, size)
                if tail:
                    parts.append(view[start + count * stride + trains.HEADER_LEN:start + count * stride + tail])
                train.parts, train.held = parts, items
                self._deliver_whole_train(train, peer)
                return
        for position, n in [(start + i * stride, size) for i in range(count)] + (
                [(start + count * stride, tail)] if tail else []):
            self._train_datagram(view, position, n, peer, now)

    def _train_datagram(self, view, position: int, n: int, peer, now: float) -> None:
        """One datagram of a train, into the peer's assembly; the train goes in when whole."""
        problem = trains.datagram_problem(view[position:position + n], n)
        if problem is not None:
            self._drop(problem, "%d bytes from %s: not a datagram of a train", n, peer.host)
            return
        _, frame, index, count = trains.HEADER.unpack_from(view, position)
        train = peer.train
        if train is not None and (train.frame != frame or train.count != count or now - train.started > trains.MAX_AGE):
            self._give_up_train(peer)
            train = None
        if train is None:
            train = peer.train = trains.Assembly(frame, count, now)
            self._waiting_trains.add(peer)
        if not train.add(index, view[position + trains.HEADER_LEN:position + n]):
            self._drop(trains.BAD_TRAIN, "%d bytes from %s: datagram %d of train %d again, or of a size not its own",
                       n, peer.host, index, frame)
            return
        if train.whole():
            peer.train = None
            self._waiting_trains.discard(peer)
            self._deliver_whole_train(train, peer)

    def _deliver_whole_train(self, train, peer) -> None:
        got = train.frame_parts()
        if got is None:
            self._drop(trains.BAD_TRAIN, "a train of %d datagrams from %s whose sizes do not add up", train.count,
                       peer.host)
            return
        pieces, length = got
        first = pieces[0]
        if not isinstance(first, memoryview) or first.readonly:
            first = pieces[0] = memoryview(bytearray(first))
        if not self._admit(first[VNET_HDR_LEN:], frames.problem(first, length, self.mtu), length, peer, "a train"):
            return
        if self._writev_tun(pieces):
            counts = peer.counts
            counts.rx_packets += train.count
            counts.rx_bytes += length - VNET_HDR_LEN

    def _give_up_train(self, peer) -> None:
        """A train that will not be whole: what came of it goes in, in pieces around its gaps."""
        train, peer.train = peer.train, None
        self._waiting_trains.discard(peer)
        self._drop(trains.TRAIN_INCOMPLETE, "a train from %s lost %d of its %d datagrams", peer.host,
                   train.count - train.held, train.count)
        for piece in train.salvage():
            self._deliver_frame(memoryview(piece), len(piece), peer, train.started)

    def _keep_waiting_trains(self, now: float) -> None:
        """Before the receive buffer is read into again: what waiting trains hold of it, copied; stale ones given up."""
        for peer in list(self._waiting_trains):
            if now - peer.train.started > trains.MAX_AGE:
                self._give_up_train(peer)
            else:
                peer.train.keep()

    def _deliver_frame(self, frame, n: int, peer, now: float) -> None:
        """A whole frame of the previous release: checked, written into the TUN device as it came, TTL aside."""
        if not self._admit(frame[VNET_HDR_LEN:n], frames.problem(frame, n, self.mtu), n, peer, "frame"):
            return
        if self._write_tun(frame[:n]):
            counts = peer.counts
            counts.rx_packets += 1
            counts.rx_bytes += n - VNET_HDR_LEN

    def _admit(self, ip, problem, n: int, peer, what: str) -> bool:
        """Whether the packet `ip`, whose format's checks found `problem`, goes in: its sender's rule and its TTL
        checked too, the TTL lowered (in the one header the kernel copies into every segment); counted if not."""
        problem = problem or self.table.sender_problem(peer, ip)
        if problem is None and ip[8] <= 1:
            problem = packet.TTL_EXPIRED
        if problem is not None:
            self._drop(problem, "%d bytes (%s) from %s", n, what, peer.host)
            return False
        packet.decrement_ttl(ip)
        return True

    def _exchange(self, data, n: int, peer, now: float) -> None:
        message = exchange.decode(data, n)
        if message is None:
            self._drop(packet.MALFORMED, "%d bytes from %s: not a hello or answer", n, peer.host)
        elif message.kind == formats.HELLO:
            self._send_control(self.exchanges.on_hello(peer, message, now), peer)
        elif not self.exchanges.on_answer(peer, message, now):
            self._drop(UNEXPECTED_ANSWER, "an answer from %s to no hello of ours", peer.host)

    # -- the TUN device ----------------------------------------------------------------

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
