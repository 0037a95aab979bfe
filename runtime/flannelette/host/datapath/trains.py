"""Trains: a frame too large for one datagram, cut into datagrams that each say where they belong.

A frame is what flannel0 hands over with IFF_VNET_HDR: a 10-byte
virtio_net_hdr, then one IPv4 packet, up to a 64 KB TCP super-packet. The
sender reads it straight into datagram-sized slots (a scattered read, no copy
in Python), writes a 4-byte header in front of each slot and sends the train
in one sendmsg (UDP_SEGMENT):

    0       1       2       3       4
    +-------+-------+-------+-------+---------------------------------------
    | 0xF4  | frame | index | count | the frame's bytes [index * C, (index + 1) * C)
    +-------+-------+-------+-------+---------------------------------------

C, the chunk, is the same in every datagram but the last. `frame` numbers the
trains of one sender (mod 256), `count` is how many datagrams the train has.
The last datagram of a TCP super-packet's train starts with a copy of the
frame's headers (virtio-net, IPv4, TCP), its chunk behind them or, where no
room is left there, in the datagram before it, padded to C with zeros.

The receiver puts the frame back together from whatever reads bring the
datagrams in (all in one UDP_GRO read on a veth, in several on a wire, one
per read without GRO), checks it whole as a frame (flannelette.host.datapath
.frames) and writes it into flannel0 in one call. When a datagram is lost,
the bytes around the gap still go in, as super-packets of their own with
headers made from the first chunk or the copy: the loss costs the TCP
segments the lost bytes belonged to, as it would through a kernel tunnel.

Nothing here touches a device or a socket: it is tested on bytes.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import List, Optional, Tuple

from flannelette.host.datapath import formats
from flannelette.host.datapath.segments import SEQ, TCP_CWR, TCP_FIN, TCP_PSH, WORD, segment_header
from flannelette.host.datapath.vnet import F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR, VNET_HDR_LEN

HEADER = struct.Struct("!BBBB")  # type, frame, index, count
HEADER_LEN = HEADER.size
MAX_DATAGRAMS = 64  # a 64 KB frame in datagrams of at least ~1 KB
MIN_CHUNK = 256  # no train of tiny pieces: a flood of them would cost a step each
MAX_AGE = 0.2  # seconds a train may take before what came of it is delivered as it is
BAD_TRAIN = "bad_train"  # a datagram or a train whose numbers do not add up
TRAIN_INCOMPLETE = "train_incomplete"  # a train that lost datagrams (what came is still delivered)
DROP_REASONS = (BAD_TRAIN, TRAIN_INCOMPLETE)
SEQ_SPACE = 1 << 32


# -- the sender's side ---------------------------------------------------------


def copy_length(frame) -> int:
    """How many of a frame's first bytes its last datagram repeats: the headers of a TCP super-packet, else none."""
    if frame[1] & 0x7F != GSO_TCPV4:
        return 0
    ip = VNET_HDR_LEN
    ihl = (frame[ip] & 0x0F) * 4
    return VNET_HDR_LEN + ihl + (frame[ip + ihl + 12] >> 4) * 4


