"""The kernel's UDP offloads as the data path uses them, and what one read may bring.

UDP_SEGMENT (Linux 4.18): one sendmsg of many equal datagrams. UDP_GRO (5.0):
one read of many datagrams of one sender, all of the size it reports, the
last maybe shorter.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
SEGMENT = struct.Struct("=H")
GRO_SIZE = struct.Struct("=i")
ANCILLARY_SPACE = socket.CMSG_SPACE(GRO_SIZE.size)
MSG_DONTWAIT = socket.MSG_DONTWAIT
BUFFER_SIZE = 65536  # larger than any datagram, so an oversized one is seen whole and counted
BURST = 32  # packets or reads one direction handles before the other gets a turn
SOCKET_BUFFER = 4 << 20  # room for bursts at line rate while the data path serves the other direction
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux: as root, past net.core.*mem_max
# A fast-mode frame of a full-sized packet is 10 bytes more than one datagram of
# the underlay carries: the kernel fragments it, which it does only with DF clear.
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0


def segment_size(ancillary) -> int:
    """The datagram size UDP_GRO reports for a coalesced read, or 0."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return GRO_SIZE.unpack(data[:GRO_SIZE.size])[0]
    return 0


def tunnel_socket(reuse_port: bool = False) -> socket.socket:
    """An unbound UDP socket as the data path needs it: deep buffers, fragmentation allowed.

    With `reuse_port`, one of an SO_REUSEPORT group on one port (one per queue).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for forced, option in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: as much as net.core.*mem_max allows
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    return sock


class Receiver:
    """Many datagrams per system call: recvmmsg(2), each datagram (or UDP_GRO read) into a slot of its own.

    After `receive()` returns k, message i (i < k) is `view[i * SLOT:][:lengths[i]]`,
    from the IPv4 address `senders[i]` (an int), cut by UDP_GRO into datagrams
    of `segments[i]` bytes when that is not 0. Where libc has no recvmmsg, one
    recvmsg_into per call, with the same results.
    """

    SLOT = BUFFER_SIZE

    def __init__(self, sock: socket.socket, slots: int = 32):
        self.sock, self.slots = sock, slots
        self.buffer = bytearray(slots * self.SLOT)
        self.view = memoryview(self.buffer)
        self.lengths: tuple = ()
        self.senders: tuple = ()
        self.segments: tuple = ()
        self._ports = None
        self._call = _mmsg.prepare(self) if _mmsg is not None else None
        if self._call is None:
            self._bufs = [self.view[:self.SLOT]]

    def receive(self) -> int:
        """Read what is waiting, up to `slots` messages; 0 when nothing is. OSError for a queued socket error."""
        if self._call is not None:
            return self._call()
        try:
            n, ancillary, _, sender = self.sock.recvmsg_into(self._bufs, ANCILLARY_SPACE, MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        self.lengths, self.segments = (n,), (segment_size(ancillary),)
        self.senders = (int.from_bytes(socket.inet_aton(sender[0]), "big"),)
        self._ports = (sender[1],)
        return 1

    def port(self, i: int) -> int:
        """The UDP source port of message i (for log lines only)."""
        return self._ports[i] if self._ports is not None else _mmsg.port(self, i)


class _MultipleMessages:
    """recvmmsg through ctypes: the message headers are laid out once, their results read in one unpack each."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self.recvmmsg = libc.recvmmsg
        self.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        self.recvmmsg.restype = ctypes.c_int

        class IOVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class MsgHdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int)]

        class MMsgHdr(ctypes.Structure):
            _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

        self.IOVec, self.MMsgHdr = IOVec, MMsgHdr
        size_t = "Q" if ctypes.sizeof(ctypes.c_size_t) == 8 else "I"
        self.size_t = size_t
        self.stride = ctypes.sizeof(MMsgHdr)
        self.controllen_at = MsgHdr.controllen.offset
        self.len_at = MMsgHdr.len.offset
        self.control_space = socket.CMSG_SPACE(GRO_SIZE.size)
        self.cmsg_data_at = socket.CMSG_LEN(0)

    def prepare(self, receiver: Receiver):
        ctypes, slots = self.ctypes, receiver.slots
        buffer = (ctypes.c_char * len(receiver.buffer)).from_buffer(receiver.buffer)
        iovs = (self.IOVec * slots)()
        names = ctypes.create_string_buffer(16 * slots)
        controls = ctypes.create_string_buffer(self.control_space * slots)
        messages = (self.MMsgHdr * slots)()
        for i in range(slots):
            iovs[i].base = ctypes.addressof(buffer) + i * receiver.SLOT
            iovs[i].len = receiver.SLOT
            header = messages[i].hdr
            header.name, header.namelen = ctypes.addressof(names) + 16 * i, 16
            header.iov, header.iovlen = ctypes.addressof(iovs) + i * ctypes.sizeof(self.IOVec), 1
            header.control, header.controllen = ctypes.addressof(controls) + self.control_space * i, self.control_space
        keep = (buffer, iovs, names, controls, messages)  # the kernel writes through these addresses: keep them alive
        table = memoryview(messages).cast("B")
        sizes = table.cast(self.size_t)
        size_bytes = struct.calcsize(self.size_t)
        controllen_words = slice(self.controllen_at // size_bytes, None, self.stride // size_bytes)
        full = memoryview(struct.pack(f"={slots}{self.size_t}", *[self.control_space] * slots)).cast(self.size_t)
        layouts = [None] + [(struct.Struct("=" + (f"{self.controllen_at}x{self.size_t}"
                                                  f"{self.len_at - self.controllen_at - size_bytes}xI"
                                                  f"{self.stride - self.len_at - 4}x") * k),
                             struct.Struct("!" + "4xI8x" * k),
                             struct.Struct("=" + f"{self.cmsg_data_at}xi{self.control_space - self.cmsg_data_at - 4}x" * k))
                            for k in range(1, slots + 1)]  # what k messages' results take, read in one unpack each
        recvmmsg, fd, pointer, dontwait = self.recvmmsg, receiver.sock.fileno(), ctypes.addressof(messages), MSG_DONTWAIT
        get_errno = ctypes.get_errno
        receiver._names = names

        def call() -> int:
            sizes[controllen_words] = full
            k = recvmmsg(fd, pointer, slots, dontwait, None)
            if k <= 0:
                err = get_errno()
                if k == 0 or err in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return 0
                raise OSError(err, os.strerror(err))
            results, addresses, grown = layouts[k]
            fields = results.unpack_from(table)
            controls_used, receiver.lengths = fields[0::2], fields[1::2]
            receiver.senders = addresses.unpack_from(names)
            if any(controls_used):
                sizes_seen = grown.unpack_from(controls)
                receiver.segments = tuple(size if used else 0 for size, used in zip(sizes_seen, controls_used))
            else:
                receiver.segments = (0,) * k
            return k

        call.keep = keep
        return call

    @staticmethod
    def port(receiver: Receiver, i: int) -> int:
        return struct.unpack_from("!H", receiver._names, 16 * i + 2)[0]


def _multiple_messages():
    try:
        return _MultipleMessages()
    except (ImportError, OSError, AttributeError):  # no ctypes, or a libc without recvmmsg
        return None


_mmsg = _multiple_messages()
