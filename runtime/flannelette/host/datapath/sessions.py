"""WireGuard's sessions with every peer that has a public key: handshakes, keypairs, counters and timers.

Follows the WireGuard whitepaper (section 6) and what the kernel and
wireguard-go do:

- A keypair sends for REJECT_AFTER_TIME at most; the initiator of one starts
  a new handshake when it sends with it after REKEY_AFTER_TIME, or receives
  with it close to REJECT_AFTER_TIME. An unanswered initiation is sent again
  every REKEY_TIMEOUT (with jitter) for REKEY_ATTEMPT_TIME, then given up.
- A responder's keypair sends only once the initiator has used it; until
  then it is `next`. The one before stays to open what is still in flight.
- Having received data and sent nothing for KEEPALIVE_TIMEOUT: a keepalive.
  Having sent data and heard nothing for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT:
  a new handshake (the peer may have lost its keys, e.g. restarted).
- Counters are checked against a sliding window of WINDOW messages before a
  message is opened, and marked only once it opened.
- Under load (more initiations a second than UNDER_LOAD), an initiation
  without a valid mac2 gets a cookie reply instead of a Diffie-Hellman.

Nothing here touches a socket: the data path sends what the methods return
and passes in what arrives, with the clock; tests drive both ends by hand.
"""

from __future__ import annotations

import os
import random
import struct
import time
from typing import Dict, List, Optional, Tuple

from flannelette.host.datapath import crypto, noise
from flannelette.host.datapath.crypto import AEAD

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_JITTER = 1 / 3
KEEPALIVE_TIMEOUT = 10.0
COOKIE_LIFETIME = 120.0  # a cookie's, and the secret's behind the cookies this host gives
WINDOW = 8192  # counters behind the greatest one received that may still arrive
INITIATION_INTERVAL = 1 / 50  # initiations from one peer closer together than this are not answered
UNDER_LOAD = 200  # initiations a second above which senders must show a cookie
MAX_STAGED = 32  # packets kept for a peer while its first handshake runs
TICK = 0.25  # seconds between looks at the timers

# Why a handshake message or a transport message is dropped.
BAD_MAC = "bad_mac"  # mac1 wrong: not for this host's key, or damaged
BAD_HANDSHAKE = "bad_handshake"  # does not open with the keys it names
UNKNOWN_KEY = "unknown_key"  # an initiation from a key no lease holds
WRONG_PEER = "wrong_peer"  # a key or session of one peer in a datagram from another's address
STALE_HANDSHAKE = "stale_handshake"  # a timestamp not newer than the last, or initiations too close together
COOKIE_SENT = "cookie_sent"  # under load: answered with a cookie reply instead
UNKNOWN_SESSION = "unknown_session"  # a receiver index this host does not hold (any more)
AUTH_FAILED = "auth_failed"  # a transport message that does not open
REPLAYED = "replayed"  # a counter already received, or too far behind
EXPIRED_SESSION = "expired_session"  # a keypair past REJECT_AFTER_TIME or its message limit
DROP_REASONS = (BAD_MAC, BAD_HANDSHAKE, UNKNOWN_KEY, WRONG_PEER, STALE_HANDSHAKE, COOKIE_SENT, UNKNOWN_SESSION,
                AUTH_FAILED, REPLAYED, EXPIRED_SESSION)


