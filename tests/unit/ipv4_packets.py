"""IPv4 packets built for tests, with a correct header checksum."""

import struct
from ipaddress import IPv4Address

from flannelette.host.datapath import packet


def ipv4(src, dst, payload=b"\x12\x34\x00\x35\x00\x10\x00\x00" + b"hello!!!", proto=17, ttl=64, flags_frag=0x4000):
    header = bytearray(struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1C46, flags_frag, ttl, proto, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    ))
    struct.pack_into("!H", header, 10, packet.checksum(header))
    return bytearray(header + payload)


def tcp(src, dst, seq, payload, flags=0x10, ack=1000, options=b"\x01\x01\x08\x0a\x00\x00\x00\x07\x00\x00\x00\x09",
        window=501, ttl=64, ident=7):
    """A TCP segment in IPv4 (ports 40000 -> 5201) with valid IP and TCP checksums."""
    header_len = 20 + len(options)
    segment = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (header_len // 4) << 4, flags, window, 0, 0)
                        + options + payload)
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 6, len(segment))
    struct.pack_into("!H", segment, 16, packet.checksum(pseudo + segment))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ident, 0x4000, ttl, 6, 0,
                                   IPv4Address(src).packed, IPv4Address(dst).packed))
    struct.pack_into("!H", header, 10, packet.checksum(header))
    return bytearray(header + segment)
