"""WireGuard's handshake, Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, and its messages, as the whitepaper gives them.

    initiation (type 1, 148 bytes)  type, 3 zero bytes, sender index, ephemeral, static (sealed), timestamp (sealed), mac1, mac2
    response   (type 2,  92 bytes)  type, 3 zero bytes, sender index, receiver index, ephemeral, empty (sealed), mac1, mac2
    cookie     (type 3,  64 bytes)  type, 3 zero bytes, receiver index, nonce, cookie (sealed)
    transport  (type 4, >= 32)      type, 3 zero bytes, receiver index, counter, packet (sealed)

Integers are little-endian. Functions here take and give bytes and keys; the
sessions, their timers and the counters are flannelette.host.datapath.sessions'.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
from typing import NamedTuple, Optional, Tuple

from flannelette.host.datapath import crypto
from flannelette.host.datapath.crypto import KEY_LEN, TAG_LEN, aead_open, aead_seal, hash, kdf, mac

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1, LABEL_COOKIE = b"mac1----", b"cookie--"
INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4
INITIATION_LEN, RESPONSE_LEN, COOKIE_REPLY_LEN = 148, 92, 64
TRANSPORT_HEADER_LEN = 16
TRANSPORT_MIN_LEN = TRANSPORT_HEADER_LEN + TAG_LEN
LENGTHS = {INITIATION: INITIATION_LEN, RESPONSE: RESPONSE_LEN, COOKIE_REPLY: COOKIE_REPLY_LEN}
MAC_LEN = 16
TIMESTAMP_LEN = 12
COOKIE_NONCE_LEN = 24
PADDING = 16  # a transport message's packet is padded to a multiple of this
# What a transport message adds to a packet, outside the IP and UDP headers: the ceiling of WireGuard's MTU.
OVERHEAD = TRANSPORT_HEADER_LEN + TAG_LEN

INITIAL_CHAIN = hash(CONSTRUCTION)
INITIAL_HASH = hash(INITIAL_CHAIN + IDENTIFIER)

INITIATION_HEAD = struct.Struct("<I I 32s 48s 28s")  # type, sender, ephemeral, static, timestamp
RESPONSE_HEAD = struct.Struct("<I I I 32s 16s")  # type, sender, receiver, ephemeral, empty
COOKIE_REPLY_BODY = struct.Struct("<I I 24s 32s")  # type, receiver, nonce, cookie
TRANSPORT_HEADER = struct.Struct("<I I Q")  # type, receiver, counter
ZERO_PSK = bytes(KEY_LEN)


class Identity:
    """A host's own static key pair, and what every handshake with it derives from it once."""

    def __init__(self, private: bytes):
        self.private = bytes(private)
        self.public = crypto.public(self.private)
        self.mac1_key = hash(LABEL_MAC1 + self.public)  # what a peer's mac1 to this host is keyed with
        self.cookie_key = hash(LABEL_COOKIE + self.public)  # what this host's cookie replies are sealed with
        self.hash0 = hash(INITIAL_HASH + self.public)  # the hash an initiation to this host starts from


class Remote:
    """A peer's static public key, the network's preshared key, and what a handshake with it derives from them.

    Derived on the first handshake with the peer, not when its lease is read:
    a table of 10,000 keys would otherwise cost 10,000 Diffie-Hellmans at start.
    """

    def __init__(self, identity: Identity, public: bytes, psk: Optional[bytes] = None):
        self.identity = identity
        self.public = bytes(public)
        self.psk = bytes(psk) if psk else ZERO_PSK

    @functools.cached_property
    def mac1_key(self) -> bytes:
        return hash(LABEL_MAC1 + self.public)

    @functools.cached_property
    def cookie_key(self) -> bytes:
        return hash(LABEL_COOKIE + self.public)

    @functools.cached_property
    def hash0(self) -> bytes:
        return hash(INITIAL_HASH + self.public)

    @functools.cached_property
    def static_shared(self) -> Optional[bytes]:
        """None: a key no handshake can use."""
        return crypto.shared(self.identity.private, self.public)


