"""A stand-in for a flanneld host of the udp backend, behaving as flannel's own proxy does.

    python3 flanneld_standin.py --leases FILE --public-ip IP --counts FILE

It makes flannel0 (a TUN device without a virtio-net header, the subnet's
address on it with the network's prefix) and cni0 with the subnet's gateway,
then carries packets as flannel's C proxy does: a packet read from flannel0
goes, TTL lowered, as one datagram to the UDP port of the host holding its
destination's subnet; a datagram from the port goes, TTL lowered, into
flannel0 as it came, which the kernel refuses unless it is an IP packet. What
arrived that was not IPv4 is counted and written to --counts at SIGTERM.
Standard library only; `ip` for the links, as a test may.
"""

import argparse
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
PORT = 8285


def checksum(header):
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def decrement_ttl(packet):
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[8] <= 1:
        return False
    packet[8] -= 1
    struct.pack_into("!H", packet, 10, 0)
    struct.pack_into("!H", packet, 10, checksum(bytes(packet[:(packet[0] & 0x0F) * 4])))
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--leases", required=True)
    parser.add_argument("--public-ip", required=True)
    parser.add_argument("--network", default="10.244.0.0/16")
    parser.add_argument("--counts", required=True)
    args = parser.parse_args()
    with open(args.leases) as f:
        leases = json.load(f)["leases"]
    network = ipaddress.IPv4Network(args.network)
    own = next(lease for lease in leases if lease["public_ip"] == args.public_ip)
    subnet = ipaddress.IPv4Network(own["subnet"])
    routes = {ipaddress.IPv4Network(lease["subnet"]): lease["public_ip"] for lease in leases if lease is not own}

    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"flannel0", IFF_TUN | IFF_NO_PI))
    for argv in (["ip", "addr", "add", f"{subnet.network_address}/{network.prefixlen}", "dev", "flannel0"],
                 ["ip", "link", "set", "flannel0", "mtu", "1472", "up"],
                 ["ip", "link", "add", "cni0", "type", "bridge"],
                 ["ip", "addr", "add", f"{subnet.network_address + 1}/{subnet.prefixlen}", "dev", "cni0"],
                 ["ip", "link", "set", "cni0", "up"]):
        subprocess.run(argv, check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.public_ip, PORT))
    counts = {"datagrams": 0, "not_ipv4": 0, "tun_refused": 0}

    def finish(*_):
        with open(args.counts, "w") as f:
            json.dump(counts, f)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, finish)
    with open(args.counts, "w") as f:
        json.dump(counts, f)
    while True:
        ready, _, _ = select.select([tun, sock], [], [])
        if tun in ready:
            packet = bytearray(os.read(tun, 65536))
            if decrement_ttl(packet):
                destination = ipaddress.IPv4Address(bytes(packet[16:20]))
                for net, public_ip in routes.items():
                    if destination in net:
                        sock.sendto(packet, (public_ip, PORT))
        if sock in ready:
            datagram = bytearray(sock.recv(65536))
            counts["datagrams"] += 1
            if not datagram or datagram[0] >> 4 != 4:
                counts["not_ipv4"] += 1
            elif not decrement_ttl(datagram):
                continue
            try:
                os.write(tun, datagram)
            except OSError:  # flanneld logs "TUN send failed" and goes on
                counts["tun_refused"] += 1


if __name__ == "__main__":
    main()
