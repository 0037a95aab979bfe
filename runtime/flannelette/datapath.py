"""The packet loop: flannel0 to UDP and UDP to flannel0, one inner IPv4 packet per datagram.

The rest of the runtime sees only `DataPath(...)`, `start()`, `stop()`,
`update_table()` and the counters, so a faster implementation can replace
this module without touching anything else.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from ipaddress import IPv4Address
from typing import Dict, List

from flannelette import packet
from flannelette.packet import LeaseTable

log = logging.getLogger(__name__)

BUFFER_SIZE = 65536  # larger than any datagram, so an oversized one is seen whole and counted
CHECKSUM = struct.Struct("!H")  # at offset 10
MSG_DONTWAIT = socket.MSG_DONTWAIT
NOT_IPV4 = "not_ipv4"
DROP_REASONS = packet.DROP_REASONS + (NOT_IPV4,)
# Per-packet warnings: at most this many per reason per interval, then a summary.
WARN_BURST, WARN_INTERVAL = 5, 60.0


def _patch_checksum(buf) -> None:
    """packet.decrement_ttl's checksum update, for a TTL the caller has already decremented."""
    total = (~CHECKSUM.unpack_from(buf, 10)[0] & 0xFFFF) + 0xFEFF
    CHECKSUM.pack_into(buf, 10, ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF)


class RateLimitedLog:
    """Warn about dropped packets without letting a flood of them flood the journal."""

    def __init__(self, clock, burst: int = WARN_BURST, interval: float = WARN_INTERVAL):
        self.clock, self.burst, self.interval = clock, burst, interval
        self.windows: Dict[str, list] = {}  # reason -> [window start, logged, suppressed]

    def warn(self, reason: str, message: str, *args) -> None:
        now = self.clock()
        window = self.windows.get(reason)
        if window is None or now - window[0] >= self.interval:
            if window and window[2]:
                log.warning("%d more packets dropped (%s) in the last %.0fs", window[2], reason, now - window[0])
            window = self.windows[reason] = [now, 0, 0]
        if window[1] < self.burst:
            window[1] += 1
            log.warning("dropped (%s): " + message, reason, *args)
        else:
            window[2] += 1


