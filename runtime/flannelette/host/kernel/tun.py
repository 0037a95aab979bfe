"""Open a TUN device: the file descriptor the data path reads and writes packets on."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000  # bare IP packets, no 4-byte packet-info prefix: flannel's framing
IFF_VNET_HDR = 0x4000  # a virtio-net header before each packet, to write coalesced TCP
IFF_MULTI_QUEUE = 0x0100  # one device, several fds, the kernel spreading flows over them
IFNAMSIZ = 16
TUNSETOFFLOAD = 0x400454D0
# What the kernel may leave undone in packets it hands over: checksums, and TCP
# segmentation (whole super-packets of up to gso_max_size bytes).
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6


class TunError(Exception):
    pass


def open_tun(name: str, vnet_hdr: bool = True, multi_queue: bool = False) -> int:
    """A non-blocking fd attached to TUN device `name`, creating the device if missing.

    With `vnet_hdr`, every read and write on the fd starts with a struct
    virtio_net_hdr (all zero for a plain packet): see flannelette.host.datapath.coalesce.
    With `multi_queue`, each call attaches one more queue to the device, and
    the kernel hands each flow's packets to one queue by its hash.

    The device is not persistent: it disappears with the last fd, so a runtime
    killed with SIGKILL leaves no flannel0 routing packets into nothing.
    """
    if len(name.encode()) >= IFNAMSIZ:
        raise TunError(f"{name!r}: interface names are at most {IFNAMSIZ - 1} bytes")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"can't open {TUN_PATH}: {e.strerror} (is the tun module loaded?)") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
                                                  | (IFF_MULTI_QUEUE if multi_queue else 0)))
    except OSError as e:
        os.close(fd)
        raise TunError(_setiff_message(name, e)) from None
    return fd


def _setiff_message(name: str, error: OSError) -> str:
    if error.errno == errno.EBUSY:
        return f"{name} is attached to another process (is another flannelette or flanneld running?)"
    if error.errno == errno.EINVAL:
        return f"{name} exists and is not a TUN device; remove it (ip link del {name}) and start again"
    return f"can't attach TUN device {name}: {error.strerror}"


def set_offload(fd: int, on: bool) -> None:
    """Let flannel0 hand over TCP super-packets with checksums pending (on), or finished packets only (off).

    Callable on the open fd at any time; packets already queued keep the form
    they were queued in.
    """
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if on else 0)
