"""The capability exchange: a peer gets anything but flannel's format only once it has shown, on the wire, that it takes it.

A host asks each peer with a hello carrying the format versions it takes, a
random nonce and its release; a flannelette peer answers with its own
formats and the nonce back. Only an answer echoing the nonce of a hello this
host sent changes what it sends that peer, to the best format both take
(flannelette.host.datapath.formats). Until then, and for a peer that never
answers (a flanneld host, a host of the previous release, a host that is
down), flannel's format: three hellos over two seconds, then silence. A
flanneld host so sees three stray datagrams per start of this host, which its
TUN device refuses.

A hello from a peer is answered at once and makes this host ask back, so two
hosts that start at different times find each other within a round trip. A
confirmed peer is asked again every REFRESH seconds; one that stops
answering goes back to flannel's format. A peer that sends the previous
release's frames runs that release (it never answers): flannel's format to it.

Nothing here touches a socket: the data path sends what `due` returns and
passes in what arrives; the clock is given, so the timers are tested without
waiting.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import struct
from typing import Callable, List, NamedTuple, Optional, Tuple

from flannelette.host.datapath import formats

MAGIC = b"flnt"
# type, three zero bytes, magic, the formats taken (a bit per version), nonce, release length; the release follows.
MESSAGE = struct.Struct("!B3x4sIQB")
MAX_RELEASE = 32
HELLOS, INTERVAL = 3, 1.0  # hellos in a round, and the seconds between them
REFRESH = 25.0  # seconds between hellos to a confirmed peer (plus up to JITTER)
JITTER = 5.0
REPROBE_AFTER = 10.0  # a peer gone silent that shows signs of life is asked again at most this often
# Hellos handed to the data path at a time: a table of 10,000 new peers would otherwise be asked in one
# stretch of sends, and packets would wait behind it; the loop serves its queues between batches.
BATCH = 256

# What the exchange knows of a peer.
FLANNEL = "flannel"  # its lease marks a flanneld host, or the network is on flannel's format: never asked
PROBING = "probing"  # asked, no answer yet
SILENT = "silent"  # asked, never answered: flannel's format
CONFIRMED = "confirmed"  # answered: the best common format
PREVIOUS = "previous"  # sends the previous release's frames: flannel's format to it
STATES = (FLANNEL, PROBING, SILENT, CONFIRMED, PREVIOUS)


class Message(NamedTuple):
    kind: int  # formats.HELLO or formats.ANSWER
    formats: int
    nonce: int
    release: str


def encode(kind: int, taken: int, nonce: int, release: str) -> bytes:
    text = release.encode()[:MAX_RELEASE]
    return MESSAGE.pack(kind, MAGIC, taken, nonce, len(text)) + text


def decode(data, n: int) -> Optional[Message]:
    """The hello or answer in the first `n` bytes of `data`, or None when it is not exactly one."""
    if n < MESSAGE.size:
        return None
    kind, magic, taken, nonce, length = MESSAGE.unpack_from(data, 0)
    if kind not in (formats.HELLO, formats.ANSWER) or magic != MAGIC or bytes(data[1:4]) != b"\0\0\0" \
            or length > MAX_RELEASE or n != MESSAGE.size + length:
        return None
    return Message(kind, taken, nonce, bytes(data[MESSAGE.size:n]).decode("utf-8", "replace"))


class Exchange:
    """The exchange with one peer."""

    __slots__ = ("state", "formats", "release", "nonce", "tries", "due", "asked", "generation")

    def __init__(self, state: str):
        self.state = state
        self.formats: Optional[int] = None  # what the peer said it takes
        self.release = ""
        self.nonce = 0
        self.tries = 0
        self.due: Optional[float] = None
        self.asked = float("-inf")
        self.generation = 0


class Exchanges:
    """Every peer's exchange, and the timers of all of them in one heap."""

    def __init__(self, taken: int, release: str, on_format: Callable = lambda peer, old, new: None,
                 rng: Optional[random.Random] = None, decide: Callable = lambda peer, best: best):
        # decide(peer, best): the format to send `peer`, given the best one the exchange found (the data path
        # weighs in what the exchange can't know: whether a session with the peer is encrypted).
        self.taken, self.release, self.on_format, self.decide = taken, release, on_format, decide
        self.table = None
        self.heap: List[Tuple[float, int, object, int]] = []
        self.order = itertools.count()
        self.rng = rng or random.Random(os.urandom(8))
        self.sent = {formats.HELLO: 0, formats.ANSWER: 0}

    # -- the table ------------------------------------------------------------------

    def adopt(self, table, now: float) -> None:
        """Take on a (new) lease table: peers seen for the first time are asked, kept peers keep their state."""
        self.table = table
        for peer in table.by_subnet.values():
            if peer.exchange is not None:
                continue
            if peer.marked_flannel or table.force_flannel:
                peer.exchange = Exchange(FLANNEL)
            else:
                peer.exchange = Exchange(PROBING)
                self._ask(peer, now)
            self.reconsider(peer)

    def current(self, peer) -> bool:
        return self.table is not None and self.table.by_address.get(peer.ip) is peer

    # -- timers -----------------------------------------------------------------------

    def next_due(self) -> Optional[float]:
        while self.heap and not self._live(self.heap[0]):
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None

    def due(self, now: float, limit: int = BATCH) -> List[Tuple[object, bytes]]:
        """Up to `limit` hellos to send now, as (peer, datagram); the timers behind them stay due."""
        out = []
        while self.heap and self.heap[0][0] <= now and len(out) < limit:
            entry = heapq.heappop(self.heap)
            if self._live(entry):
                message = self._expire(entry[2], now)
                if message is not None:
                    out.append((entry[2], message))
        return out

    def _live(self, entry) -> bool:
        peer = entry[2]
        return peer.exchange.generation == entry[3] and self.current(peer)

    def _schedule(self, peer, when: Optional[float]) -> None:
        exchange = peer.exchange
        exchange.generation += 1
        exchange.due = when
        if when is not None:
            heapq.heappush(self.heap, (when, next(self.order), peer, exchange.generation))

    def _ask(self, peer, now: float) -> None:
        """Start a round of hellos now, with a fresh nonce; a confirmed peer keeps its format meanwhile."""
        exchange = peer.exchange
        exchange.tries = 0
        exchange.asked = now
        if exchange.state != CONFIRMED:
            exchange.state = PROBING
        self._schedule(peer, now)

    def _expire(self, peer, now: float) -> Optional[bytes]:
        """A timer ran out: the next hello of the round, or, after HELLOS unanswered, flannel's format."""
        exchange = peer.exchange
        if exchange.tries < HELLOS:
            if exchange.tries == 0:  # a round begins (the first ask, or a confirmed peer's refresh)
                exchange.nonce = self.rng.getrandbits(64)
            exchange.tries += 1
            self._schedule(peer, now + INTERVAL)
            self.sent[formats.HELLO] += 1
            return encode(formats.HELLO, self.taken, exchange.nonce, self.release)
        exchange.state = SILENT
        exchange.formats = None
        self._set_format(peer, formats.FLANNEL)
        self._schedule(peer, None)
        return None

    # -- what arrives -------------------------------------------------------------------

    def on_hello(self, peer, message: Message, now: float) -> bytes:
        """The answer to a peer's hello; asks it back when this host has not (or not lately) confirmed it."""
        exchange = peer.exchange
        if exchange.state in (SILENT, PREVIOUS) or (exchange.state == CONFIRMED and exchange.formats != message.formats):
            self._ask(peer, now)
        self.sent[formats.ANSWER] += 1
        return encode(formats.ANSWER, self.taken, message.nonce, self.release)

    def on_answer(self, peer, message: Message, now: float) -> bool:
        """Take an answer; False when it answers no hello of ours (a stale or forged one)."""
        exchange = peer.exchange
        if exchange.state not in (PROBING, CONFIRMED) or exchange.tries == 0 or message.nonce != exchange.nonce:
            return False
        exchange.state = CONFIRMED
        # tries back to 0: no hello is outstanding, so a replay of this answer confirms nothing later.
        exchange.formats, exchange.release, exchange.tries = message.formats, message.release, 0
        self._set_format(peer, formats.best_common(message.formats, self.taken))
        self._schedule(peer, now + REFRESH + self.rng.uniform(0, JITTER))
        return True

    def on_frames(self, peer, now: float) -> None:
        """The peer sent the previous release's frames: it runs that release, and takes flannel's format only."""
        exchange = peer.exchange
        if exchange.state in (FLANNEL, PREVIOUS):
            return
        exchange.state, exchange.formats = PREVIOUS, formats.mask(formats.FLANNEL, formats.FRAMES)
        exchange.release = ""
        self._set_format(peer, formats.FLANNEL)
        self._schedule(peer, None)

    def on_segments(self, peer, now: float) -> None:
        """The peer sent the fast format: if this host gave up on it, ask it again (not too often)."""
        exchange = peer.exchange
        if exchange.state in (SILENT, PREVIOUS) and now - exchange.asked >= REPROBE_AFTER:
            self._ask(peer, now)

    def assume(self, peer, taken: int) -> None:
        """Take the peer's formats as known without asking (a bench that runs both ends); no hellos to it."""
        exchange = peer.exchange
        exchange.state, exchange.formats, exchange.tries = CONFIRMED, taken, 0
        self._set_format(peer, formats.best_common(taken, self.taken))
        self._schedule(peer, None)

    def reconsider(self, peer) -> None:
        """Set the peer's format again from what is known of it (something besides the exchange changed)."""
        exchange = peer.exchange
        best = formats.FLANNEL
        if exchange.state == CONFIRMED:
            best = formats.best_common(exchange.formats, self.taken)
        self._set_format(peer, best)

    def _set_format(self, peer, new: int) -> None:
        if peer.marked_flannel or (self.table is not None and self.table.force_flannel):
            new = formats.FLANNEL
        else:
            new = self.decide(peer, new)
        old, peer.format = peer.format, new
        if old != new:
            self.on_format(peer, old, new)