def layout(length: int, copy: int, chunk: int) -> Tuple[int, int, bool]:
    """(datagrams, bytes of the last datagram, whether the last chunk shares the last datagram with the copy)."""
    chunks = -(-length // chunk)
    last = length - (chunks - 1) * chunk
    if not copy:
        return chunks, HEADER_LEN + last, False
    if copy + last <= chunk:
        return chunks, HEADER_LEN + copy + last, True
    return chunks + 1, HEADER_LEN + copy, False


# -- the receiver's side ---------------------------------------------------------


def frame_length(chunk0) -> int:
    """The length a frame claims (virtio-net header and packet), from its first bytes; 0 when they can't say."""
    if len(chunk0) < VNET_HDR_LEN + 4 or chunk0[VNET_HDR_LEN] >> 4 != 4:
        return 0
    return WORD.unpack_from(chunk0, VNET_HDR_LEN + 2)[0] + VNET_HDR_LEN


class Assembly:
    """One train of one peer, from its datagrams as they come; the parts are views until kept (`keep`)."""

    __slots__ = ("frame", "count", "chunk", "parts", "held", "fresh", "started")

    def __init__(self, frame: int, count: int, now: float):
        self.frame, self.count, self.started = frame, count, now
        self.chunk = 0  # C, from the first datagram that is not the last
        self.parts: List[Optional[memoryview]] = [None] * count  # each datagram's bytes after its header
        self.held = 0
        self.fresh: List[int] = []  # parts that are still views into a receive buffer

    def add(self, index: int, body) -> bool:
        """Take datagram `index` (its bytes after the header); False when its size or place can't be this train's."""
        if self.parts[index] is not None:
            return False  # a duplicate
        if index < self.count - 1:
            if self.chunk and len(body) != self.chunk:
                return False
            self.chunk = len(body)
        self.parts[index] = body
        self.held += 1
        self.fresh.append(index)
        return True

    def whole(self) -> bool:
        return self.held == self.count

    def keep(self) -> None:
        """Copy what the views added since the last keep show: the buffer they look into is about to be read into."""
        parts = self.parts
        for index in self.fresh:
            parts[index] = memoryview(bytearray(parts[index]))
        self.fresh = []

    def frame_parts(self) -> Optional[Tuple[list, int]]:
        """A whole train as (the frame's pieces in order, its length); None when the numbers do not add up."""
        first, last = self.parts[0], self.parts[-1]
        length = frame_length(first)
        if self.chunk < MIN_CHUNK or not length:
            return None
        copy = copy_length(first)
        count, last_length, shared = layout(length, copy, self.chunk)
        if count != self.count or HEADER_LEN + len(last) != last_length or (copy and last[:copy] != first[:copy]):
            return None
        chunks = count - (0 if shared or not copy else 1)
        pieces = list(self.parts[:chunks])
        tail = length - (chunks - 1) * self.chunk
        pieces[-1] = last[copy:copy + tail] if shared else pieces[-1][:tail]
        return pieces, length

    def salvage(self) -> List[bytearray]:
        """What can still be delivered of an incomplete train: the runs of bytes around its gaps, as frames of
        their own with headers made from the first chunk or the copy; nothing when neither came."""
        headers = self._headers()
        chunk = self.chunk
        if headers is None:
            return []
        length = frame_length(headers)
        if chunk < MIN_CHUNK:  # only the last datagram came: its chunk ends the frame, wherever C put it
            last = self.parts[-1]
            if chunk or last is None or len(last) <= len(headers):
                return []
            tail = last[len(headers):]
            piece = self._piece(headers, length, [(length - len(tail), tail)])
            return [piece] if piece is not None else []
        count, _, shared = layout(length, len(headers), chunk)
        if count != self.count:
            return []
        chunks = count - (0 if shared else 1)
        spans = []  # (frame offset, bytes) of each chunk that came
        for index in range(chunks):
            part = self.parts[index]
            if index == chunks - 1 and shared:
                part = None if self.parts[-1] is None else self.parts[-1][len(headers):]
            if part is not None:
                spans.append((index * chunk, part[:max(0, min(chunk, length - index * chunk))]))
        out, run = [], []
        for offset, part in spans + [(None, None)]:
            if run and (offset is None or offset != run[-1][0] + chunk):
                piece = self._piece(headers, length, run)
                if piece is not None:
                    out.append(piece)
                run = []
            if offset is not None:
                run.append((offset, part))
        return out

    def _headers(self) -> Optional[bytes]:
        """The frame's headers: from its first chunk, or from the copy at the start of its last datagram."""
        for part in (self.parts[0], self.parts[-1]):
            if part is not None and len(part) >= VNET_HDR_LEN + 40:
                copy = copy_length(part)
                if copy and len(part) >= copy and frame_length(part):
                    return bytes(part[:copy])
        return None

    def _piece(self, headers: bytes, length: int, run) -> Optional[bytearray]:
        """Consecutive chunks of a TCP super-packet [(frame offset, bytes)] as a frame of its own."""
        hl = len(headers)
        start = max(run[0][0], hl)
        end = run[-1][0] + len(run[-1][1])
        if end <= start:
            return None
        body = b"".join(bytes(part[max(0, start - offset):]) for offset, part in run)
        ip = memoryview(headers)[VNET_HDR_LEN:]
        ihl = (ip[0] & 0x0F) * 4
        flags = ip[ihl + 13]
        if start > hl:
            flags &= ~TCP_CWR
        if end < length:
            flags &= ~(TCP_FIN | TCP_PSH)
        head = bytearray(segment_header(ip, ihl, hl - VNET_HDR_LEN, hl - VNET_HDR_LEN + len(body), flags, True))
        SEQ.pack_into(head, ihl + 4, (SEQ.unpack_from(ip, ihl + 4)[0] + start - hl) % SEQ_SPACE)
        gso_size = VNET_HDR.unpack_from(headers, 0)[3]
        if len(body) > gso_size:
            vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, hl - VNET_HDR_LEN, gso_size, ihl, 16)
        else:
            vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, 16)
        return bytearray(vnet) + head + body


@lru_cache(maxsize=1024)
def whole_heads(frame: int, count: int) -> tuple:
    """The headers of all the datagrams of train `frame` of `count`, in order: what a whole train in one read shows."""
    return tuple(HEADER.pack(formats.TRAIN, frame, index, count) for index in range(count))


def datagram_problem(data, n: int) -> Optional[str]:
    """Why `n` bytes can't be a datagram of a train, by its header alone, or None."""
    if n < HEADER_LEN + 1:
        return BAD_TRAIN
    kind, _, index, count = HEADER.unpack_from(data, 0)
    if kind != formats.TRAIN or not 2 <= count <= MAX_DATAGRAMS or index >= count:
        return BAD_TRAIN
    return None