class Initiated(NamedTuple):
    """What an initiator keeps of its initiation until the response."""

    sender: int
    ephemeral_private: bytes
    chain: bytes
    hash: bytes


class Received(NamedTuple):
    """A checked initiation, as the responder needs it to answer."""

    sender: int
    ephemeral: bytes
    initiator: bytes  # the initiator's static public key
    timestamp: bytes
    chain: bytes
    hash: bytes


def _mix(h: bytes, data: bytes) -> bytes:
    return hash(h + data)


def create_initiation(identity: Identity, remote: Remote, sender: int, timestamp: bytes) -> Tuple[bytes, Initiated]:
    """Message 1 without its macs (132 bytes), and the state the response is checked against."""
    chain, h = INITIAL_CHAIN, remote.hash0
    ephemeral_private = crypto.generate_private()
    ephemeral = crypto.public(ephemeral_private)
    (chain,) = kdf(chain, ephemeral, 1)
    h = _mix(h, ephemeral)
    dh = crypto.shared(ephemeral_private, remote.public)
    if dh is None or remote.static_shared is None:
        raise ValueError("the peer's public key is not one a handshake can use")
    chain, key = kdf(chain, dh, 2)
    static = aead_seal(key, 0, identity.public, h)
    h = _mix(h, static)
    chain, key = kdf(chain, remote.static_shared, 2)
    sealed_time = aead_seal(key, 0, timestamp, h)
    h = _mix(h, sealed_time)
    body = INITIATION_HEAD.pack(INITIATION, sender, ephemeral, static, sealed_time)
    return body, Initiated(sender, ephemeral_private, chain, h)


def consume_initiation(identity: Identity, message: bytes) -> Optional[Received]:
    """Message 1 opened with this host's key (its mac1 already checked), or None when it does not open."""
    _, sender, ephemeral, static, sealed_time = INITIATION_HEAD.unpack_from(message, 0)
    chain, h = INITIAL_CHAIN, identity.hash0
    (chain,) = kdf(chain, ephemeral, 1)
    h = _mix(h, ephemeral)
    opened = _open_with(identity.private, ephemeral, chain, h, static)
    if opened is None:
        return None
    chain, h, initiator = opened
    opened = _open_with(identity.private, initiator, chain, h, sealed_time)
    if opened is None:
        return None
    chain, h, timestamp = opened
    return Received(sender, ephemeral, initiator, timestamp, chain, h)


def _open_with(private: bytes, public: bytes, chain: bytes, h: bytes, sealed: bytes):
    """One step of the responder's reading: (chain, hash, plaintext) after mixing DH(private, public) in and
    opening `sealed` under the key it gives; None when either fails."""
    dh = crypto.shared(private, public)
    if dh is None:
        return None
    chain, key = kdf(chain, dh, 2)
    plaintext = aead_open(key, 0, sealed, h)
    if plaintext is None:
        return None
    return chain, _mix(h, sealed), plaintext


def create_response(remote: Remote, received: Received, sender: int) -> Tuple[bytes, bytes, bytes]:
    """Message 2 without its macs (60 bytes), and the responder's (receiving key, sending key)."""
    chain, h = received.chain, received.hash
    ephemeral_private = crypto.generate_private()
    ephemeral = crypto.public(ephemeral_private)
    (chain,) = kdf(chain, ephemeral, 1)
    h = _mix(h, ephemeral)
    for public in (received.ephemeral, remote.public):
        dh = crypto.shared(ephemeral_private, public)
        if dh is None:
            raise ValueError("the initiator's keys are not ones a handshake can use")
        (chain,) = kdf(chain, dh, 1)
    chain, tau, key = kdf(chain, remote.psk, 3)
    h = _mix(h, tau)
    empty = aead_seal(key, 0, b"", h)
    body = RESPONSE_HEAD.pack(RESPONSE, sender, received.sender, ephemeral, empty)
    receive, send = kdf(chain, b"", 2)
    return body, receive, send


