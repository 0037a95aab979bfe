"""WireGuard's primitives against published vectors, and its handshake and sessions between two hosts in memory."""

import os
import struct
import subprocess
import sys

import pytest

from flannelette.host.datapath import crypto, encrypted, noise, sessions
from flannelette.host.datapath.sessions import Sessions
from flannelette.model.config import decode_key

try:
    crypto.check()
except crypto.Unavailable as e:  # pragma: no cover - every supported host has OpenSSL 1.1.1
    pytest.skip(f"no usable libcrypto: {e}", allow_module_level=True)

h = bytes.fromhex


def test_x25519_matches_rfc7748():
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert crypto.public(alice) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert crypto.public(bob) == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert crypto.shared(alice, crypto.public(bob)) == shared == crypto.shared(bob, crypto.public(alice))


def test_x25519_refuses_a_point_that_gives_zeros():
    assert crypto.shared(crypto.generate_private(), bytes(32)) is None


def test_hchacha20_matches_the_xchacha_draft():
    key = bytes(range(32))
    nonce = h("000000090000004a0000000031415927")
    assert crypto.hchacha20(key, nonce) == h("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def test_aead_opens_what_it_sealed_and_nothing_altered():
    box = crypto.AEAD(bytes(range(32)))
    sealed = box.seal(7, b"payload", b"ad")
    assert len(sealed) == len(b"payload") + crypto.TAG_LEN
    assert box.open(7, sealed, b"ad") == b"payload"
    assert box.open(8, sealed, b"ad") is None
    assert box.open(7, sealed, b"other") is None
    assert box.open(7, bytes([sealed[0] ^ 1]) + sealed[1:], b"ad") is None
    assert box.open(7, sealed[:10], b"ad") is None


def test_xaead_round_trip():
    key, nonce = bytes(32), bytes(range(24))
    assert crypto.xaead_open(key, nonce, crypto.xaead_seal(key, nonce, b"cookie", b"m"), b"m") == b"cookie"
    assert crypto.xaead_open(key, nonce, crypto.xaead_seal(key, nonce, b"cookie", b"m"), b"n") is None


def test_keys_in_wireguards_base64():
    key = crypto.generate_private()
    assert decode_key(crypto.encode_key(key)) == key
    assert len(crypto.encode_key(key)) == 44
    assert decode_key("not a key") is None
    assert decode_key(crypto.encode_key(b"short")) is None


def test_keygen_makes_a_private_key_once_and_prints_its_public_key(tmp_path):
    path = str(tmp_path / "etc" / "private.key")
    public = crypto.keygen(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert crypto.keygen(path) == public == crypto.encode_key(crypto.public(decode_key(open(path).read())))


def test_crypto_runs_on_a_bare_python_as_the_deploy_runs_it(tmp_path):
    source = open(crypto.__file__).read() + "\nimport sys\nprint(keygen(sys.argv[1]))\n"
    path = str(tmp_path / "k")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", source, path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == crypto.keygen(path)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class End:
    """One host's sessions, with the other as its only peer."""

    def __init__(self, clock, name, psk=None):
        self.identity = noise.Identity(crypto.generate_private())
        self.clock = clock
        self.sessions = Sessions(self.identity, psk, clock, wall=lambda: clock.now + 1.7e9)
        self.peer = name  # stands for the data path's Peer: compared by identity only

    def meet(self, other):
        self.tunnel = self.sessions.tunnel_for(other.peer, other.identity.public)


def pair(psk=None):
    clock = Clock()
    a, b = End(clock, "a", psk), End(clock, "b", psk)
    a.meet(b)
    b.meet(a)
    return clock, a, b


def handshake(clock, a, b):
    initiation = a.sessions.initiate(a.tunnel, clock.now)
    assert len(initiation) == noise.INITIATION_LEN and noise.kind(initiation, len(initiation)) == noise.INITIATION
    reason, response = b.sessions.on_initiation(initiation, a.peer, ("192.0.2.1", 8285), clock.now)
    assert reason is None and len(response) == noise.RESPONSE_LEN
    reason, tunnel = a.sessions.on_response(response, b.peer, clock.now)
    assert reason is None and tunnel is a.tunnel
    return initiation, response


def transport(kp, plaintext):
    counter = kp.next_counter()
    return counter, kp.send.seal(counter, plaintext)


def test_handshake_gives_both_ends_matching_keys():
    clock, a, b = pair()
    handshake(clock, a, b)
    kp_a = a.tunnel.current
    assert kp_a.initiator and b.tunnel.current is None and b.tunnel.next is not None
    counter, sealed = transport(kp_a, b"ping")
    kp_b = b.sessions.opening(kp_a.remote)
    assert kp_b is b.tunnel.next and kp_b.receive.open(counter, sealed) == b"ping"
    b.sessions.received(kp_b, clock.now, data=True)
    assert b.tunnel.current is kp_b  # the responder sends only once the initiator used the keypair
    counter, sealed = transport(kp_b, b"pong")
    assert a.sessions.opening(kp_b.remote).receive.open(counter, sealed) == b"pong"


def test_psk_must_match():
    clock = Clock()
    a, b = End(clock, "a", b"\x01" * 32), End(clock, "b", b"\x02" * 32)
    a.meet(b)
    b.meet(a)
    initiation = a.sessions.initiate(a.tunnel, clock.now)
    reason, response = b.sessions.on_initiation(initiation, a.peer, ("192.0.2.1", 8285), clock.now)
    assert reason is None
    assert a.sessions.on_response(response, b.peer, clock.now) == (sessions.BAD_HANDSHAKE, None)


def test_initiation_replayed_or_from_the_wrong_address_or_key_is_refused():
    clock, a, b = pair()
    initiation, _ = handshake(clock, a, b)
    clock.now += 1
    assert b.sessions.on_initiation(initiation, a.peer, ("192.0.2.1", 8285), clock.now)[0] == sessions.STALE_HANDSHAKE
    fresh = a.sessions.initiate(a.tunnel, clock.now, retry=True)
    assert b.sessions.on_initiation(fresh, "someone else", ("192.0.2.9", 8285), clock.now)[0] == sessions.WRONG_PEER
    damaged = fresh[:40] + bytes([fresh[40] ^ 1]) + fresh[41:]
    assert b.sessions.on_initiation(damaged, a.peer, ("192.0.2.1", 8285), clock.now)[0] == sessions.BAD_MAC
    stranger = End(clock, "c")
    stranger.meet(b)
    unknown = stranger.sessions.initiate(stranger.tunnel, clock.now)
    assert b.sessions.on_initiation(unknown, a.peer, ("192.0.2.1", 8285), clock.now)[0] == sessions.UNKNOWN_KEY


def test_replay_window():
    clock, a, b = pair()
    handshake(clock, a, b)
    kp = b.sessions.opening(a.tunnel.current.remote)
    for counter in (0, 1, 5, 3):
        assert kp.fresh(counter)
        kp.mark(counter)
    assert not kp.fresh(5) and not kp.fresh(0) and kp.fresh(2) and kp.fresh(4)
    kp.mark(sessions.WINDOW + 10)
    assert not kp.fresh(2)  # fell out of the window behind
    assert kp.fresh(sessions.WINDOW + 9) and not kp.fresh(sessions.WINDOW + 10)
    assert not kp.fresh(sessions.REJECT_AFTER_MESSAGES)


def test_cookie_reply_under_load_then_mac2_gets_through():
    clock, a, b = pair()
    address = ("192.0.2.1", 8285)
    b.sessions.load_second, b.sessions.load_count = int(clock.now), sessions.UNDER_LOAD
    initiation = a.sessions.initiate(a.tunnel, clock.now)
    reason, reply = b.sessions.on_initiation(initiation, a.peer, address, clock.now)
    assert reason == sessions.COOKIE_SENT and len(reply) == noise.COOKIE_REPLY_LEN
    assert noise.kind(reply, len(reply)) == noise.COOKIE_REPLY
    assert a.sessions.on_cookie_reply(reply, b.peer, clock.now) is None
    again = a.sessions.initiate(a.tunnel, clock.now, retry=True)
    assert again[-16:] != bytes(16)  # mac2 from the cookie
    reason, response = b.sessions.on_initiation(again, a.peer, address, clock.now)
    assert reason is None and a.sessions.on_response(response, b.peer, clock.now)[0] is None


def test_rekey_after_time_by_the_initiator_on_send():
    clock, a, b = pair()
    handshake(clock, a, b)
    kp, initiation = a.sessions.sealing(a.tunnel, clock.now)
    assert kp is a.tunnel.current and initiation is None
    clock.now += sessions.REKEY_AFTER_TIME
    kp, initiation = a.sessions.sealing(a.tunnel, clock.now)
    assert kp is a.tunnel.current and initiation is not None  # the old keypair keeps sending meanwhile
    clock.now += sessions.REJECT_AFTER_TIME
    assert a.sessions.sealing(a.tunnel, clock.now)[0] is None


def test_timers_retry_then_give_up_and_keepalive():
    clock, a, b = pair()
    a.sessions.initiate(a.tunnel, clock.now)
    a.tunnel.staged.append(b"packet")
    retries = 0
    while a.tunnel.initiated is not None:
        clock.now += sessions.TICK
        for tunnel, what in a.sessions.due(clock.now):
            assert what == "initiate"
            a.sessions.initiate(tunnel, clock.now, retry=True)
            retries += 1
    assert 15 <= retries <= 18 and not a.tunnel.staged
    assert a.sessions.next_due() is None
    handshake(clock, a, b)
    kp = b.sessions.opening(a.tunnel.current.remote)
    b.sessions.received(kp, clock.now, data=True)
    clock.now += sessions.KEEPALIVE_TIMEOUT
    wants = [what for _, what in b.sessions.due(clock.now + sessions.TICK)]
    assert wants == ["keepalive"]


def test_a_peer_that_stops_answering_gets_a_new_handshake():
    clock, a, b = pair()
    handshake(clock, a, b)
    a.sessions.sent(a.tunnel, clock.now, data=True)
    clock.now += sessions.KEEPALIVE_TIMEOUT + sessions.REKEY_TIMEOUT
    assert [what for _, what in a.sessions.due(clock.now)] == ["initiate"]


def test_transport_kind_and_header():
    header = noise.TRANSPORT_HEADER.pack(noise.TRANSPORT, 7, 9)
    assert noise.kind(header + bytes(16), 32) == noise.TRANSPORT
    assert noise.kind(header, 16) == 0
    assert noise.receiver_index(header) == 7
    assert noise.kind(b"\x01\x00\x00\x00" + bytes(144), 148) == noise.INITIATION
    assert noise.kind(b"\x01\x00\x00\x00" + bytes(100), 104) == 0
    assert struct.unpack_from("<I", header)[0] == 4


def test_a_host_asks_a_peer_that_loses_datagrams_for_shorter_units_and_relaxes_when_loss_ends():
    assert encrypted.asked(0, 0.0) == 0
    assert encrypted.asked(0, 0.01) == 2 and encrypted.asked(0, 0.001) == 20 and encrypted.asked(0, 0.5) == 2
    assert encrypted.asked(0, 1e-6) == encrypted.MAX_DATAGRAMS - 1
    assert [encrypted.asked(a, 0.0) for a in (2, 20, 40)] == [4, 40, 0]
    meter = encrypted.LossMeter()
    meter.count(900, 10)
    assert meter.ask == 0  # too few datagrams to say
    meter.count(90, 0)
    assert meter.ask == 2 and meter.got == meter.lost == 0
    meter.count(1000, 0)
    assert meter.ask == 4


def test_a_unit_sealed_with_padding_opens_to_its_bytes_then_zeros():
    import ctypes
    key = os.urandom(32)
    source = ctypes.create_string_buffer(b"records", 7)
    target = ctypes.create_string_buffer(64)
    n = crypto.AEAD(key).seal_into(9, ctypes.addressof(source), 7, ctypes.addressof(target), pad=25)
    assert n == 7 + 25 + crypto.TAG_LEN
    assert crypto.AEAD(key).open(9, target.raw[:n]) == b"records" + bytes(25)
