"""`flannelette run`: turn net-conf.json and leases.json into kernel state, then carry packets.

Bring-up is an ordered list of steps; when one fails, the finished ones are
undone in reverse, so a runtime that can't start leaves nothing half made.

A stop (SIGTERM, SIGINT) ends only the process: flannel0 (persistent), its
address and route, the rules and cni0 stay, so during a restart or an upgrade
the overlay's packets are dropped at flannel0 instead of leaving by another
route, and the next start takes them over. `flannelette teardown` removes
them. A failed start undoes only what that start made: a flannel0 it found is
left routing into nothing, as the last runtime left it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from ipaddress import IPv4Address, IPv4Interface
from typing import Callable, List, Optional, Tuple

from flannelette.host import healthz, keys, metrics, notify, subnetenv
from flannelette.host.bridgewatch import BridgeWatch
from flannelette.host.datapath import noise, sessions
from flannelette.host.datapath.loop import DataPath
from flannelette.host.datapath.leases import LeaseTable
from flannelette.host.kernel import netlink, tun, udp
from flannelette.host.rules import Rules, RulesError
from flannelette.model import config
from flannelette.model.config import ConfigError

log = logging.getLogger("flannelette")

EXIT_OK, EXIT_FAILED = 0, 1
TUN_NAME = "flannel0"
BRIDGE_NAME = "cni0"
# The kernel queues packets for the runtime on flannel0 here; a queue deeper than
# the default 500 absorbs bursts instead of dropping them into TCP retransmits.
TUN_QUEUE = 5000
# The largest TCP super-packet flannel0 hands over, where the kernel lets it be
# lowered (Linux 5.10 does): cut into segments of one datagram each, it then fits one
# UDP send of 65507 bytes, so it leaves in one sendmsg instead of two.
TUN_GSO_MAX_SIZE = 62000
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class StartError(Exception):
    """The runtime can't start; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--net-conf", required=True, metavar="FILE", help="flannel's net-conf.json")
    parser.add_argument("--leases", required=True, metavar="FILE", help="the lease table, the same on every host")
    parser.add_argument("--public-ip", required=True, metavar="IP", help="this host's public IP: selects its lease")
    parser.add_argument(
        "--iface", metavar="NAME", help="the public interface, whose MTU - 28 is the overlay MTU "
        "(default: the interface holding --public-ip)",
    )
    parser.add_argument(
        "--subnet-file", default=subnetenv.DEFAULT_PATH, metavar="FILE",
        help=f"where to write FLANNEL_* for the CNI plugin (default {subnetenv.DEFAULT_PATH})",
    )
    parser.add_argument("--ip-masq", action="store_true", help="masquerade traffic leaving the overlay, as flanneld")
    parser.add_argument(
        "--private-key", metavar="FILE", help="this host's WireGuard private key (0600; `flannelette keygen` makes "
        "one): encrypt with every peer whose lease has a public key, unless Backend.Encryption is off",
    )
    parser.add_argument("--psk", metavar="FILE", help="the network's preshared key (0600), the same on every host")
    # Tests shorten it to see a rekey within minutes; the code path is the same.
    parser.add_argument("--rekey-after", type=float, default=sessions.REKEY_AFTER_TIME, help=argparse.SUPPRESS)
    parser.add_argument(
        "--healthz", metavar="ADDR:PORT",
        help=f"serve /healthz, /readyz and /metrics here (default off; e.g. 127.0.0.1:{healthz.DEFAULT_PORT})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")


# -- configuration ------------------------------------------------------------


def own_lease(leases: List[config.Lease], public_ip: IPv4Address, leases_path: str) -> config.Lease:
    for lease in leases:
        if lease.public_ip == public_ip:
            return lease
    held = ", ".join(f"{lease.host} {lease.public_ip}" for lease in leases) or "no leases at all"
    raise StartError(
        f"{leases_path}: no lease has public_ip {public_ip} (--public-ip); it holds: {held}. "
        "Pass this host's public IP as it appears there, or add this host to the inventory and deploy again."
    )


