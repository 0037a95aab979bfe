"""`flannelette teardown`: remove what runs of the runtime leave for the next one.

A stop keeps flannel0 (with its address and route), the rules and cni0, so a
restart never lets the overlay's packets out by another route; this removes
them, once the runtime is stopped: flannel0, the iptables chains or nftables
table, and cni0 while nothing is attached to it.
"""

from __future__ import annotations

import logging

from flannelette.host import daemon
from flannelette.host.kernel import netlink, tun
from flannelette.host.rules import Rules, RulesError

log = logging.getLogger("flannelette")


def add_arguments(parser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")


def remove_tun() -> bool:
    """Remove flannel0 unless a runtime holds it; False when one does."""
    with netlink.IPRoute() as ipr:
        index = netlink.link_index(ipr, daemon.TUN_NAME)
        if index is None:
            return True
        if netlink.link_kind(ipr, index) != "tun":
            log.warning("%s is not a TUN device, so not the runtime's: left in place", daemon.TUN_NAME)
            return True
    try:
        fd = tun.open_tun(daemon.TUN_NAME)
    except tun.TunError as e:
        log.error("%s", e)
        return False
    tun.remove_persistent(fd)
    log.info("removed %s and its route", daemon.TUN_NAME)
    return True


def remove_rules() -> None:
    for nftables in (False, True):
        rules = Rules(None, None, False, nftables)
        try:
            if rules.present():
                rules.remove()
                log.info("removed the %s rules", "nftables" if nftables else "iptables")
        except RulesError as e:  # a tool that isn't installed holds no rules of ours
            log.debug("%s", e)


def main(args) -> int:
    daemon.setup_logging(getattr(args, "verbose", False))
    if not remove_tun():
        log.error("stop flannelette first (systemctl stop flannelette), then run teardown again")
        return daemon.EXIT_FAILED
    remove_rules()
    daemon.remove_idle_bridge()
    return daemon.EXIT_OK
