"""The encrypted formats: WireGuard's transport messages to any peer with a key, and sealed units between flannelette hosts.

One part of flannelette.host.datapath.loop.DataPath. The handshakes, keypairs
and timers are flannelette.host.datapath.sessions'; this part seals what the
send half hands it and opens what arrives.

- `wireguard` (a standard peer, e.g. wireguard-go, or a flannelette peer not
  yet known to take more): one finished IPv4 packet per transport message
  (type 4), padded to 16 bytes as WireGuard pads it.
- `sealed` (between flannelette hosts that both take it, by the capability
  exchange): what the send half would have sent in one go, a run of packets
  or a 64 KB TCP super-packet, each with its virtio-net header ("records"),
  sealed in one AEAD call under the session's keys and counter, then cut
  into datagrams that say where they belong:

      0       1       2       3       4               8                       16
      +-------+-------+-------+-------+---------------+-----------------------+--------------
      | 0xF5  | index | count |  ask  | receiver (LE) | counter (LE)          | ciphertext [index * C ...)
      +-------+-------+-------+-------+---------------+-----------------------+--------------

  C is the same in every datagram but the last; the tag ends the last. The
  receiver opens the unit when every datagram is in, checks the counter
  against the session's replay window and every record as it checks a frame
  (flannelette.host.datapath.frames) and its sender (`sender_problem`), and
  writes each record into flannel0. A unit that loses a datagram is lost
  whole: TCP sends its segments again.

  So that loss on the path costs about what it costs a kernel tunnel, each
  host measures the share of a peer's sealed datagrams that never arrive and
  `ask`s it for units of at most that many datagrams (0: any), in the units
  it sends back; a peer asked cuts its super-packets into smaller ones
  (flannelette.host.datapath.segments.smaller) and its runs into shorter
  ones. A host of a release that does not ask sends 0 and ignores the byte.
  The byte is read only from units that open, but it is not sealed itself:
  whoever can change datagrams on the path can make units smaller, as they
  could drop them.

Every opened packet answers to the same rule as a plain one: its source in
the subnet of the peer whose session opened it, its destination in ours.
"""

from __future__ import annotations

import ctypes
import logging
import struct

from flannelette.host.datapath import batch, formats, frames, noise, packet, segments, sessions
from flannelette.host.datapath.crypto import TAG_LEN
from flannelette.host.datapath.packet import TOTAL_LENGTH
from flannelette.host.datapath.segments import MAX_SEGMENTS, MAX_SEND
from flannelette.host.datapath.vnet import GSO_ECN, GSO_TCPV4, PLAIN, VNET_HDR, VNET_HDR_LEN

log = logging.getLogger("flannelette.host.datapath")

SEALED_HEADER = struct.Struct("<BBBBIQ")  # type, index, count, ask, receiver, counter
SEALED_HEADER_LEN = SEALED_HEADER.size
TRANSPORT_HEADER = noise.TRANSPORT_HEADER
MAX_UNIT = 70000  # bytes of records in one unit: a 64 KB super-packet and its header, with room
MAX_DATAGRAMS = 64
MAX_AGE = 0.2  # seconds a unit may take to arrive whole
MAX_OPEN_UNITS = 8  # units of one peer being put together at once
INDEXES = bytes(range(MAX_DATAGRAMS))
# What a host asks of a peer whose sealed datagrams it loses: units short enough that the segments lost with
# a datagram are about LOSS_BUDGET / loss, never fewer than MIN_ASK datagrams a unit (a unit of one datagram
# can't hold a full-sized packet and its record header). Measured over every LOSS_SAMPLE datagrams, not over
# time, so that it tightens as fast when loss has slowed TCP down; a sample without loss doubles what it
# allows, up to any length.
LOSS_BUDGET = 0.02
MIN_ASK = 2
LOSS_SAMPLE = 1000

PLAIN_REFUSED = "plain_refused"  # a plain datagram from a peer with which a session exists (or under "required")
NO_SESSION = "no_session"  # a packet for a peer whose handshake has not completed, beyond what waits for it
UNIT_INCOMPLETE = "unit_incomplete"  # a sealed unit that lost a datagram
BAD_UNIT = "bad_unit"  # a sealed datagram whose numbers do not add up
DROP_REASONS = (PLAIN_REFUSED, NO_SESSION, UNIT_INCOMPLETE, BAD_UNIT) + sessions.DROP_REASONS


