"""Between hosts with keys, WireGuard's protocol: nothing in clear on the underlay, nothing forged or replayed gets in."""

import json
import os
import socket
import struct
import time

import pytest

from netns_hosts import OUTSIDER_IP, eventually, in_namespace, sh
from test_fast import iperf, peer_format
from test_hostile import LISTEN_PORT, ipv4_udp, received, udp_socket
from flannelette.host.datapath import formats, packet

pytestmark = pytest.mark.netns
DATA_PATH = True  # on both underlays: cut like a wire, and whole like veth
PORT = 8285
MARKER = b"flannelette-in-clear?"


@pytest.fixture
def pair(cluster):
    a, b = cluster.build(2, keys=True)
    for host in (a, b):
        host.start()
    return a, b


def capture(cluster, seconds, traffic):
    """The UDP payloads on the underlay (port 8285) while `traffic()` runs: (source IP, payload) each."""
    path = os.path.join(cluster.workdir, f"capture-{time.monotonic_ns()}.pcap")
    dump = cluster.spawn(cluster.switch, "tcpdump", "-i", "br0", "-U", "-s", "0", "-w", path, "udp", "port", str(PORT))
    time.sleep(1)  # tcpdump is listening
    try:
        traffic()
        time.sleep(seconds)
    finally:
        dump.terminate()
        dump.wait(10)
    return read_pcap(path)


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data)[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, at = [], 24
    while at + 16 <= len(data):
        _, _, length, _ = struct.unpack_from(order + "IIII", data, at)
        frame = data[at + 16:at + 16 + length]
        at += 16 + length
        ip = frame[14:]  # Ethernet
        if len(ip) < 28 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        out.append((socket.inet_ntoa(ip[12:16]), ip[ihl + 8:]))
    return out


def test_two_hosts_encrypt_and_nothing_crosses_in_clear(cluster, pair):
    a, b = pair
    assert cluster.ping(a.ns, b.gateway)
    assert eventually(lambda: peer_format(a, b)[0] == "sealed" and peer_format(b, a)[0] == "sealed")
    listener = udp_socket(b.ns, b.gateway, LISTEN_PORT)
    listener.settimeout(0.5)
    sender = udp_socket(a.ns, a.gateway)

    def traffic():
        for _ in range(20):
            sender.sendto(MARKER, (b.gateway, LISTEN_PORT))
        a.run("ping", "-c", "3", "-i", "0.2", "-p", MARKER[:16].hex(), b.gateway)
        end = iperf(cluster, a, b, 2)
        assert end["sum_received"]["bits_per_second"] > 0

    try:
        datagrams = capture(cluster, 1, traffic)
        assert received(listener, MARKER, wait=2)
    finally:
        listener.close()
        sender.close()
    assert len(datagrams) > 100
    kinds = {payload[0] for _, payload in datagrams}
    assert kinds <= {1, 2, 3, 4, formats.SEALED_UNIT, formats.HELLO, formats.ANSWER}, kinds
    assert not any(MARKER in payload or MARKER[:16] in payload for _, payload in datagrams)
    assert not any(formats.is_plain(payload[0]) for _, payload in datagrams)
    assert a.metric("peer_handshakes_total", peer=b.name, role="initiated") \
        + b.metric("peer_handshakes_total", peer=a.name, role="initiated") >= 1



@pytest.fixture
def wireguard_peer(cluster):
    """A host running Debian's wireguard-go (the reference WireGuard), and a flannelette host that has its key."""
    if not sh("sh", "-c", "command -v wireguard-go && command -v wg", check=False).stdout.strip():
        pytest.skip("wireguard-go and wg (Debian's wireguard-go, wireguard-tools) are not installed")
    (host,) = cluster.build(1, keys=True)
    ns, ip, subnet, address = f"{cluster.prefix}wg", "192.168.60.30", "10.244.30.0/24", "10.244.30.1"
    cluster._add_ns(ns)
    cluster.plug(ns, ip)
    key_path = os.path.join(cluster.workdir, "wg.key")
    private = sh("wg", "genkey").stdout.strip()
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(private + "\n")
    public = sh("wg", "pubkey", input=private + "\n").stdout.strip()
    cluster.write_leases([host], extra=[{"host": "wg", "subnet": subnet, "public_ip": ip, "public_key": public}])
    cluster.spawn(ns, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "wg0")
    assert eventually(lambda: sh("ip", "netns", "exec", ns, "wg", "show", "wg0", check=False).returncode == 0)
    sh("ip", "netns", "exec", ns, "wg", "set", "wg0", "private-key", key_path, "listen-port", str(PORT), "peer",
       host.public_key, "endpoint", f"{host.public_ip}:{PORT}", "allowed-ips", str(host.subnet))
    for argv in (("ip", "addr", "add", f"{address}/24", "dev", "wg0"), ("ip", "link", "set", "wg0", "mtu", "1440", "up"),
                 ("ip", "route", "add", "10.244.0.0/16", "dev", "wg0")):
        sh("ip", "netns", "exec", ns, *argv)
    host.start()
    return host, ns, address


def tcp_works(cluster, client_ns, server_ns, server_address, client_address=None):
    """A TCP connection from `client_ns` to a listener in `server_ns` carries a line both ways."""
    def make():
        s = socket.socket()
        s.bind((server_address, 0))
        s.listen(1)
        return s
    listener = in_namespace(server_ns, make)
    port = listener.getsockname()[1]
    listener.settimeout(15)
    code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10"
            + (", source_address=(sys.argv[3], 0)" if client_address else "") + "); s.sendall(b'ping\\n'); "
            "print(s.recv(100).decode().strip())")
    client = cluster.spawn(client_ns, sys_executable(), "-c", code, server_address, str(port),
                           *([client_address] if client_address else []))
    try:
        conn, _ = listener.accept()
        conn.settimeout(10)
        line = conn.recv(100)
        conn.sendall(b"pong\n")
        out = client.communicate(timeout=15)[0]
        conn.close()
        return line == b"ping\n" and out.strip() == b"pong"
    finally:
        listener.close()