class Keypair:
    """One session's keys: sending with a counter, receiving behind a replay window."""

    __slots__ = ("send", "receive", "counter", "local", "remote", "initiator", "created", "window", "greatest",
                 "tunnel")

    def __init__(self, send: bytes, receive: bytes, local: int, remote: int, initiator: bool, created: float, tunnel):
        self.send, self.receive = AEAD(send), AEAD(receive)
        self.counter = 0  # the next one to send with
        self.local, self.remote = local, remote
        self.initiator = initiator
        self.created = created
        self.window = 0  # bit k: greatest - k was received
        self.greatest = -1
        self.tunnel = tunnel

    def sendable(self, now: float) -> bool:
        return self.counter < REJECT_AFTER_MESSAGES and now - self.created < REJECT_AFTER_TIME

    def next_counter(self) -> int:
        counter = self.counter
        self.counter = counter + 1
        return counter

    def fresh(self, counter: int) -> bool:
        """Whether a message with `counter` may be opened: not received yet, not too far behind, within the limit."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        behind = self.greatest - counter
        return behind < 0 or (behind < WINDOW and not self.window >> behind & 1)

    def mark(self, counter: int) -> None:
        """`counter` opened: in the window from now on."""
        ahead = counter - self.greatest
        if ahead > 0:
            self.window = (self.window << ahead | 1) & WINDOW_MASK if ahead < WINDOW else 1
            self.greatest = counter
        else:
            self.window |= 1 << -ahead


WINDOW_MASK = (1 << WINDOW) - 1


# Shared by every tunnel until it is replaced: made once, not 10,000 times for a table of 10,000 keys.
NO_TIMESTAMP = bytes(noise.TIMESTAMP_LEN)
NEVER = float("-inf")


class Tunnel:
    """The WireGuard state with one peer (the data path's flannelette.host.datapath.leases.Peer).

    Slotted: a table of 10,000 peers with keys holds 10,000 of them, most never used.
    """

    __slots__ = ("remote", "peer", "current", "previous", "next", "initiated", "attempts_since", "retry_at",
                 "last_timestamp", "last_initiation", "cookie", "cookie_at", "mac1_sent", "staged", "owe_keepalive",
                 "awaiting_reply", "last_minute", "handshake_at", "handshake_wall", "session_at", "ever",
                 "initiated_total", "answered_total", "auth_failed", "replayed")

    def __init__(self, remote: noise.Remote, peer):
        self.remote, self.peer = remote, peer
        self.current: Optional[Keypair] = None
        self.previous: Optional[Keypair] = None
        self.next: Optional[Keypair] = None
        self.initiated: Optional[noise.Initiated] = None  # our initiation awaiting its response
        self.attempts_since: Optional[float] = None  # the first initiation of the current attempt
        self.retry_at = 0.0
        self.last_timestamp = NO_TIMESTAMP  # of the newest initiation from the peer
        self.last_initiation = NEVER  # when it arrived
        self.cookie: Optional[bytes] = None
        self.cookie_at = NEVER
        self.mac1_sent = b""  # of our last handshake message, which a cookie reply answers
        self.staged: List[bytes] = []  # packets waiting for the first keypair
        self.owe_keepalive: Optional[float] = None  # data received since our last send: since when
        self.awaiting_reply: Optional[float] = None  # data sent since we last heard the peer: since when
        self.last_minute = False  # the handshake near REJECT_AFTER_TIME was started
        self.handshake_at: Optional[float] = None  # monotonic time of the last completed handshake
        self.handshake_wall: Optional[float] = None  # and as Unix time, for /metrics
        self.session_at: Optional[float] = None  # when the current keypair was made
        self.ever = False  # a session existed: plain packets from this peer are refused from then on
        self.initiated_total = 0
        self.answered_total = 0
        self.auth_failed = 0
        self.replayed = 0

    def keypairs(self):
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]


class Sessions:
    """Every tunnel, found by the peer's public key or by the index of one of its keypairs."""

    def __init__(self, identity: noise.Identity, psk: Optional[bytes], clock, wall=time.time,
                 rekey_after: float = REKEY_AFTER_TIME, rng: Optional[random.Random] = None):
        self.identity, self.psk, self.clock, self.wall = identity, psk, clock, wall
        self.rekey_after = rekey_after
        self.rng = rng or random.Random(os.urandom(8))
        self.by_key: Dict[bytes, Tunnel] = {}
        self.by_index: Dict[int, Keypair] = {}  # local index of a keypair
        self.pending: Dict[int, Tunnel] = {}  # local index of an initiation awaiting its response
        self.secret = os.urandom(crypto.KEY_LEN)
        self.secret_at = clock()
        self.load_second, self.load_count = 0, 0
        self.next_tick: Optional[float] = None
        self.active = set()  # tunnels with a timer running

    # -- tunnels -------------------------------------------------------------------

    def tunnel_for(self, peer, public: bytes) -> Tunnel:
        """The tunnel with the holder of `public`, kept across lease table reloads while its key stays."""
        tunnel = self.by_key.get(public)
        if tunnel is None:
            tunnel = self.by_key[public] = Tunnel(noise.Remote(self.identity, public, self.psk), peer)
        tunnel.peer = peer
        return tunnel

    def keep_only(self, keys) -> None:
        """Forget every tunnel whose key is not in `keys` (its peer left the lease table or took a new key)."""
        for key in list(self.by_key):
            if key not in keys:
                self._forget(self.by_key.pop(key))

    def _forget(self, tunnel: Tunnel) -> None:
        for kp in tunnel.keypairs():
            self.by_index.pop(kp.local, None)
        if tunnel.initiated is not None:
            self.pending.pop(tunnel.initiated.sender, None)
        tunnel.current = tunnel.previous = tunnel.next = tunnel.initiated = None
        tunnel.staged.clear()
        if tunnel.peer is not None and tunnel.peer.tunnel is tunnel:
            tunnel.peer.tunnel = None  # no cycle left for a collector that may never look (gc.freeze)
        self.active.discard(tunnel)

    def _new_index(self) -> int:
        while True:
            index = self.rng.getrandbits(32)
            if index not in self.by_index and index not in self.pending:
                return index

    def _drop_keypair(self, kp: Optional[Keypair]) -> None:
        if kp is not None:
            self.by_index.pop(kp.local, None)

    # -- handshakes ------------------------------------------------------------------

    def initiate(self, tunnel: Tunnel, now: float, retry: bool = False) -> Optional[bytes]:
        """A new initiation to the tunnel's peer; None when one went out less than REKEY_TIMEOUT ago."""
        if tunnel.initiated is not None and not retry and now < tunnel.retry_at:
            return None
        if tunnel.remote.static_shared is None:
            return None
        if tunnel.initiated is not None:
            self.pending.pop(tunnel.initiated.sender, None)
        if tunnel.attempts_since is None:
            tunnel.attempts_since = now
        index = self._new_index()
        body, tunnel.initiated = noise.create_initiation(self.identity, tunnel.remote, index,
                                                         crypto.tai64n(self.wall()))
        self.pending[index] = tunnel
        tunnel.retry_at = now + REKEY_TIMEOUT + self.rng.uniform(0, REKEY_JITTER)
        tunnel.initiated_total += 1
        message = noise.with_macs(body, tunnel.remote.mac1_key, self._cookie(tunnel, now))
        tunnel.mac1_sent = noise.mac1_of(message)
        self._wake(tunnel, now)
        return message

    def _cookie(self, tunnel: Tunnel, now: float) -> Optional[bytes]:
        return tunnel.cookie if tunnel.cookie is not None and now - tunnel.cookie_at < COOKIE_LIFETIME else None

    def _under_load(self, now: float) -> bool:
        second = int(now)
        if second != self.load_second:
            self.load_second, self.load_count = second, 0
        self.load_count += 1
        return self.load_count > UNDER_LOAD

    def _my_cookie(self, address: Tuple[str, int], now: float) -> bytes:
        if now - self.secret_at >= COOKIE_LIFETIME:
            self.secret, self.secret_at = os.urandom(crypto.KEY_LEN), now
        return noise.cookie_for(self.secret, address)

    def on_initiation(self, message: bytes, peer, address: Tuple[str, int], now: float) -> Tuple[Optional[str], Optional[bytes]]:
        """(drop reason or None, the datagram to answer with) for an initiation from `peer` at `address`."""
        if not noise.mac1_valid(message, self.identity):
            return BAD_MAC, None
        if self._under_load(now) and not noise.mac2_valid(message, self._my_cookie(address, now)):
            sender = struct.unpack_from("<I", message, 4)[0]
            return COOKIE_SENT, noise.create_cookie_reply(self.identity, sender, noise.mac1_of(message),
                                                          self._my_cookie(address, now))
        received = noise.consume_initiation(self.identity, message)
        if received is None:
            return BAD_HANDSHAKE, None
        tunnel = self.by_key.get(received.initiator)
        if tunnel is None:
            return UNKNOWN_KEY, None
        if tunnel.peer is not peer:
            return WRONG_PEER, None
        if received.timestamp <= tunnel.last_timestamp or now - tunnel.last_initiation < INITIATION_INTERVAL:
            return STALE_HANDSHAKE, None
        tunnel.last_timestamp, tunnel.last_initiation = received.timestamp, now
        index = self._new_index()
        try:
            body, receive, send = noise.create_response(tunnel.remote, received, index)
        except ValueError:
            return BAD_HANDSHAKE, None
        kp = Keypair(send, receive, index, received.sender, False, now, tunnel)
        self._drop_keypair(tunnel.next)
        self._drop_keypair(tunnel.previous)
        tunnel.next, tunnel.previous = kp, None
        self.by_index[index] = kp
        tunnel.answered_total += 1
        self._completed(tunnel, now)
        reply = noise.with_macs(body, tunnel.remote.mac1_key, self._cookie(tunnel, now))
        tunnel.mac1_sent = noise.mac1_of(reply)
        return None, reply

    def on_response(self, message: bytes, peer, now: float) -> Tuple[Optional[str], Optional[Tunnel]]:
        """(drop reason or None, the tunnel whose handshake it completed)."""
        if not noise.mac1_valid(message, self.identity):
            return BAD_MAC, None
        tunnel = self.pending.get(noise.receiver_index(message))
        if tunnel is None:
            return UNKNOWN_SESSION, None
        if tunnel.peer is not peer:
            return WRONG_PEER, None
        keys = noise.consume_response(self.identity, tunnel.remote, tunnel.initiated, message)
        if keys is None:
            return BAD_HANDSHAKE, None
        send, receive, remote_index = keys
        local = tunnel.initiated.sender
        del self.pending[local]
        tunnel.initiated = None
        tunnel.attempts_since = None
        kp = Keypair(send, receive, local, remote_index, True, now, tunnel)
        if tunnel.next is not None:
            self._drop_keypair(tunnel.current)
            tunnel.previous, tunnel.next = tunnel.next, None
        else:
            self._drop_keypair(tunnel.previous)
            tunnel.previous = tunnel.current
        tunnel.current = kp
        self.by_index[local] = kp
        tunnel.last_minute = False
        tunnel.session_at = now
        self._completed(tunnel, now)
        return None, tunnel

    def on_cookie_reply(self, message: bytes, peer, now: float) -> Optional[str]:
        tunnel = self.pending.get(noise.receiver_index(message))
        if tunnel is None:
            return UNKNOWN_SESSION
        if tunnel.peer is not peer:
            return WRONG_PEER
        cookie = noise.consume_cookie_reply(tunnel.remote, message, tunnel.mac1_sent)
        if cookie is None:
            return BAD_HANDSHAKE
        tunnel.cookie, tunnel.cookie_at = cookie, now
        return None

    def _completed(self, tunnel: Tunnel, now: float) -> None:
        tunnel.handshake_at, tunnel.handshake_wall = now, self.wall()
        tunnel.ever = True
        self._wake(tunnel, now)

    # -- sending and receiving ------------------------------------------------------------

    def sealing(self, tunnel: Tunnel, now: float) -> Tuple[Optional[Keypair], Optional[bytes]]:
        """(the keypair to send with, or None; an initiation to send first, or None)."""
        kp = tunnel.current
        if kp is not None and kp.sendable(now):
            if kp.initiator and tunnel.initiated is None and (
                    now - kp.created >= self.rekey_after or kp.counter >= REKEY_AFTER_MESSAGES):
                return kp, self.initiate(tunnel, now)
            return kp, None
        return None, self.initiate(tunnel, now)

    def sent(self, tunnel: Tunnel, now: float, data: bool) -> None:
        """Something went out with the tunnel's keypair; `data`: not a keepalive."""
        tunnel.owe_keepalive = None
        if data and tunnel.awaiting_reply is None:
            tunnel.awaiting_reply = now
            self._wake(tunnel, now)

    def opening(self, index: int) -> Optional[Keypair]:
        return self.by_index.get(index)

    def received(self, kp: Keypair, now: float, data: bool) -> Optional[bytes]:
        """A message opened with `kp`; a responder's keypair becomes the one to send with. Maybe an initiation to
        send (the initiator's keypair is close to its end)."""
        tunnel = kp.tunnel
        if kp is tunnel.next:
            self._drop_keypair(tunnel.previous)
            tunnel.previous, tunnel.current, tunnel.next = tunnel.current, kp, None
            tunnel.session_at = kp.created
        tunnel.awaiting_reply = None
        if data and tunnel.owe_keepalive is None:
            tunnel.owe_keepalive = now
            self._wake(tunnel, now)
        if kp.initiator and not tunnel.last_minute and tunnel.initiated is None \
                and now - kp.created >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT:
            tunnel.last_minute = True
            return self.initiate(tunnel, now)
        return None

    def usable_for_receive(self, kp: Keypair, now: float) -> bool:
        return now - kp.created < REJECT_AFTER_TIME

    # -- timers ----------------------------------------------------------------------------

    def _wake(self, tunnel: Tunnel, now: float) -> None:
        self.active.add(tunnel)
        if self.next_tick is None:
            self.next_tick = now + TICK

    def next_due(self) -> Optional[float]:
        return self.next_tick

    def due(self, now: float) -> List[Tuple[Tunnel, str]]:
        """What the timers ask for now, as (tunnel, what): "initiate" (a datagram is made by `initiate`), or
        "keepalive"; staged packets of a handshake given up are dropped here."""
        if self.next_tick is None or now < self.next_tick:
            return []
        out = []
        for tunnel in list(self.active):
            busy = False
            if tunnel.initiated is not None:
                busy = True
                if now >= tunnel.retry_at:
                    if now - tunnel.attempts_since >= REKEY_ATTEMPT_TIME:
                        self.pending.pop(tunnel.initiated.sender, None)
                        tunnel.initiated = tunnel.attempts_since = None
                        tunnel.staged.clear()
                        busy = False
                    else:
                        out.append((tunnel, "initiate"))
            if tunnel.owe_keepalive is not None:
                busy = True
                if now - tunnel.owe_keepalive >= KEEPALIVE_TIMEOUT:
                    tunnel.owe_keepalive = None
                    out.append((tunnel, "keepalive"))
            if tunnel.awaiting_reply is not None:
                busy = True
                if now - tunnel.awaiting_reply >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT and tunnel.initiated is None:
                    tunnel.awaiting_reply = None
                    out.append((tunnel, "initiate"))
            if tunnel.handshake_at is not None:
                if now - tunnel.handshake_at >= 3 * REJECT_AFTER_TIME:
                    for kp in tunnel.keypairs():
                        self._drop_keypair(kp)
                    tunnel.current = tunnel.previous = tunnel.next = None
                    tunnel.handshake_at = None
                else:
                    busy = True
            if not busy:
                self.active.discard(tunnel)
        self.next_tick = now + TICK if self.active else None
        return out
