"""WireGuard's sessions over time, between two flannelette hosts: rekeys under a stream, a restart, a flood."""

import json
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from netns_hosts import eventually
from test_encryption import forger, sealed_and_listening
from test_fast import peer_format
from test_hostile import LISTEN_PORT, ipv4_udp, received, udp_socket
from flannelette.host.datapath import formats, noise

pytestmark = pytest.mark.netns
REKEY_AFTER = 15  # seconds; WireGuard's is 120, the code path the same


def handshakes(host, peer):
    return sum(host.metric("peer_handshakes_total", peer=peer.name, role=role) for role in ("initiated", "answered"))


def test_sessions_rekey_under_a_three_minute_stream_without_a_reset(cluster):
    a, b = cluster.build(2, keys=True)
    for host in (a, b):
        host.start("--rekey-after", str(REKEY_AFTER))
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    before = handshakes(a, b)
    out = a.run("iperf3", "-c", b.gateway, "-B", a.gateway, "-t", "180", "-i", "0", "-J", timeout=240).stdout
    server.wait(10)
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] > 0 and "error" not in json.loads(out)
    assert handshakes(a, b) - before >= 180 // REKEY_AFTER - 2  # every REKEY_AFTER seconds, give or take
    assert a.metric("peer_auth_failed_total", peer=b.name) == 0 and b.metric("peer_auth_failed_total", peer=a.name) == 0
    assert peer_format(a, b)[0] == "sealed"


def test_a_restarted_runtime_handshakes_again_within_two_seconds(cluster):
    a, b = cluster.build(2, keys=True)
    for host in (a, b):
        host.start()
    assert cluster.ping(a.ns, b.gateway)
    ping = cluster.spawn(a.ns, "ping", "-i", "0.05", b.gateway)  # traffic from the peer that kept its keys
    try:
        b.stop()
        b.start()
        ready = time.time()
        assert eventually(lambda: b.metric("peer_handshake_timestamp_seconds", peer=a.name) >= ready, timeout=2,
                          interval=0.05), b.log()[-2000:]
        assert b.metric("peer_handshake_timestamp_seconds", peer=a.name) - ready < 2
        assert cluster.ping(a.ns, b.gateway, timeout=2)
    finally:
        ping.terminate()


def message(kind: int, body: bytes) -> bytes:
    return bytes((kind, 0, 0, 0)) + body


MESSAGES = st.one_of(
    st.binary(max_size=200).map(lambda body: message(noise.INITIATION, body)),
    st.binary(min_size=144, max_size=144).map(lambda body: message(noise.INITIATION, body)),
    st.binary(min_size=88, max_size=88).map(lambda body: message(noise.RESPONSE, body)),
    st.binary(min_size=60, max_size=60).map(lambda body: message(noise.COOKIE_REPLY, body)),
    st.binary(max_size=1500).map(lambda body: message(noise.TRANSPORT, body)),
    st.tuples(st.integers(0, 70), st.integers(0, 70), st.binary(max_size=1500)).map(
        lambda t: bytes((formats.SEALED_UNIT, t[0], t[1], 0)) + t[2]),
)


@pytest.fixture
def sealed_pair(cluster):
    a, b = cluster.build(2, keys=True)
    for host in (a, b):
        host.start()
    listener = sealed_and_listening(cluster, a, b)
    send, sock = forger(cluster, a.public_ip)
    sender = udp_socket(a.ns, a.gateway)
    yield a, b, listener, send, sender
    for s in (listener, sock, sender):
        s.close()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(MESSAGES, min_size=1, max_size=40))
def test_a_flood_of_handshake_and_data_messages_leaves_the_daemon_alive_and_forwarding(sealed_pair, batch):
    a, b, listener, send, sender = sealed_pair
    before = sum(value for (name, _), value in b.metrics().items() if name == "flannelette_drops_total")
    for data in batch:
        send(data, b.public_ip)
    marker = b"still-forwarding-%d" % time.monotonic_ns()
    sender.sendto(marker, (b.gateway, LISTEN_PORT))
    assert received(listener, marker, wait=5)
    assert b.proc.poll() is None
    assert eventually(lambda: sum(value for (name, _), value in b.metrics().items()
                                  if name == "flannelette_drops_total") > before, timeout=2)
    assert "data path error" not in b.log()


def test_a_host_rebuilt_with_a_new_key_is_taken_on_reload_without_disturbing_other_sessions(cluster):
    a, b, c = cluster.build(3, keys=True)
    for host in (a, b, c):
        host.start()
    assert cluster.ping(a.ns, b.gateway) and cluster.ping(a.ns, c.gateway)
    with_b = a.metric("peer_handshake_timestamp_seconds", peer=b.name)
    c.stop()
    os.remove(c.private_key)
    c.make_key()  # the host rebuilt: a new key, which the next deploy puts in every lease
    cluster.write_leases(cluster.hosts)
    c.start()
    for host in (a, b):
        host.reload()
    assert cluster.ping(a.ns, c.gateway) and cluster.ping(b.ns, c.gateway)
    assert a.metric("peer_handshake_timestamp_seconds", peer=b.name) == with_b  # a and b kept their session
    assert peer_format(a, c)[0] == "sealed"