def sys_executable():
    import sys
    return sys.executable


def test_a_flannelette_host_and_wireguard_go_reach_each_other(cluster, wireguard_peer):
    host, ns, address = wireguard_peer
    assert cluster.ping(host.ns, address)  # the first packet leaves plain and starts the handshake
    assert cluster.ping(ns, host.gateway)
    assert peer_format(host, type("Wg", (), {"name": "wg"}))[0] == "wireguard"
    assert tcp_works(cluster, host.ns, ns, address, client_address=host.gateway)
    assert tcp_works(cluster, ns, host.ns, host.gateway)
    shown = sh("ip", "netns", "exec", ns, "wg", "show", "wg0", "latest-handshakes").stdout.split()
    assert len(shown) == 2 and int(shown[1]) > 0
    assert host.metric("peer_auth_failed_total", peer="wg") == 0



def test_wireguard_go_starting_the_handshake(cluster, wireguard_peer):
    host, ns, address = wireguard_peer
    assert cluster.ping(ns, host.gateway)  # this time the handshake is wireguard-go's
    assert host.metric("peer_handshakes_total", peer="wg", role="answered") >= 1
    assert tcp_works(cluster, ns, host.ns, host.gateway)


def forger(cluster, pretend):
    """A third machine's raw socket: send(payload, to) sends a UDP datagram from `pretend`'s address and port."""
    ns = cluster.add_outsider()
    sock = in_namespace(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))

    def send(payload, to):
        udp = struct.pack("!HHHH", PORT, PORT, 8 + len(payload), 0) + payload
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, 64, 17, 0,
                                       socket.inet_aton(pretend), socket.inet_aton(to)))
        struct.pack_into("!H", header, 10, packet.checksum(header))
        sock.sendto(bytes(header) + udp, (to, 0))
    return send, sock


def sealed_and_listening(cluster, a, b):
    """Once `a` and `b` have a session and seal: a UDP listener on `b`'s cni0 gateway."""
    assert cluster.ping(a.ns, b.gateway)
    assert eventually(lambda: peer_format(a, b)[0] == "sealed" and peer_format(b, a)[0] == "sealed")
    listener = udp_socket(b.ns, b.gateway, LISTEN_PORT)
    listener.settimeout(0.5)
    return listener