def consume_response(identity: Identity, remote: Remote, initiated: Initiated, message: bytes) -> Optional[Tuple[bytes, bytes, int]]:
    """(sending key, receiving key, the responder's index) from message 2, or None when it does not open."""
    _, sender, _, ephemeral, empty = RESPONSE_HEAD.unpack_from(message, 0)
    chain, h = initiated.chain, initiated.hash
    (chain,) = kdf(chain, ephemeral, 1)
    h = _mix(h, ephemeral)
    for private in (initiated.ephemeral_private, identity.private):
        dh = crypto.shared(private, ephemeral)
        if dh is None:
            return None
        (chain,) = kdf(chain, dh, 1)
    chain, tau, key = kdf(chain, remote.psk, 3)
    h = _mix(h, tau)
    if aead_open(key, 0, empty, h) is None:
        return None
    send, receive = kdf(chain, b"", 2)
    return send, receive, sender


# -- macs and cookies ------------------------------------------------------------


def with_macs(body: bytes, mac1_key: bytes, cookie: Optional[bytes]) -> bytes:
    """A handshake message with mac1 (keyed by the receiver's public key) and mac2 (by its cookie, or zeros)."""
    mac1 = mac(mac1_key, body)
    mac2 = mac(cookie, body + mac1) if cookie else bytes(MAC_LEN)
    return body + mac1 + mac2


def mac1_of(message) -> bytes:
    return bytes(message[-2 * MAC_LEN:-MAC_LEN])


def mac1_valid(message, identity: Identity) -> bool:
    return crypto.equal(mac(identity.mac1_key, bytes(message[:-2 * MAC_LEN])), mac1_of(message))


def mac2_valid(message, cookie: bytes) -> bool:
    return crypto.equal(mac(cookie, bytes(message[:-MAC_LEN])), bytes(message[-MAC_LEN:]))


def cookie_for(secret: bytes, address: Tuple[str, int]) -> bytes:
    """The cookie a sender at `address` gets: a MAC of its address under a secret that changes every two minutes."""
    return mac(secret, socket.inet_aton(address[0]) + struct.pack(">H", address[1]))


def create_cookie_reply(identity: Identity, receiver: int, mac1: bytes, cookie: bytes) -> bytes:
    nonce = os.urandom(COOKIE_NONCE_LEN)
    sealed = crypto.xaead_seal(identity.cookie_key, nonce, cookie, mac1)
    return COOKIE_REPLY_BODY.pack(COOKIE_REPLY, receiver, nonce, sealed)


def consume_cookie_reply(remote: Remote, message, mac1_sent: bytes) -> Optional[bytes]:
    """The cookie in a reply to the message whose mac1 was `mac1_sent`, or None."""
    _, _, nonce, sealed = COOKIE_REPLY_BODY.unpack_from(message, 0)
    return crypto.xaead_open(remote.cookie_key, nonce, sealed, mac1_sent)


# -- reading a datagram ------------------------------------------------------------


def kind(data, n: int) -> int:
    """The message type of a datagram, 0 when it is not one of WireGuard's four (by its first bytes and size)."""
    if n < 4 or bytes(data[1:4]) != b"\0\0\0":
        return 0
    first = data[0]
    if first == TRANSPORT:
        return TRANSPORT if n >= TRANSPORT_MIN_LEN else 0  # padded to 16, but never past the sender's MTU
    return first if LENGTHS.get(first) == n else 0


def receiver_index(message) -> int:
    """The receiver index of a response, cookie reply or transport message."""
    return struct.unpack_from("<I", message, 8 if message[0] == RESPONSE else 4)[0]


def padded(length: int, mtu: int) -> int:
    """A packet's length once padded as WireGuard pads it: to a multiple of 16, but not past the MTU."""
    return min(length + (-length % PADDING), max(length, mtu))
