"""IPv4 packets built for tests, with a correct header checksum."""

import struct
from ipaddress import IPv4Address

from flannelette import packet


def ipv4(src, dst, payload=b"\x12\x34\x00\x35\x00\x10\x00\x00" + b"hello!!!", proto=17, ttl=64, flags_frag=0x4000):
    header = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1C46, flags_frag, ttl, proto, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    ))
    struct.pack_into("!H", header, 10, packet.checksum(header))
    return bytearray(header + payload)