def asked(previous: int, loss: float) -> int:
    """The longest unit, in datagrams, to ask of a peer after a window in which `loss` of its datagrams were lost;
    0 for any length."""
    if loss > 0:
        return max(MIN_ASK, min(MAX_DATAGRAMS - 1, int(LOSS_BUDGET / loss)))
    if not previous or previous * 2 >= MAX_DATAGRAMS:
        return 0
    return previous * 2


class LossMeter:
    """How many of one peer's sealed datagrams arrive, and so how long its units may be (`ask`)."""

    __slots__ = ("got", "lost", "ask")

    def __init__(self):
        self.got = self.lost = 0
        self.ask = 0

    def count(self, got: int, lost: int) -> None:
        self.got += got
        self.lost += lost
        total = self.got + self.lost
        if total >= LOSS_SAMPLE:
            self.ask = asked(self.ask, self.lost / total)
            self.got = self.lost = 0


def buffer_address(buffer: bytearray) -> int:
    """Where a bytearray's bytes are, for libcrypto to read and write them in place (it can't be resized after)."""
    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


class Unit:
    """A sealed unit being put together from its datagrams."""

    __slots__ = ("count", "pieces", "held", "started", "kp", "ask")

    def __init__(self, count: int, started: float, kp):
        self.count, self.started, self.kp = count, started, kp
        self.pieces = [None] * count
        self.held = 0
        self.ask = 0