class DataPath:
    """Two loops, one per direction, each in its own thread; blocking syscalls release the GIL."""

    def __init__(self, tun_fd: int, sock: socket.socket, table: LeaseTable, mtu: int, tun_address: IPv4Address, clock):
        self.tun_fd, self.sock, self.table, self.mtu = tun_fd, sock, table, mtu
        self.tun_address = tun_address
        self.drops: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.icmp_sent = 0
        self.retired = [0, 0, 0, 0]  # counts of peers since removed from the table
        self.warnings = RateLimitedLog(clock)
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._threads: List[threading.Thread] = []

    # -- the narrow interface ----------------------------------------------------

    def start(self) -> None:
        for name, loop in (("tun-to-udp", self._tun_to_udp), ("udp-to-tun", self._udp_to_tun)):
            thread = threading.Thread(target=self._guarded, args=(loop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def update_table(self, table: LeaseTable) -> None:
        """Swap in a new lease table; the loops pick it up at their next packet."""
        gone = set(self.table.peers_by_identity()) - set(table.peers_by_identity())
        for peer in self.table.peers():
            if peer.identity in gone:
                self.retired = [a + b for a, b in zip(self.retired, peer.counts)]
        self.table = table

    def totals(self) -> List[int]:
        """tx packets, tx bytes, rx packets, rx bytes over all peers, past and present."""
        totals = list(self.retired)
        for peer in self.table.peers():
            totals = [a + b for a, b in zip(totals, peer.counts)]
        return totals

    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    # -- the loops ---------------------------------------------------------------

    def _guarded(self, loop) -> None:
        # A bug in one packet's handling must not stop the loop: log it and go on.
        while not self._stopping:
            try:
                loop()
            except Exception:
                log.exception("data path error; continuing")

    def _poller(self, fd: int):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        return poller

    def _drop(self, reason: str, message: str, *args) -> None:
        self.drops[reason] += 1
        self.warnings.warn(reason, message, *args)

    def _tun_to_udp(self) -> None:
        # The hot loop: names bound to locals, one preallocated buffer, and
        # FileIO.readinto, which returns None on an empty non-blocking fd
        # instead of raising.
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        readinto = open(self.tun_fd, "rb", buffering=0, closefd=False).readinto
        sendto, addresses = self.sock.sendto, packet.ADDRESSES.unpack_from
        wait = self._poller(self.tun_fd).poll
        while not self._stopping:
            n = readinto(buf)
            if n is None:
                wait()
                continue
            if n < 20 or buf[0] >> 4 != 4:
                self._drop(NOT_IPV4, "%d bytes from the TUN device are not an IPv4 packet", n)
                continue
            table = self.table
            peer = table.by_subnet.get(addresses(buf, 12)[1] >> table.shift)
            if peer is None:
                self._unreachable(view[:n])
                continue
            ttl = buf[8]
            if ttl <= 1:
                self._drop(packet.TTL_EXPIRED, "TTL expired for %s", peer.host)
                continue
            buf[8] = ttl - 1
            _patch_checksum(buf)
            try:
                sendto(view[:n], peer.address)
            except OSError as e:
                self._drop(packet.SEND_FAILED, "to %s (%s): %s", peer.host, peer.address[0], e.strerror)
                continue
            counts = peer.counts
            counts[0] += 1
            counts[1] += n

    def _unreachable(self, offender) -> None:
        self._drop(packet.NO_LEASE, "no lease holds %s", socket.inet_ntoa(offender[16:20]))
        reply = packet.net_unreachable(offender, self.tun_address)
        if reply is not None and self._write_tun(reply):
            self.icmp_sent += 1

    def _udp_to_tun(self) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        recvfrom_into, mtu = self.sock.recvfrom_into, self.mtu
        addresses, total_length = packet.ADDRESSES.unpack_from, packet.TOTAL_LENGTH.unpack_from
        write = open(self.tun_fd, "wb", buffering=0, closefd=False).write
        wait = self._poller(self.sock.fileno()).poll
        while not self._stopping:
            try:
                n, sender = recvfrom_into(buf, BUFFER_SIZE, MSG_DONTWAIT)
            except BlockingIOError:
                wait()
                continue
            except OSError as e:  # e.g. a queued ICMP error for an earlier send
                log.debug("UDP receive: %s", e)
                continue
            table = self.table
            peer = table.by_public_ip.get(sender[0])
            if peer is None:
                self._drop(packet.UNKNOWN_PEER, "%d bytes from %s:%d", n, sender[0], sender[1])
                continue
            # Inline fast check of a well-formed packet; the full verdict, with its
            # reason, only for the rest.
            if not (20 <= n <= mtu and buf[0] == 0x45 and total_length(buf, 2)[0] == n):
                self._refuse(table, buf, n, sender)
                continue
            source, destination = addresses(buf, 12)
            ttl = buf[8]
            if source >> table.shift != peer.key or destination >> table.shift != table.own_key or ttl <= 1:
                self._refuse(table, buf, n, sender)
                continue
            buf[8] = ttl - 1
            _patch_checksum(buf)
            try:
                write(view[:n])
            except OSError as e:
                self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: %s", n, e.strerror)
                continue
            counts = peer.counts
            counts[2] += 1
            counts[3] += n

    def _refuse(self, table, buf, n: int, sender) -> None:
        problem = packet.header_problem(buf, n, self.mtu) or table.sender_problem(sender[0], buf) or packet.TTL_EXPIRED
        self._drop(problem, "%d bytes from %s:%d", n, sender[0], sender[1])

    def _write_tun(self, data) -> bool:
        for _ in range(3):  # a non-blocking TUN write can fail transiently under memory pressure
            try:
                os.write(self.tun_fd, data)
                return True
            except BlockingIOError:
                continue
            except OSError as e:
                self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: %s", len(data), e.strerror)
                return False
        self._drop(packet.TUN_WRITE_FAILED, "writing %d bytes: device busy", len(data))
        return False
