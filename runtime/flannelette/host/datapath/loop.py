"""The packet loop: flannel0 to UDP and UDP to flannel0, and the capability exchange's timers, in one thread.

Each peer gets the best format both ends take (flannelette.host.datapath.formats):
segments between flannelette hosts once the exchange has shown the peer takes
them, flannel's one IPv4 packet per datagram to anyone else. Every format is
accepted from any lease holder.

The rest of the runtime sees only `DataPath(...)`, `start()`, `stop()`,
`update_table()` and the counters, so a faster implementation can replace
this package without touching anything else.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from ipaddress import IPv4Address
from typing import Callable, Dict, List, Optional

from flannelette import __version__
from flannelette.host.datapath import encrypted, formats, frames, inbound, outbound, packet, segments, trains
from flannelette.host.datapath.encrypted import Encrypted
from flannelette.host.datapath.exchange import Exchanges
from flannelette.host.datapath.inbound import Inbound
from flannelette.host.datapath.leases import Counts, LeaseTable
from flannelette.host.datapath.outbound import Outbound
from flannelette.host.kernel.udp import SOL_UDP, UDP_GRO
from flannelette.host.ratelimit import RateLimitedLog

log = logging.getLogger("flannelette.host.datapath")

DROP_REASONS = (packet.DROP_REASONS + outbound.DROP_REASONS + inbound.DROP_REASONS + segments.DROP_REASONS
                + trains.DROP_REASONS + frames.DROP_REASONS + encrypted.DROP_REASONS)
# What this host takes: every format it knows (the sealed one when it has a key), or, where the network is on
# flannel's format, flannel's only.
TAKES_ALL = formats.mask(formats.FLANNEL, formats.FRAMES, formats.FAST)
TAKES_SEALED = TAKES_ALL | formats.mask(formats.SEALED)
TAKES_FLANNEL = formats.mask(formats.FLANNEL)
OFFLOADED = (formats.FAST, formats.SEALED)  # formats that carry super-packets and pending checksums
TRAIN_WAIT_MS = int(trains.MAX_AGE * 1000) + 1


class DataPath(Outbound, Inbound, Encrypted):
    """Two loops, one per direction (flannelette.host.datapath.outbound, .inbound), taking turns in one thread;
    what is encrypted is sealed and opened by flannelette.host.datapath.encrypted.


    Both queues empty park the thread in poll() until a packet or the next
    timer of the capability exchange.

    One thread, not one per direction: measured between two namespace hosts,
    it carries 6-9% more TCP, because the two directions no longer hand the
    GIL back and forth, and the ACK a TUN write provokes is read by the
    thread that is already running.
    """

    def __init__(self, tun_fd: int, sock: socket.socket, table: LeaseTable, mtu: int, tun_address: IPv4Address, clock,
                 send_sock: Optional[socket.socket] = None, set_offload: Optional[Callable[[bool], None]] = None,
                 release: str = __version__, sessions=None, required: bool = False):
        # sessions: flannelette.host.datapath.sessions.Sessions when this host has a key (encryption not off);
        # required: nothing plain to or from any peer.
        # send_sock: where datagrams leave from, when not `sock`. Queues of a
        # multi-queue TUN each send from a port of their own, so the peer's
        # SO_REUSEPORT group spreads what they send over its queues too.
        self.tun_fd, self.recv_sock, self.table, self.mtu = tun_fd, sock, table, mtu
        self.sock = send_sock or sock
        self.tun_address = tun_address
        self.clock = clock
        self.drops: Dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.icmp_sent = 0
        self.retired = Counts()  # counts of peers since removed from the table
        self.warnings = RateLimitedLog(clock)
        self.set_offload = set_offload or (lambda on: None)
        self.offload = False  # whether flannel0 hands over super-packets with checksums pending
        self._set_up_encryption(sessions, required)
        taken = TAKES_FLANNEL if table.force_flannel else TAKES_SEALED if sessions is not None else TAKES_ALL
        self.exchanges = Exchanges(taken, release, self._format_changed, decide=self._decide)
        self._attach_tunnels(table)
        self.exchanges.adopt(table, clock())
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._threads: List[threading.Thread] = []
        self.gso = True  # cleared at the first sign the kernel can't segment UDP
        self._train_id = 0  # the number of the last train sent (mod 256)
        self._waiting_trains = set()  # peers with a train not yet whole
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError as e:  # before Linux 5.0: one datagram per read, as before
            log.info("UDP receive offload (UDP_GRO) unavailable (%s); one datagram per read", e.strerror)

    # -- the narrow interface ----------------------------------------------------

    def start(self) -> None:
        thread = threading.Thread(target=self._guarded, args=(self._take_turns,), name="data-path", daemon=True)
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
        """Swap in a new lease table; the loop picks it up at its next packet, new peers are asked at once."""
        for peer in self.table.peers_not_in(table):
            self.retired.add(peer.counts)
        self._attach_tunnels(table)
        self.exchanges.adopt(table, self.clock())
        self.table = table
        self._refresh_offload()
        os.write(self._wake_write, b"t")  # the new peers' hellos are due now

    def totals(self) -> List[int]:
        """tx packets, tx bytes, rx packets, rx bytes over all peers, past and present."""
        totals = Counts()
        totals.add(self.retired)
        for peer in self.table.peers():
            totals.add(peer.counts)
        return list(totals.as_tuple())

    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    # -- formats -------------------------------------------------------------------

    def _attach_tunnels(self, table: LeaseTable) -> None:
        """Every peer with a key gets its tunnel (kept while the key stays); tunnels of keys gone are forgotten."""
        if self.sessions is None:
            return
        keys = set()
        for peer in table.by_subnet.values():
            if peer.public_key is not None and not peer.marked_flannel and not table.force_flannel:
                peer.tunnel = self.sessions.tunnel_for(peer, peer.public_key)
                keys.add(peer.public_key)
        self.sessions.keep_only(keys)

    def _decide(self, peer, best: int) -> int:
        """The format to send `peer`, from the best one the exchange found and what is known of its sessions.

        With a key on both ends: the sealed format where the peer takes it, WireGuard's messages once a handshake
        with it completed (or always, where encryption is required), until then what the exchange found: a host
        of an earlier release, or one whose key does not match, keeps the overlay during an upgrade.
        """
        tunnel = peer.tunnel
        if tunnel is None:
            return formats.FAST if best == formats.SEALED else best
        if best == formats.SEALED:
            return formats.SEALED
        if self._encrypts(peer):
            return formats.WIREGUARD
        return best

    def _encrypted_now(self, peer) -> None:
        """A handshake with `peer` completed: from now on it gets an encrypted format."""
        if peer.format not in formats.ENCRYPTED:
            self.exchanges.reconsider(peer)

    def _format_changed(self, peer, old: int, new: int) -> None:
        log.info("%s (%s): %s format%s", peer.host, peer.address[0], formats.NAMES[new],
                 f" (release {peer.exchange.release})" if peer.exchange and peer.exchange.release else "")
        if new in OFFLOADED and not self.offload:
            self._set_offload(True)
        elif old in OFFLOADED:
            self._refresh_offload()
        if new == formats.SEALED and peer.tunnel.current is None:  # a handshake now, not with the first packet
            initiation = self.sessions.initiate(peer.tunnel, self.clock())
            if initiation is not None:
                self._send_control(initiation, peer)

    def _refresh_offload(self) -> None:
        wanted = any(peer.format in OFFLOADED for peer in self.table.by_subnet.values())
        if wanted != self.offload:
            self._set_offload(wanted)

    def _set_offload(self, on: bool) -> None:
        # On: flannel0 hands over TCP super-packets and packets with their checksum
        # pending, which go to a peer on flannel's format finished by the runtime.
        # Off: the kernel finishes every packet, as flannel's format needs.
        self.set_offload(on)
        self.offload = on

    # -- the loops ---------------------------------------------------------------

    def _guarded(self, loop) -> None:
        # A bug in one packet's handling must not stop the loop: log it and go on.
        while not self._stopping:
            try:
                loop()
            except Exception:
                log.exception("data path error; continuing")

    def _take_turns(self) -> None:
        # Each loop is a generator that yields False when its queue is empty
        # and True after a burst, so a busy direction never starves the other;
        # the thread sleeps in poll() only when both are empty, until a packet
        # or the exchange's next timer.
        loops = {self.tun_fd: self._tun_to_udp(), self.recv_sock.fileno(): self._udp_to_tun()}
        poller = select.poll()
        for fd in (*loops, self._wake_read):
            poller.register(fd, select.POLLIN)
        poll, ready, clock, exchanges, next_due = poller.poll, list(loops), self.clock, self.exchanges, self._next_due
        due = next_due()
        while not self._stopping:
            if due is not None and clock() >= due:
                for peer, message in exchanges.due(clock()):
                    self._send_control(message, peer)
                if self.sessions is not None:
                    self._sessions_due(clock())
                due = next_due()
            if ready:
                timeout = 0
            else:
                timeout = None if due is None else max(0, int((due - clock()) * 1000) + 1)
                if self._waiting_trains:  # a train cut short by a loss goes in (in pieces) soon, traffic or not
                    self._keep_waiting_trains(clock())
                    timeout = min(timeout, TRAIN_WAIT_MS) if timeout is not None else TRAIN_WAIT_MS
                if self._open_units:  # so is a sealed unit that lost a datagram given up
                    self._keep_waiting_units(clock())
                    timeout = min(timeout, TRAIN_WAIT_MS) if timeout is not None else TRAIN_WAIT_MS
            for fd, _ in poll(timeout):
                if fd == self._wake_read:
                    os.read(self._wake_read, 64)
                    due = next_due()
                elif fd not in ready:
                    ready.append(fd)
            for fd in list(ready):
                if not next(loops[fd]):
                    ready.remove(fd)
            if (exchanges.heap and (due is None or exchanges.heap[0][0] < due)) or (
                    self.sessions is not None and self.sessions.next_tick is not None
                    and (due is None or self.sessions.next_tick < due)):
                due = next_due()  # something that arrived set a sooner timer (a hello to answer back, a handshake)

    def _next_due(self) -> Optional[float]:
        due = self.exchanges.next_due()
        tick = self.sessions.next_due() if self.sessions is not None else None
        if tick is not None and (due is None or tick < due):
            return tick
        return due

    def _sessions_due(self, now: float) -> None:
        """What WireGuard's timers ask for: initiations sent again, keepalives."""
        for tunnel, what in self.sessions.due(now):
            if what == "keepalive":
                self._send_keepalive(tunnel.peer)
            else:
                initiation = self.sessions.initiate(tunnel, now, retry=True)
                if initiation is not None:
                    self._send_control(initiation, tunnel.peer)

    def _drop(self, reason: str, message: str, *args) -> None:
        self.drops[reason] += 1
        self.warnings.warn(reason, message, *args)