class Encrypted:
    """Seals for peers on an encrypted format, opens what comes sealed."""

    def _set_up_encryption(self, sessions_: "sessions.Sessions | None", required: bool) -> None:
        self.sessions = sessions_
        self.required = required
        # A datagram of the underlay carries this much: the overlay MTU plus what WireGuard adds.
        self.room = self.mtu + noise.OVERHEAD if sessions_ is not None else self.mtu
        self._plain = bytearray(MAX_UNIT)
        self._plain_at = buffer_address(self._plain)
        self._smaller = bytearray(MAX_UNIT)  # one of the smaller super-packets a peer that loses datagrams gets
        self._smaller_at = buffer_address(self._smaller)
        self._cipher = bytearray(MAX_UNIT + TAG_LEN)
        self._cipher_at = buffer_address(self._cipher)
        self._cipher_view = memoryview(self._cipher)
        self._heads = bytearray(MAX_DATAGRAMS * SEALED_HEADER_LEN)
        self._heads_view = memoryview(self._heads)
        # The buffers for sendmsg of a unit's datagrams, header and chunk by turns, made once.
        chunk = self.room - SEALED_HEADER_LEN
        self._unit_iov = [view for i in range(MAX_DATAGRAMS) for view in (
            self._heads_view[i * SEALED_HEADER_LEN:(i + 1) * SEALED_HEADER_LEN],
            self._cipher_view[i * chunk:(i + 1) * chunk])]
        self._opened = bytearray(MAX_UNIT + TAG_LEN)
        self._opened_at = buffer_address(self._opened)
        self._opened_view = memoryview(self._opened)
        self._transport = bytearray(self.room + noise.OVERHEAD)  # one transport message being sealed
        self._transport_at = buffer_address(self._transport)
        self._open_units = set()  # peers with a sealed unit not yet whole

    # -- sending -----------------------------------------------------------------------

    def _keypair_for(self, peer, plaintext):
        """The keypair to seal for `peer` with, starting a handshake where one is due; None when there is none yet,
        and `plaintext` (a callable giving the bytes) waits for the first one, as far as there is room."""
        tunnel = peer.tunnel
        now = self.clock()
        kp, initiation = self.sessions.sealing(tunnel, now)
        if initiation is not None:
            self._send_control(initiation, peer)
        if kp is None:
            if len(tunnel.staged) < sessions.MAX_STAGED:
                tunnel.staged.append(plaintext())
            else:
                self._drop(NO_SESSION, "a packet for %s, whose handshake has not completed", peer.host)
        return kp

    def _send_transport(self, parts, count: int, size: int, carried: int, peer) -> None:
        """`count` finished packets (`parts`, end to end, all of `size` bytes but the last) as transport messages."""
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        view = memoryview(data)
        kp = self._keypair_for(peer, lambda: (formats.WIREGUARD, bytes(data), size, size))
        if kp is None:
            return
        for start in range(0, len(data), size):
            self._seal_transport(kp, view[start:start + size], peer)
        counts = peer.counts
        counts.tx_packets += count
        counts.tx_bytes += carried

    def _seal_transport(self, kp, packet_view, peer) -> None:
        n = len(packet_view)
        padded = noise.padded(n, self.mtu)
        buf = self._transport
        buf[noise.TRANSPORT_HEADER_LEN:noise.TRANSPORT_HEADER_LEN + n] = packet_view
        buf[noise.TRANSPORT_HEADER_LEN + n:noise.TRANSPORT_HEADER_LEN + padded] = bytes(padded - n)
        counter = kp.next_counter()
        TRANSPORT_HEADER.pack_into(buf, 0, noise.TRANSPORT, kp.remote, counter)
        at = self._transport_at + noise.TRANSPORT_HEADER_LEN
        length = kp.send.seal_into(counter, at, padded, at)
        self._transmit([memoryview(buf)[:noise.TRANSPORT_HEADER_LEN + length]], 1, 0, peer)
        self.sessions.sent(kp.tunnel, self.clock(), n > 0)

    def _send_keepalive(self, peer) -> None:
        kp = peer.tunnel.current
        if kp is not None and kp.sendable(self.clock()):
            self._seal_transport(kp, memoryview(b""), peer)

    def _seal_records(self, pieces, length: int, packets: int, peer, stride: int = 0) -> None:
        """Records (virtio-net header and packet, end to end in `pieces`) for a peer on the sealed format, as one
        unit, or as several where the peer asked for shorter ones. `stride`: the length of each of `packets`
        records but the last, when there are several."""
        if length > MAX_UNIT:
            self._drop(packet.OVERSIZED, "%d bytes of packets for %s: more than one sealed unit holds", length,
                       peer.host)
            return
        plain = self._plain
        at = 0
        for piece in pieces:
            plain[at:at + len(piece)] = piece
            at += len(piece)
        kp = self._keypair_for(peer, lambda: (formats.SEALED, bytes(plain[:length]), packets, stride))
        if kp is None:
            return
        ask = peer.unit_limit
        if ask and -(-(length + TAG_LEN) // (self.room - SEALED_HEADER_LEN)) > ask:
            self._seal_shorter(kp, length, packets, stride, ask, peer)
        else:
            self._seal_unit(kp, self._plain_at, length, peer)
        counts = peer.counts
        counts.tx_packets += packets
        counts.tx_bytes += length

    def _seal_shorter(self, kp, length: int, packets: int, stride: int, ask: int, peer) -> None:
        """The records in the plain buffer as units of about `ask` datagrams: a run in shorter runs, a TCP
        super-packet as smaller ones."""
        plain = self._plain
        chunk = self.room - SEALED_HEADER_LEN
        if packets > 1:
            step = stride * max(1, (ask * chunk - TAG_LEN) // stride)
            for start in range(0, length, step):
                self._seal_unit(kp, self._plain_at + start, min(step, length - start), peer)
            return
        gso_type, gso_size = plain[1] & ~GSO_ECN, VNET_HDR.unpack_from(plain, 0)[3]
        if gso_type != GSO_TCPV4 or not gso_size:
            self._seal_unit(kp, self._plain_at, length, peer)
            return
        self._seal_smaller(kp, length, gso_size, ask, peer)

    def _seal_smaller(self, kp, length: int, gso_size: int, ask: int, peer) -> None:
        """The TCP super-packet in the plain buffer as smaller ones of `ask` segments, a unit each, padded to whole
        datagrams so that many units leave in one send (and arrive in one read)."""
        ip = memoryview(self._plain)[VNET_HDR_LEN:length]
        smaller, room = self._smaller, self.room
        smaller[:VNET_HDR_LEN] = self._plain[:VNET_HDR_LEN]
        chunk = room - SEALED_HEADER_LEN
        per_send = min(MAX_SEGMENTS, MAX_SEND // room)
        unit_iov = self._unit_iov
        iov, datagrams = [], 0
        # A unit of k >= 2 segments takes at most k datagrams, so no unit outgrows one send.
        for head, start, end in segments.smaller(ip, gso_size, min(ask, per_send)):
            at = VNET_HDR_LEN + len(head)
            n = at + end - start
            count = -(-(n + TAG_LEN) // chunk)
            if datagrams and datagrams + count > per_send:
                self._transmit(iov, datagrams, room, peer)
                iov, datagrams = [], 0
            smaller[VNET_HDR_LEN:at] = head
            smaller[at:n] = ip[start:end]
            counter = kp.next_counter()
            offset = datagrams * chunk
            kp.send.seal_into(counter, self._smaller_at, n, self._cipher_at + offset, pad=count * chunk - TAG_LEN - n)
            self._write_heads(datagrams, count, kp, counter, peer)
            iov += unit_iov[2 * datagrams:2 * (datagrams + count)]
            datagrams += count
        if datagrams:
            self._transmit(iov, datagrams, room, peer)
        self.sessions.sent(kp.tunnel, self.clock(), True)

    def _seal_unit(self, kp, source: int, length: int, peer) -> None:
        """The `length` bytes at address `source`, sealed and sent as a unit."""
        counter = kp.next_counter()
        total = kp.send.seal_into(counter, source, length, self._cipher_at)
        chunk = self.room - SEALED_HEADER_LEN
        count = -(-total // chunk)
        if count > MAX_DATAGRAMS:
            self._drop(packet.OVERSIZED, "%d bytes for %s: more than one sealed unit holds", length, peer.host)
            return
        self._write_heads(0, count, kp, counter, peer)
        per_send = min(MAX_SEGMENTS, MAX_SEND // self.room)
        for first in range(0, count, per_send):
            last = min(count, first + per_send)
            iov = self._unit_iov[2 * first:2 * last]
            if last == count:  # the tag ends the last chunk, maybe short
                iov[-1] = self._cipher_view[(count - 1) * chunk:total]
            self._transmit(iov, last - first, self.room, peer)
        self.sessions.sent(kp.tunnel, self.clock(), True)

    def _write_heads(self, first: int, count: int, kp, counter: int, peer) -> None:
        """The headers of a unit of `count` datagrams, from header slot `first` on: what this host asks of
        `peer` in each."""
        start, end = first * SEALED_HEADER_LEN, (first + count) * SEALED_HEADER_LEN
        ask = peer.loss.ask if peer.loss is not None else 0
        self._heads[start:end] = SEALED_HEADER.pack(formats.SEALED_UNIT, 0, count, ask, kp.remote, counter) * count
        self._heads[start + 1:end:SEALED_HEADER_LEN] = INDEXES[:count]

    def _flush_staged(self, peer) -> None:
        """The packets that waited for the peer's first keypair."""
        staged, peer.tunnel.staged = peer.tunnel.staged, []
        for kind, data, number, stride in staged:
            if kind != peer.format:  # the format changed meanwhile: TCP sends it again
                self._drop(NO_SESSION, "a packet for %s that waited in another format", peer.host)
            elif kind == formats.SEALED:
                self._seal_records([data], len(data), number, peer, stride)
            else:
                self._send_transport([data], -(-len(data) // number), number, len(data), peer)

    # -- receiving -------------------------------------------------------------------------

    def _encrypts(self, peer) -> bool:
        """Whether nothing but encrypted formats goes to or comes from `peer`: a session with it has existed, or
        every peer must encrypt."""
        return self.required or (peer.tunnel is not None and peer.tunnel.ever)

    def _refuse_plain(self, peer) -> None:
        self._drop(PLAIN_REFUSED, "a plain datagram from %s (%s), which encrypts", peer.host, peer.address[0])

    def _session_for(self, receiver: int, peer, counter: int):
        """The keypair a message with `receiver` and `counter` from `peer` opens with, or None after counting why not."""
        kp = self.sessions.by_index.get(receiver) if self.sessions is not None else None
        if kp is None:
            self._drop(sessions.UNKNOWN_SESSION, "a message from %s for a session this host does not hold", peer.host)
            if peer.tunnel is not None:  # the peer kept a session this host lost (it restarted): a new one
                initiation = self.sessions.initiate(peer.tunnel, self.clock())
                if initiation is not None:
                    self._send_control(initiation, peer)
            return None
        if kp.tunnel.peer is not peer:
            self._drop(sessions.WRONG_PEER, "a session of %s used from %s", kp.tunnel.peer.host, peer.address[0])
            return None
        if not kp.fresh(counter):
            kp.tunnel.replayed += 1
            self._drop(sessions.REPLAYED, "message %d from %s again, or too late", counter, peer.host)
            return None
        if not self.sessions.usable_for_receive(kp, self.clock()):
            self._drop(sessions.EXPIRED_SESSION, "a message from %s under an expired session", peer.host)
            return None
        return kp

    def _opened_by(self, kp, counter: int, data: bool, peer) -> None:
        kp.mark(counter)
        now = peer.heard = self.clock()
        initiation = self.sessions.received(kp, now, data)
        if initiation is not None:
            self._send_control(initiation, peer)

    def _handshake(self, data, n: int, kind: int, peer, now: float) -> None:
        """A handshake message (initiation, response, cookie reply) from `peer`."""
        message = bytes(data[:n])
        if self.sessions is None or peer.tunnel is None:
            self._drop(sessions.UNKNOWN_KEY, "a handshake from %s, which has no key here (or this host none)",
                       peer.host)
            return
        if kind == noise.INITIATION:
            reason, reply = self.sessions.on_initiation(message, peer, peer.address, now)
            if reply is not None:
                self._send_control(reply, peer)
            if reason is None:
                self._encrypted_now(peer)
        elif kind == noise.RESPONSE:
            reason, tunnel = self.sessions.on_response(message, peer, now)
            if reason is None:
                self._encrypted_now(peer)
                if tunnel.staged:
                    self._flush_staged(peer)
                else:  # the responder may send only once it has heard from us with the new keys
                    self._send_keepalive(peer)
        else:
            reason = self.sessions.on_cookie_reply(message, peer, now)
        if reason is not None:
            self._drop(reason, "%s from %s", {1: "an initiation", 2: "a response", 3: "a cookie reply"}[kind],
                       peer.host)
        elif kind != noise.COOKIE_REPLY:  # an initiation or a response proves the peer's static key
            peer.heard = now

    def _transport_datagram(self, view, position: int, n: int, peer, now: float) -> None:
        if noise.kind(view[position:position + 4], n) == noise.TRANSPORT:
            self._open_transport(view, position, n, peer, now)
        else:
            self._drop(packet.MALFORMED, "%d bytes from %s: not a transport message", n, peer.host)

    def _open_transport(self, view, position: int, n: int, peer, now: float) -> None:
        """A transport message: opened, checked, its packet written into flannel0."""
        _, receiver, counter = TRANSPORT_HEADER.unpack_from(view, position)
        kp = self._session_for(receiver, peer, counter)
        if kp is None:
            return
        source = self._receive_at + position + noise.TRANSPORT_HEADER_LEN
        length = kp.receive.open_from(counter, source, n - noise.TRANSPORT_HEADER_LEN, self._opened_at)
        if length < 0:
            kp.tunnel.auth_failed += 1
            self._drop(sessions.AUTH_FAILED, "%d bytes from %s do not open", n, peer.host)
            return
        self._opened_by(kp, counter, length > 0, peer)
        if length == 0:  # a keepalive
            return
        opened = self._opened_view
        inner = TOTAL_LENGTH.unpack_from(opened, 2)[0] if length >= packet.IPV4_HEADER_LEN else 0
        if not packet.IPV4_HEADER_LEN <= inner <= length:
            self._drop(packet.MALFORMED, "an opened message from %s holds no IPv4 packet", peer.host)
            return
        ip = opened[:inner]
        if not self._admit(ip, packet.header_problem(ip, inner, self.mtu), inner, peer, "opened"):
            return
        if self._writev_tun([PLAIN, ip]):
            counts = peer.counts
            counts.rx_packets += 1
            counts.rx_bytes += inner

    def _deliver_sealed(self, view, start: int, count: int, stride: int, size: int, tail: int, peer, now: float) -> None:
        """A run of sealed datagrams; the whole units in it (a UDP_GRO read, a veth) are opened without assembly."""
        items = count + (1 if tail else 0)
        if items < 2 or size <= SEALED_HEADER_LEN:
            for i in range(items):
                self._sealed_datagram(view, start + i * stride, size if i < count else tail, peer, now)
            return
        heads = batch.unpack_headers(view, start, count, stride, SEALED_HEADER_LEN)
        parts = batch.payloads(view, start, count, stride, SEALED_HEADER_LEN, size)
        if tail:
            heads += (bytes(view[start + count * stride:start + count * stride + SEALED_HEADER_LEN]),)
            parts.append(view[start + count * stride + SEALED_HEADER_LEN:start + count * stride + tail])
        i = 0
        while i < items:
            first = heads[i]
            index, whole = first[1], first[2]
            # The datagrams of one unit that follow in order from here: the whole unit, or (a unit that came
            # in more than one read, as without GRO) its part in this run, taken in one step.
            span = min(whole - index, items - i) if first[0] == formats.SEALED_UNIT and whole <= MAX_DATAGRAMS else 0
            if span >= 2 and _one_unit(heads[i:i + span], first, index):
                _, _, _, ask, receiver, counter = SEALED_HEADER.unpack(first)
                kp = self._session_for(receiver, peer, counter)
                if kp is not None:
                    if span == whole:
                        self._open_unit(kp, counter, parts[i:i + whole], ask, peer)
                        i += span
                        continue
                    if self._add_pieces(kp, peer, (receiver, counter), index, whole, ask, parts[i:i + span], now):
                        i += span
                        continue
            # Alone, so that each datagram of a group that can't be taken whole is counted as what it is.
            self._sealed_datagram(view, start + i * stride, size if i < count else tail, peer, now)
            i += 1

    def _sealed_datagram(self, view, position: int, n: int, peer, now: float) -> None:
        if n <= SEALED_HEADER_LEN:
            self._drop(BAD_UNIT, "%d bytes from %s: too short for a sealed datagram", n, peer.host)
            return
        _, index, count, ask, receiver, counter = SEALED_HEADER.unpack_from(view, position)
        if not 1 <= count <= MAX_DATAGRAMS or index >= count:
            self._drop(BAD_UNIT, "a sealed datagram from %s numbered %d of %d", peer.host, index, count)
            return
        kp = self._session_for(receiver, peer, counter)
        if kp is None:
            return
        piece = view[position + SEALED_HEADER_LEN:position + n]
        if count == 1:
            self._open_unit(kp, counter, [piece], ask, peer)
        elif not self._add_pieces(kp, peer, (receiver, counter), index, count, ask, [piece], now):
            self._drop(BAD_UNIT, "sealed datagram %d of %d from %s again, or of another count", index, count,
                       peer.host)

    def _add_pieces(self, kp, peer, key: tuple, index: int, count: int, ask: int, pieces: list, now: float) -> bool:
        """Datagrams `index`.. of the unit `key` (receiver, counter) of `count`, their bytes after the header,
        kept until the unit is whole, then opened; False, nothing taken, when one of them came already or the
        unit had another count."""
        units = peer.units
        if units is None:
            units = peer.units = {}
        unit = units.get(key)
        if unit is None:
            if len(units) >= MAX_OPEN_UNITS:
                self._expire_units(peer, now, oldest=True)
            unit = units[key] = Unit(count, now, kp)
            self._open_units.add(peer)
        end = index + len(pieces)
        if unit.count != count or unit.pieces[index:end].count(None) != len(pieces):
            return False
        unit.pieces[index:end] = [bytes(piece) for piece in pieces]
        unit.held += len(pieces)
        unit.ask = ask
        if unit.held == count:
            del units[key]
            if not units:
                self._open_units.discard(peer)
            self._open_unit(kp, key[1], unit.pieces, unit.ask, peer)
        return True

    def _expire_units(self, peer, now: float, oldest: bool = False) -> None:
        units = peer.units
        for key, unit in sorted(units.items(), key=lambda item: item[1].started):
            if oldest or now - unit.started > MAX_AGE:
                del units[key]
                self._loss_meter(peer).count(unit.held, unit.count - unit.held)
                self._drop(UNIT_INCOMPLETE, "a sealed unit from %s lost %d of its %d datagrams", peer.host,
                           unit.count - unit.held, unit.count)
                oldest = False
        if not units:
            self._open_units.discard(peer)

    def _keep_waiting_units(self, now: float) -> None:
        for peer in list(self._open_units):
            self._expire_units(peer, now)

    @staticmethod
    def _loss_meter(peer) -> LossMeter:
        if peer.loss is None:
            peer.loss = LossMeter()
        return peer.loss

    def _open_unit(self, kp, counter: int, pieces, ask: int, peer) -> None:
        """A whole unit: opened, then every record in it checked and written; what it asks of this host taken."""
        chunk = len(pieces[0])
        if any(len(piece) != chunk for piece in pieces[:-1]) or len(pieces[-1]) > chunk:
            self._drop(BAD_UNIT, "a sealed unit from %s whose datagrams differ in size", peer.host)
            return
        n = chunk * (len(pieces) - 1) + len(pieces[-1])
        if n > MAX_UNIT + TAG_LEN:
            self._drop(BAD_UNIT, "a sealed unit of %d bytes from %s", n, peer.host)
            return
        cipher, at = self._cipher, 0
        for piece in pieces:
            cipher[at:at + len(piece)] = piece
            at += chunk
        length = kp.receive.open_from(counter, self._cipher_at, n, self._opened_at)
        if length < 0:
            kp.tunnel.auth_failed += 1
            self._drop(sessions.AUTH_FAILED, "a sealed unit of %d bytes from %s does not open", n, peer.host)
            return
        self._opened_by(kp, counter, True, peer)
        peer.unit_limit = ask if MIN_ASK <= ask < MAX_DATAGRAMS else 0
        self._loss_meter(peer).count(len(pieces), 0)
        self._deliver_records(self._opened_view, length, peer)

    def _deliver_records(self, opened, length: int, peer) -> None:
        at = 0
        mtu = self.mtu
        counts = peer.counts
        while at < length:
            if opened[at + VNET_HDR_LEN] == 0 if length - at > VNET_HDR_LEN else not opened[at]:
                if opened[at:length] != bytes(length - at):  # zeros end a unit padded to whole datagrams
                    self._drop(packet.MALFORMED, "a sealed unit from %s padded with more than zeros", peer.host)
                return
            if length - at < VNET_HDR_LEN + packet.IPV4_HEADER_LEN:
                self._drop(packet.MALFORMED, "%d bytes left over in a sealed unit from %s", length - at, peer.host)
                return
            n = VNET_HDR_LEN + TOTAL_LENGTH.unpack_from(opened, at + VNET_HDR_LEN + 2)[0]
            if n > length - at:
                self._drop(packet.MALFORMED, "a record of %d bytes in %d left of a sealed unit from %s", n,
                           length - at, peer.host)
                return
            frame = opened[at:at + n]
            at += n
            if not self._admit(frame[VNET_HDR_LEN:], frames.problem(frame, n, mtu), n, peer, "sealed"):
                continue
            if self._writev_tun([frame]):
                counts.rx_packets += 1
                counts.rx_bytes += n - VNET_HDR_LEN


def _one_unit(heads: tuple, first: bytes, index: int = 0) -> bool:
    """Whether `heads` are the headers of one unit's datagrams `index`.. in order: `first`'s, but for the index."""
    expected = bytearray(first * len(heads))
    expected[1::SEALED_HEADER_LEN] = INDEXES[index:index + len(heads)]
    return b"".join(heads) == expected
