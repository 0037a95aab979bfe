"""Open a TUN device: the file descriptor the data path reads and writes packets on."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Optional

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000  # bare IP packets, no 4-byte packet-info prefix: flannel's framing
IFF_VNET_HDR = 0x4000  # a virtio-net header before each packet, to write coalesced TCP
IFF_MULTI_QUEUE = 0x0100  # one device, several fds, the kernel spreading flows over them
IFNAMSIZ = 16
TUNSETOFFLOAD = 0x400454D0
TUNSETPERSIST = 0x400454CB
TUNSETVNETHDRSZ = 0x400454D8
VIRTIO_NET_HDR_LEN = 10  # struct virtio_net_hdr, what the data path reads and writes
# What the kernel may leave undone in packets it hands over: checksums, and TCP
# segmentation (whole super-packets of up to gso_max_size bytes).
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6


class TunError(Exception):
    pass


def open_tun(name: str, vnet_hdr: bool = True, multi_queue: bool = False, persist: bool = False) -> int:
    """A non-blocking fd attached to TUN device `name`, creating the device if missing.

    With `vnet_hdr`, every read and write on the fd starts with a struct
    virtio_net_hdr (all zero for a plain packet): see flannelette.host.datapath.coalesce.
    With `multi_queue`, each call attaches one more queue to the device, and
    the kernel hands each flow's packets to one queue by its hash.

    With `persist`, the device (and so its addresses and routes) outlives the
    fd: a runtime that stops or dies leaves flannel0 routing the overlay into
    a device that drops what it is given, never out by another route, and
    the next start attaches to it again (`remove_persistent` ends it). An
    existing device is taken as it is only when it was made with the same
    kind and queue flags; the per-fd flags (packet info, vnet header) are
    the ones given here, whatever the last owner used.
    """
    if len(name.encode()) >= IFNAMSIZ:
        raise TunError(f"{name!r}: interface names are at most {IFNAMSIZ - 1} bytes")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"can't open {TUN_PATH}: {e.strerror} (is the tun module loaded?)") from None
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if vnet_hdr:  # a last owner may have set another size; the data path reads this one
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR_LEN))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        os.close(fd)
        raise TunError(_setiff_message(name, e, multi_queue)) from None
    return fd


def remove_persistent(fd: int) -> None:
    """Make the device of `fd` go with its last fd, and close this one: a device nobody else holds is gone."""
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)


def _setiff_message(name: str, error: OSError, multi_queue: bool) -> str:
    if error.errno == errno.EBUSY:
        return f"{name} is attached to another process (is another flannelette or flanneld running?)"
    if error.errno == errno.EINVAL:
        queues = "multi-queue" if multi_queue else "single-queue"
        return (f"{name} exists but is not a {queues} TUN device (a TAP, a device of another kind, or made with "
                f"other queue flags); remove it (ip link del {name}) and start again")
    if error.errno == errno.EPERM:
        return f"{name} belongs to another user or group, and this process lacks CAP_NET_ADMIN"
    return f"can't attach TUN device {name}: {error.strerror}"


def set_offload(fd: int, on: bool) -> None:
    """Let flannel0 hand over TCP super-packets with checksums pending (on), or finished packets only (off).

    Callable on the open fd at any time; packets already queued keep the form
    they were queued in.
    """
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if on else 0)


class ScatterReader:
    """Reads of flannel0 scattered over slots: the first `chunk` bytes of a frame into one buffer, the rest into
    `slots - 1` slots of another, `chunk` bytes each, `stride` apart from `offset` (readv(2) through ctypes, with
    the slots laid out once). None where ctypes or readv is missing: then reads are whole (readinto)."""

    def __init__(self, fd: int, head: bytearray, slots_buffer: bytearray, chunk: int, stride: int, offset: int,
                 slots: int):
        import ctypes

        class IOVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        libc = ctypes.CDLL(None, use_errno=True)
        self._readv = libc.readv
        self._readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        self._readv.restype = ctypes.c_ssize_t
        self._get_errno = ctypes.get_errno
        self._head = (ctypes.c_char * len(head)).from_buffer(head)
        self._slots = (ctypes.c_char * len(slots_buffer)).from_buffer(slots_buffer)
        self._iov = (IOVec * slots)()
        self._head_address = ctypes.addressof(self._head)
        slots_address = ctypes.addressof(self._slots)
        for i in range(1, slots):
            self._iov[i].base = slots_address + i * stride + offset
            self._iov[i].len = chunk
        self._iov[0].len = chunk
        self._first = self._iov[0]
        self._pointer, self._count, self.fd = ctypes.addressof(self._iov), slots, fd

    def read(self, at: int) -> Optional[int]:
        """One frame, its first `chunk` bytes at head[at:]; None when the queue is empty."""
        self._first.base = self._head_address + at
        n = self._readv(self.fd, self._pointer, self._count)
        if n >= 0:
            return n
        err = self._get_errno()
        if err in (errno.EAGAIN, errno.EWOULDBLOCK):
            return None
        raise OSError(err, os.strerror(err))


def scatter_reader(*args) -> Optional[ScatterReader]:
    try:
        return ScatterReader(*args)
    except (ImportError, OSError, AttributeError):
        return None
