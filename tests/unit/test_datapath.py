"""The packet loop without root: a datagram socketpair stands in for the TUN device, loopback for the underlay."""

import socket
import time
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from flannelette.host.datapath import exchange, formats, packet
from flannelette.host.datapath.leases import LeaseTable
from flannelette.host.datapath.loop import TAKES_ALL, DataPath
from flannelette.host.datapath.vnet import VNET_HDR_LEN
from flannelette.model.config import Lease
from flannelette.host.ratelimit import RateLimitedLog
from ipv4_packets import ipv4

OWN = Lease("a", IPv4Network("10.244.1.0/24"), IPv4Address("127.0.0.1"))
PEER = Lease("b", IPv4Network("10.244.2.0/24"), IPv4Address("127.0.0.2"))
OTHER = Lease("c", IPv4Network("10.244.3.0/24"), IPv4Address("127.0.0.3"))
MTU = 1472


class Rig:
    """A running DataPath whose TUN is `self.tun` and whose peers are loopback sockets."""

    def __init__(self, leases, fast=False, send_sock=None):
        # fast: the network may use the fast format (the peer must still answer a hello for it); else
        # Backend.Wire flannel.
        self.tun, tun_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tun.settimeout(2)
        tun_end.setblocking(False)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.2", port))
        self.peer.settimeout(2)
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.9", 0))
        table = LeaseTable(OWN, leases, 24, port, force_flannel=not fast)
        self.offloads = []
        self.path = DataPath(tun_end.fileno(), self.sock, table, MTU, IPv4Address("10.244.1.0"), time.monotonic,
                             send_sock=send_sock, set_offload=self.offloads.append, release="test")
        self._keep = tun_end
        self.port = port
        self.path.start()

    def answer_hello(self):
        """Play a flannelette peer: answer the runtime's hello, then wait for it to send the peer segments."""
        data = self.peer.recv(2048)
        message = exchange.decode(data, len(data))
        assert message is not None and message.kind == formats.HELLO, data
        self.peer.sendto(exchange.encode(formats.ANSWER, TAKES_ALL, message.nonce, "peer"), ("127.0.0.1", self.port))
        assert eventually(lambda: self.path.table.peer_at("127.0.0.2").format == formats.FAST)
        return message

    def tun_send(self, data, header=bytes(VNET_HDR_LEN)):
        """What the kernel would put on the TUN fd: a virtio-net header (plain by default), then the packet."""
        self.tun.send(bytes(header) + bytes(data))

    def tun_recv(self):
        frame = self.tun_recv_frame()
        assert frame[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
        return frame[VNET_HDR_LEN:]

    def tun_recv_frame(self):
        return self.tun.recv(70000)

    def close(self):
        self.path.stop()
        for s in (self.tun, self._keep, self.sock, self.peer, self.stranger):
            s.close()

    def wait_drops(self, reason, count):
        eventually(lambda: self.path.drops[reason] >= count)
        return self.path.drops[reason]

    def assert_dropped(self, sender, data, reason):
        """A datagram from `sender` is dropped, counted under `reason`, and nothing reaches the TUN."""
        getattr(self, sender).sendto(data, ("127.0.0.1", self.port))
        assert self.wait_drops(reason, 1) == 1
        self.tun.settimeout(0.2)
        with pytest.raises(socket.timeout):
            self.tun_recv_frame()


def eventually(condition, timeout=3.0):
    """The loops count a packet just after passing it on: give them a moment."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture
def rig():
    r = Rig([OWN, PEER])
    yield r
    r.close()


def test_tun_packet_goes_to_its_subnets_holder_with_ttl_decremented(rig):
    out = ipv4("10.244.1.5", "10.244.2.7")
    rig.tun_send(out)
    data, sender = rig.peer.recvfrom(2048)
    assert sender == ("127.0.0.1", rig.port)
    expected = bytearray(out)
    packet.decrement_ttl(expected)
    assert data == bytes(expected)
    assert eventually(lambda: rig.path.totals()[:2] == [1, len(out)])


def test_a_queue_may_send_from_a_port_of_its_own_and_still_receive_on_the_shared_one():
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    r = Rig([OWN, PEER], send_sock=sender)
    try:
        r.tun_send(ipv4("10.244.1.5", "10.244.2.7"))
        assert r.peer.recvfrom(2048)[1] == sender.getsockname()
        r.peer.sendto(ipv4("10.244.2.7", "10.244.1.5"), ("127.0.0.1", r.port))
        assert r.tun_recv()[16:20] == bytes([10, 244, 1, 5])
    finally:
        r.close()
        sender.close()


def test_packet_for_no_lease_gets_net_unreachable_back(rig):
    offender = ipv4("10.244.1.5", "10.244.9.7")
    rig.tun_send(offender)
    assert rig.tun_recv() == packet.net_unreachable(offender, IPv4Address("10.244.1.0"))
    assert rig.path.drops[packet.NO_LEASE] == 1
    assert eventually(lambda: rig.path.icmp_sent == 1)


def test_datagram_from_peer_enters_tun(rig):
    inbound = ipv4("10.244.2.7", "10.244.1.5")
    rig.peer.sendto(inbound, ("127.0.0.1", rig.port))
    data = rig.tun_recv()
    assert data[8] == 63 and data[12:] == inbound[12:]
    assert eventually(lambda: rig.path.totals()[2:] == [1, len(inbound)])


@pytest.mark.parametrize("sender, payload, reason", [
    ("stranger", ipv4("10.244.2.7", "10.244.1.5"), packet.UNKNOWN_PEER),
    ("peer", ipv4("10.244.3.7", "10.244.1.5"), packet.SPOOFED_SOURCE),
    ("peer", ipv4("10.244.2.7", "10.244.3.5"), packet.NOT_OUR_SUBNET),
    ("peer", ipv4("10.244.2.7", "10.244.1.5", ttl=1), packet.TTL_EXPIRED),
    ("peer", b"\x45\x00", packet.SHORT),
    ("peer", ipv4("10.244.2.7", "10.244.1.5", payload=bytes(1500)), packet.OVERSIZED),
    ("peer", b"\x60" + bytes(39), packet.MALFORMED),
])
def test_bad_datagrams_are_dropped_and_counted(rig, sender, payload, reason):
    rig.assert_dropped(sender, payload, reason)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=1600), min_size=1, max_size=20))
def test_no_datagram_stops_the_loop(rig, datagrams):
    for data in datagrams:
        rig.peer.sendto(data, ("127.0.0.1", rig.port))
    good = ipv4("10.244.2.7", "10.244.1.5")
    rig.peer.sendto(good, ("127.0.0.1", rig.port))
    while True:  # the good one arrives after any random ones that happened to be valid
        if rig.tun_recv()[12:] == good[12:]:
            break
    assert rig.path.alive()


def test_update_table_adds_and_removes_peers_and_keeps_counts(rig):
    rig.tun_send(ipv4("10.244.1.5", "10.244.2.7"))
    rig.peer.recv(2048)
    assert eventually(lambda: rig.path.totals()[0] == 1)
    rig.path.update_table(LeaseTable(OWN, [OWN, PEER, OTHER], 24, rig.port, previous=rig.path.table, force_flannel=True))
    assert rig.path.table.peer_for(int(IPv4Address("10.244.3.1"))).host == "c"
    assert rig.path.totals()[0] == 1
    rig.path.update_table(LeaseTable(OWN, [OWN], 24, rig.port, previous=rig.path.table, force_flannel=True))
    assert rig.path.totals()[0] == 1  # a removed peer's history stays in the totals


def test_rate_limited_log(caplog):
    now = [0.0]
    limiter = RateLimitedLog(lambda: now[0], burst=2, interval=10)
    for _ in range(5):
        limiter.warn("short", "x")
    now[0] = 11
    limiter.warn("short", "x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["dropped (short): x", "dropped (short): x",
                        "3 more packets dropped (short) in the last 11s", "dropped (short): x"]
