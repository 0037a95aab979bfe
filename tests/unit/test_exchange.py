"""The capability exchange on its own: messages on bytes, and each peer's timers on a clock the test turns."""

import random
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings, strategies as st

from flannelette.host.datapath import exchange, formats
from flannelette.host.datapath.exchange import Exchanges
from flannelette.host.datapath.leases import LeaseTable
from flannelette.model.config import Lease

OWN = Lease("a", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.60.11"))
PEER = Lease("b", IPv4Network("10.244.2.0/24"), IPv4Address("192.168.60.12"))
FLANNELD = Lease("f", IPv4Network("10.244.3.0/24"), IPv4Address("192.168.60.13"), wire="flannel")
ALL = formats.mask(formats.FLANNEL, formats.FRAMES, formats.FAST)


class Side:
    """One host's exchanges, its table, and what it would have sent."""

    def __init__(self, leases=(OWN, PEER, FLANNELD), force=False, taken=ALL):
        self.changes = []
        self.table = LeaseTable(leases[0], leases, 24, 8285, force_flannel=force)
        self.ex = Exchanges(taken, "0.2.0", lambda peer, old, new: self.changes.append((peer.host, new)),
                            rng=random.Random(1))
        self.ex.adopt(self.table, 0.0)

    def peer(self, host):
        return next(p for p in self.table.peers() if p.host == host)

    def hellos(self, now):
        return [(peer.host, exchange.decode(data, len(data))) for peer, data in self.ex.due(now)]


def test_messages_round_trip_and_anything_else_is_refused():
    data = exchange.encode(formats.HELLO, ALL, 2 ** 64 - 1, "0.2.0")
    assert exchange.decode(data, len(data)) == exchange.Message(formats.HELLO, ALL, 2 ** 64 - 1, "0.2.0")
    assert data[0] == formats.HELLO and data[1:4] == b"\0\0\0"
    for broken in (data[:-1], data + b"x", b"\xf1" + data[1:4] + b"flnx" + data[8:], data[:1] + b"\1" + data[2:],
                   b"\xf3" + data[1:]):
        assert exchange.decode(broken, len(broken)) is None


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_never_decode_by_accident_nor_raise(data):
    message = exchange.decode(data, len(data))
    assert message is None or (data[4:8] == exchange.MAGIC and data[0] in (formats.HELLO, formats.ANSWER))


def test_a_new_peer_is_asked_three_times_then_left_on_flannels_format():
    side = Side()
    assert [host for host, _ in side.hellos(0.0)] == ["b"]  # never the flanneld host
    assert side.hellos(0.5) == []
    assert [host for host, _ in side.hellos(1.0)] == ["b"]
    assert [host for host, _ in side.hellos(2.0)] == ["b"]
    assert side.hellos(3.0) == [] and side.hellos(600.0) == []
    assert side.peer("b").exchange.state == exchange.SILENT and side.peer("b").format == formats.FLANNEL
    assert side.peer("f").exchange.state == exchange.FLANNEL and side.ex.sent[formats.HELLO] == 3


def test_an_answer_with_our_nonce_confirms_and_switches_to_segments():
    side = Side()
    (_, hello), = side.hellos(0.0)
    peer = side.peer("b")
    assert not side.ex.on_answer(peer, exchange.Message(formats.ANSWER, ALL, hello.nonce + 1, "x"), 0.1)
    assert peer.format == formats.FLANNEL
    assert side.ex.on_answer(peer, exchange.Message(formats.ANSWER, ALL, hello.nonce, "0.2.0"), 0.1)
    assert peer.format == formats.FAST and side.changes == [("b", formats.FAST)]
    assert peer.exchange.release == "0.2.0"
    assert not side.ex.on_answer(peer, exchange.Message(formats.ANSWER, ALL, hello.nonce, "0.2.0"), 0.2)  # a replay


def test_two_hosts_find_each_other_whoever_starts_first():
    a, b = Side(), Side((PEER, OWN))
    for t in (0.0, 1.0, 2.0, 3.0):  # b starts first; a is not up: b gives up on it
        b.hellos(t)
    (_, hello), = a.hellos(5.0)
    answer = b.ex.on_hello(b.peer("a"), hello, 5.0)  # b answers, and asks back
    assert a.ex.on_answer(a.peer("b"), exchange.decode(answer, len(answer)), 5.0)
    (_, back), = b.hellos(5.0)
    reply = a.ex.on_hello(a.peer("b"), back, 5.0)
    assert b.ex.on_answer(b.peer("a"), exchange.decode(reply, len(reply)), 5.0)
    assert a.peer("b").format == b.peer("a").format == formats.FAST


def test_a_confirmed_peer_is_asked_again_and_dropped_to_flannels_format_when_it_stops_answering():
    side = Side()
    (_, hello), = side.hellos(0.0)
    peer = side.peer("b")
    side.ex.on_answer(peer, exchange.Message(formats.ANSWER, ALL, hello.nonce, "0.2.0"), 0.0)
    assert side.hellos(exchange.REFRESH - 1) == []
    refresh = side.hellos(exchange.REFRESH + exchange.JITTER)
    assert [h for h, _ in refresh] == ["b"] and refresh[0][1].nonce != hello.nonce
    assert peer.format == formats.FAST  # kept while it is asked
    for t in (1, 2, 3):
        side.hellos(exchange.REFRESH + exchange.JITTER + t)
    assert peer.format == formats.FLANNEL and peer.exchange.state == exchange.SILENT


def test_frames_mark_the_previous_release_and_a_hello_later_asks_again():
    side = Side()
    peer = side.peer("b")
    side.ex.on_frames(peer, 0.0)
    assert peer.exchange.state == exchange.PREVIOUS and side.hellos(10.0) == []
    side.ex.on_hello(peer, exchange.Message(formats.HELLO, ALL, 5, "0.2.0"), 20.0)  # upgraded since
    assert [h for h, _ in side.hellos(20.0)] == ["b"]


def test_segments_from_a_silent_peer_ask_it_again_not_too_often():
    side = Side()
    for t in (0, 1, 2, 3):
        side.hellos(t)
    peer = side.peer("b")
    side.ex.on_segments(peer, 5.0)
    assert side.hellos(5.0) == []  # asked at 0: too soon
    side.ex.on_segments(peer, 11.0)
    assert [h for h, _ in side.hellos(11.0)] == ["b"]


def test_a_network_on_flannels_format_never_asks_and_answers_flannel_only():
    side = Side(force=True, taken=formats.mask(formats.FLANNEL))
    assert side.hellos(0.0) == []
    answer = side.ex.on_hello(side.peer("b"), exchange.Message(formats.HELLO, ALL, 9, "0.2.0"), 0.0)
    message = exchange.decode(answer, len(answer))
    assert message.nonce == 9 and formats.best_common(message.formats) == formats.FLANNEL


def test_a_lease_marked_flannel_stays_on_flannels_format_even_if_it_answers():
    side = Side()
    peer = side.peer("f")
    side.ex.on_hello(peer, exchange.Message(formats.HELLO, ALL, 9, "0.2.0"), 0.0)
    assert peer.exchange.state == exchange.FLANNEL and side.hellos(0.0)[0][0] == "b" and peer.format == formats.FLANNEL


def test_a_reload_keeps_kept_peers_and_asks_new_ones():
    side = Side()
    side.hellos(0.0)
    newcomer = Lease("c", IPv4Network("10.244.4.0/24"), IPv4Address("192.168.60.14"))
    table = LeaseTable(OWN, [OWN, PEER, newcomer], 24, 8285, previous=side.table)
    side.ex.adopt(table, 0.5)
    assert [p.host for p, _ in side.ex.due(0.5)] == ["c"]
    assert [p.host for p, _ in side.ex.due(1.0)] == ["b"]  # b's round goes on where it was