def test_a_third_machine_forging_a_peers_address_delivers_nothing(cluster, pair):
    a, b = pair
    listener = sealed_and_listening(cluster, a, b)
    send, sock = forger(cluster, a.public_ip)
    before = {reason: b.drops(reason) for reason in ("plain_refused", "unknown_session", "bad_unit")}
    assert a.stop() == 0  # from now on only the forger speaks with a's address
    heard = b.metric("peer_last_heard_timestamp_seconds", peer=a.name)
    assert heard > 0
    time.sleep(1)
    try:
        for i in range(50):
            marker = b"forged-%d" % i
            forged = ipv4_udp(a.gateway, b.gateway, marker)
            send(forged if i % 3 == 0 else b"\x04\0\0\0" + os.urandom(12) + forged if i % 3 == 1
                 else bytes((formats.SEALED_UNIT, 0, 1, 0)) + os.urandom(12) + forged, b.public_ip)
        assert not received(listener, b"forged-", wait=2)
    finally:
        listener.close()
        sock.close()
    after = {reason: b.drops(reason) - before[reason] for reason in before}
    assert after["plain_refused"] >= 17, (after, b.log()[-2000:])
    assert b.drops("unknown_session") - before["unknown_session"] >= 16
    # Not heard from since it stopped, whatever came in its name a second later and after.
    assert abs(b.metric("peer_last_heard_timestamp_seconds", peer=a.name) - heard) < 0.1
    a.start()
    assert cluster.ping(a.ns, b.gateway)


def test_datagrams_replayed_a_second_later_deliver_nothing(cluster, pair):
    a, b = pair
    listener = sealed_and_listening(cluster, a, b)
    sender = udp_socket(a.ns, a.gateway)
    try:
        datagrams = capture(cluster, 1, lambda: [sender.sendto(b"once-%d" % i, (b.gateway, LISTEN_PORT))
                                                 for i in range(20)])
        got = 0
        while received(listener, b"once-", wait=0.5):
            got += 1
        assert got == 20
        replays = [payload for source, payload in datagrams if source == a.public_ip]
        assert replays  # a unit may hold many of the packets: it is replayed whole
        time.sleep(1)
        before = b.drops("replayed")
        send, sock = forger(cluster, a.public_ip)
        for payload in replays:
            send(payload, b.public_ip)
        sock.close()
        assert not received(listener, b"once-", wait=2)
        assert eventually(lambda: b.drops("replayed") - before >= len(replays))
        assert b.metric("peer_replayed_total", peer=a.name) >= len(replays)
    finally:
        listener.close()
        sender.close()



def test_a_peer_that_loses_datagrams_is_asked_for_shorter_units_until_the_loss_ends(cluster, pair):
    if cluster.underlay != "wire":
        pytest.skip("on veth a sealed unit crosses as one buffer, so loss takes it whole, never a part of it")
    a, b = pair
    assert eventually(lambda: cluster.ping(a.ns, b.gateway) and peer_format(a, b)[0] == "sealed"
                      and peer_format(b, a)[0] == "sealed")
    cluster.set_loss(0.01)
    lossy = iperf(cluster, a, b, 4)
    asked = b.metric("peer_sealed_unit_datagrams", peer=a.name, direction="asked")
    assert 2 <= asked <= 8, asked  # 1% of datagrams lost: units of about 2, so a loss costs about 2 segments
    assert eventually(lambda: a.metric("peer_sealed_unit_datagrams", peer=b.name, direction="sent") == asked)
    assert b.drops("unit_incomplete") > 0
    assert lossy["sum_received"]["bytes"] > 5_000_000, lossy["sum_received"]
    cluster.set_loss(0)
    iperf(cluster, a, b, 10)
    assert b.metric("peer_sealed_unit_datagrams", peer=a.name, direction="asked") == 0
    assert a.metric("peer_sealed_unit_datagrams", peer=b.name, direction="sent") == 0