def parse_public_ip(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise StartError(f"--public-ip {text!r} is not an IPv4 address") from None


class Runtime:
    """Everything one running host needs; healthz reads it, signals drive it."""

    def __init__(self, args):
        self.args = args
        self.public_ip = parse_public_ip(args.public_ip)
        self.healthz_address = _healthz_address(args.healthz)
        self.net_conf = config.load_net_conf(args.net_conf)
        leases = config.load_leases(args.leases, self.net_conf)
        self.own = own_lease(leases, self.public_ip, args.leases)
        self.identity, self.psk = self._keys()
        self.leases = leases  # the table in use is the data path's, made from these
        self.ready = False
        self.reloads = {"ok": 0, "failed": 0}
        self.datapath: Optional[DataPath] = None
        self.mtu = 0
        # (what, how to undo it, whether it is kernel state a stop keeps), in the order made.
        self.undo: List[Tuple[str, Callable[[], None], bool]] = []

    @property
    def leases(self) -> List[config.Lease]:
        return self._leases

    @leases.setter
    def leases(self, leases: List[config.Lease]) -> None:
        # Hashed once per table: rendering 60,000 leases for every status line and scrape would cost seconds.
        self._leases, self.lease_hash = leases, metrics.lease_hash(leases)

    @property
    def lease_count(self) -> int:
        return len(self.leases)

    def _keys(self):
        """(this host's noise.Identity, the preshared key), or (None, None) where nothing is encrypted."""
        mode = self.net_conf.encryption
        if mode == config.ENCRYPTION_OFF or self.net_conf.wire == config.WIRE_FLANNEL:
            return None, None
        if not self.args.private_key:
            if mode == config.ENCRYPTION_REQUIRED:
                raise StartError("Backend.Encryption is required, but no --private-key was given "
                                 "(`flannelette keygen` makes one)")
            log.warning("no --private-key: nothing is encrypted (Backend.Encryption is on)")
            return None, None
        from flannelette.host.datapath import crypto

        try:
            crypto.check()
            private = keys.read_key(self.args.private_key)
            psk = keys.read_key(self.args.psk, "preshared key") if self.args.psk else None
        except crypto.Unavailable as e:
            raise StartError(f"this host can't encrypt: {e}; or set Backend.Encryption to off") from None
        except keys.KeyFileError as e:
            raise StartError(str(e)) from None
        identity = noise.Identity(private)
        self._check_own_key(self.own, identity)
        return identity, psk

    def _check_own_key(self, own, identity) -> None:
        if own.key is not None and own.key != identity.public:
            raise StartError(
                f"{self.args.leases}: the public key of {own.host} ({own.public_key}) is not that of "
                f"--private-key {self.args.private_key}; deploy again so the lease table has this host's key"
            )

    def _table(self, leases, previous=None) -> LeaseTable:
        force = self.net_conf.wire == config.WIRE_FLANNEL
        return LeaseTable(self.own, leases, self.net_conf.subnet_len, self.net_conf.port, previous, force_flannel=force)

    # -- bring-up ----------------------------------------------------------------

    def bring_up(self, ipr) -> None:
        steps = [
            ("ip_forward", self._ip_forward),
            ("UDP socket", self._socket),
            ("healthz", self._healthz),
            (TUN_NAME, lambda: self._tun(ipr)),
            (BRIDGE_NAME, lambda: self._bridge(ipr)),
            ("rules", self._rules),
            ("subnet.env", self._subnet_env),
            ("data path", self._datapath),
        ]
        self.mtu = self._mtu(ipr)
        for name, step in steps:
            try:
                step()
            except Exception as e:
                self.tear_down(kernel_state=True)
                raise StartError(f"{name}: {e}") from e
        self.ready = True

    def tear_down(self, kernel_state: bool = False) -> None:
        """Undo the finished steps in reverse, the kernel state this start made too with `kernel_state`;
        every undo runs even when one fails."""
        self.ready = False
        while self.undo:
            name, undo, kept = self.undo.pop()
            if kept and not kernel_state:
                continue
            try:
                undo()
            except Exception as e:
                log.error("stopping: %s: %s", name, e)

    def _made(self, name: str, undo: Callable[[], None], kernel: bool = False) -> None:
        self.undo.append((name, undo, kernel))

    def _mtu(self, ipr) -> int:
        name = self.args.iface or netlink.interface_with_address(ipr, self.public_ip)
        if name is None:
            raise StartError(
                f"no interface holds --public-ip {self.public_ip}; pass --iface NAME for the public interface"
            )
        index = netlink.link_index(ipr, name)
        if index is None:
            raise StartError(f"--iface {name}: no such interface")
        overhead = netlink.ENCAP_OVERHEAD + (noise.OVERHEAD if self.identity is not None else 0)
        return netlink.link_mtu(ipr, index) - overhead

    def _ip_forward(self) -> None:
        netlink.enable_ip_forward()

    def _socket(self) -> None:
        sock = udp.tunnel_socket()
        self._made("UDP socket", sock.close)
        try:
            sock.bind((str(self.public_ip), self.net_conf.port))
        except OSError as e:
            raise StartError(
                f"can't listen on {self.public_ip}:{self.net_conf.port}/udp: {e.strerror} "
                "(is another flannelette or flanneld running?)"
            ) from None
        self.sock = sock

    def _healthz(self) -> None:
        if self.healthz_address is None:
            return
        try:
            server = healthz.HealthServer(self.healthz_address, self)
        except OSError as e:
            raise StartError(f"can't serve on {self.args.healthz}: {e.strerror}") from None
        server.start()
        self._made("healthz", server.stop)

    def _tun(self, ipr) -> None:
        found = netlink.link_index(ipr, TUN_NAME)
        if found is not None and netlink.link_kind(ipr, found) != "tun":
            raise StartError(f"{TUN_NAME} exists but is not a TUN device; remove it (ip link del {TUN_NAME}) "
                             "and start again")
        self.tun_fd = tun.open_tun(TUN_NAME, persist=True)
        if found is None:
            self._made(TUN_NAME, _remove_tun, kernel=True)
        else:
            log.info("%s: taken over from the last run, with its route", TUN_NAME)
        self._made(f"{TUN_NAME} fd", lambda: os.close(self.tun_fd))
        if netlink.linkdown_routes_ignored():
            log.warning("net.ipv4.conf.all.ignore_routes_with_linkdown is 1: during a restart, while no runtime "
                        "holds %s, the overlay's packets would take another route (the default gateway); set it to 0",
                        TUN_NAME)
        index = netlink.link_index(ipr, TUN_NAME)
        netlink.tune_tun_sysctls(TUN_NAME)
        if not netlink.limit_gso(ipr, index, TUN_GSO_MAX_SIZE):
            log.info("%s: this kernel can't lower gso_max_size to %d; a super-packet may take two sends",
                     TUN_NAME, TUN_GSO_MAX_SIZE)
        netlink.ensure_up(ipr, index, self.mtu, TUN_QUEUE)
        tun.set_offload(self.tun_fd, False)  # until a peer takes segments (the data path's exchange)
        if self.net_conf.wire == config.WIRE_FLANNEL:
            log.info("flannel's format to every peer (Backend.Wire is flannel)")
        netlink.ensure_addresses(ipr, index, [IPv4Interface((self.own.subnet.network_address, 32))])
        netlink.ensure_route(ipr, self.net_conf.network, index)

    def _bridge(self, ipr) -> None:
        if self._reconcile_bridge(ipr):
            self._made(BRIDGE_NAME, remove_idle_bridge, kernel=True)
        watch = BridgeWatch(BRIDGE_NAME, self._reconcile_bridge)
        watch.start()
        self._made(f"{BRIDGE_NAME} watch", watch.stop)  # stopped first: it would make cni0 again

    def _reconcile_bridge(self, ipr) -> bool:
        """cni0 there, with the gateway and the MTU, up; whether it had to be made."""
        made = netlink.ensure_bridge(ipr, BRIDGE_NAME)
        index = netlink.link_index(ipr, BRIDGE_NAME)
        gateway = IPv4Interface((self.own.gateway, self.own.subnet.prefixlen))
        netlink.ensure_addresses(ipr, index, [gateway])
        netlink.ensure_up(ipr, index, self.mtu)
        return made

    def _rules(self) -> None:
        rules = Rules(self.net_conf.network, self.own.subnet, self.args.ip_masq, self.net_conf.enable_nftables)
        if not rules.apply():  # one read of the rules for both (each iptables-save is a process)
            self._made("rules", rules.remove, kernel=True)

    def _subnet_env(self) -> None:
        text = subnetenv.render(self.net_conf.network, self.own.subnet, self.mtu, self.args.ip_masq)
        subnetenv.write(self.args.subnet_file, text)

    def _datapath(self) -> None:
        self.datapath = DataPath(
            self.tun_fd, self.sock, self._table(self.leases), self.mtu, self.own.subnet.network_address, time.monotonic,
            set_offload=lambda on: tun.set_offload(self.tun_fd, on),
            sessions=self._sessions(), required=self.net_conf.encryption == config.ENCRYPTION_REQUIRED,
        )
        self.datapath.start()
        self._made("data path", self.datapath.stop)

    def _sessions(self):
        if self.identity is None:
            return None
        log.info("encrypting with every peer whose lease has a public key (%s)", self.net_conf.encryption)
        return sessions.Sessions(self.identity, self.psk, time.monotonic, rekey_after=self.args.rekey_after)

    # -- while running -------------------------------------------------------------

    def reload(self) -> None:
        """Re-read leases.json; on any problem keep the table in use and say why."""
        notify.reloading()
        with _no_collection_pause(), _data_path_first():
            self._reload()
        notify.ready(self.status())

    def _reload(self) -> None:
        try:
            leases = config.load_leases(self.args.leases, self.net_conf, previous=self.leases)
            self._check_own(leases)
            self._swap(leases)
        except (ConfigError, StartError) as e:
            self.reloads["failed"] += 1
            log.error("reload: keeping the current lease table (%s): %s", self.lease_hash, e)
        except Exception:  # a bug must not take the running overlay down with it
            self.reloads["failed"] += 1
            log.exception("reload: keeping the current lease table (%s)", self.lease_hash)

    def _check_own(self, leases) -> None:
        own = own_lease(leases, self.public_ip, self.args.leases)
        if self.identity is not None and own.key is not None and own.key != self.identity.public:
            raise StartError(
                f"this host's public key changed to {own.public_key}; restart flannelette to take its new key"
            )
        if own.subnet != self.own.subnet:
            raise StartError(
                f"this host's subnet changed from {self.own.subnet} to {own.subnet}; "
                "restart flannelette to move this host to its new subnet"
            )

    def _swap(self, leases) -> None:
        old = self.datapath.table
        table = self._table(leases, previous=old)
        self.datapath.update_table(table)
        self.leases = leases
        self.reloads["ok"] += 1
        for what, peers in (("added", table.peers_not_in(old)), ("removed", old.peers_not_in(table))):
            for peer in sorted(peers, key=lambda peer: (peer.host, peer.key)):
                log.info("peer %s: %s %s via %s", what, peer.host, peer.subnet, peer.public_ip)
        log.info("lease table %s loaded: %d peers", self.lease_hash, len(table.by_subnet))

    def status(self) -> str:
        peers = self.lease_count - 1
        return f"{self.own.host} {self.own.subnet}, {peers} peer{'' if peers == 1 else 's'}, leases {self.lease_hash}"

    def serve(self) -> None:
        """Wait for signals: SIGHUP reloads, SIGTERM or SIGINT stops."""
        while True:
            signum = signal.sigwait(HANDLED_SIGNALS)
            if signum == signal.SIGHUP:
                self.reload()
            else:
                log.info("%s: stopping", signal.Signals(signum).name)
                return


HANDLED_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def _no_collection_pause():
    """No garbage collection while a table is built, and what is alive afterwards out of the collector's sight.

    A full collection walks every object, and a table of 10,000 peers is
    hundreds of thousands: it held the data path off the interpreter for over
    100 ms in the middle of a reload. Frozen objects (gc.freeze) are never
    walked again; what they free goes by reference counting as before.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Free heap pages back to the kernel (glibc's malloc_trim): the megabytes a table's parsing used and
    freed would otherwise stay in the runtime's RSS. Elsewhere (musl) there is nothing to call."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


# How long the reload may keep the interpreter from the data path's thread when that one waits for it: the
# interpreter's default, 5 ms, let a reload delay a burst of packets that long at every switch, and far longer
# where the machine's cores are busy and the reload's thread loses its core while it holds the interpreter.
RELOAD_SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _data_path_first():
    """The reload hands the interpreter to a waiting data path within RELOAD_SWITCH_INTERVAL."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _remove_tun() -> None:
    with netlink.IPRoute() as ipr:
        netlink.remove_link(ipr, TUN_NAME)


def remove_idle_bridge() -> None:
    # Containers attached by the CNI bridge plugin keep their network while the
    # runtime restarts, so cni0 stays as long as anything is plugged into it.
    with netlink.IPRoute() as ipr:
        index = netlink.link_index(ipr, BRIDGE_NAME)
        if index is None:
            return
        ports = netlink.bridge_ports(ipr, index)
        if ports:
            log.info("leaving %s in place: %s attached", BRIDGE_NAME, ", ".join(ports))
        else:
            netlink.remove_link(ipr, BRIDGE_NAME)


def _healthz_address(text: Optional[str]):
    if not text:
        return None
    try:
        return healthz.parse_address(text)
    except ValueError as e:
        raise StartError(f"--healthz {e}") from None


# -- entry point -----------------------------------------------------------------


class JournalFormatter(logging.Formatter):
    """`<priority>message`, which journald reads as the line's priority; no timestamp of our own."""

    def format(self, record) -> str:
        return f"<{JOURNAL_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _stderr_is_journal() -> bool:
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(inode) and f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def main(args) -> int:
    setup_logging(getattr(args, "verbose", False))
    try:
        runtime = Runtime(args)
    except ConfigError as e:
        for problem in e.problems:
            log.error("%s", problem)
        return EXIT_FAILED
    except StartError as e:
        log.error("can't start: %s", e)
        return EXIT_FAILED
    # Blocked before any thread starts, so only the main thread's sigwait sees them.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        return run(runtime)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run(runtime: Runtime) -> int:
    try:
        with netlink.IPRoute() as ipr:
            runtime.bring_up(ipr)
    except (StartError, tun.TunError, RulesError, netlink.NetlinkError) as e:
        log.error("can't start: %s", e)
        return EXIT_FAILED
    gc.freeze()  # the table and everything bring-up made: see _no_collection_pause
    _return_freed_memory()
    log.info("ready: %s, mtu %d", runtime.status(), runtime.mtu)
    notify.ready(runtime.status())
    try:
        runtime.serve()
    finally:  # whatever ends serving, the kernel state goes with it
        notify.stopping()
        runtime.tear_down()
    log.info("stopped; %s, its route, the rules and %s stay for the next start (`flannelette teardown` "
             "removes them)", TUN_NAME, BRIDGE_NAME)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flannelette run", description=__doc__)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
