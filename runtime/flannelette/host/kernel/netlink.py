"""Kernel state through netlink (pyroute2): links, addresses, routes, and ip_forward.

Each function takes an IPRoute and reconciles: it reads what is there and
changes only what differs, so running it twice changes nothing the second time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import select
import socket
import sys
import types
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import List, Optional


def _pyroute2_package() -> None:
    """Make `pyroute2` importable without running its __init__.py.

    That file only re-exports, and to do so imports every netlink family and
    tool of the library (NDB, IPDB, nl80211, ipvs, ...): 0.15 to 0.2 s of every
    start, for the one IPRoute the runtime uses. Its submodules import each
    other by full name, so a bare package with pyroute2's path serves them.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import below says so
    package = types.ModuleType("pyroute2")
    package.__path__, package.__spec__, package.__file__ = list(spec.submodule_search_locations), spec, spec.origin
    sys.modules["pyroute2"] = package


_pyroute2_package()
from pyroute2.iproute.linux import IPRoute  # noqa: E402,F401  (re-exported: the one way in for callers)
from pyroute2.netlink.exceptions import NetlinkError as KernelRefusal  # noqa: E402
from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: E402

log = logging.getLogger(__name__)

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
# The outer IPv4 (20 bytes) and UDP (8 bytes) headers each inner packet carries.
ENCAP_OVERHEAD = 28


class NetlinkError(Exception):
    pass


def link_index(ipr, name: str) -> Optional[int]:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_kind(ipr, index: int) -> Optional[str]:
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def link_mtu(ipr, index: int) -> int:
    return ipr.get_links(index)[0].get_attr("IFLA_MTU")


def interface_with_address(ipr, address: IPv4Address) -> Optional[str]:
    """The name of the interface holding `address`, or None."""
    for message in ipr.get_addr(family=socket.AF_INET):
        if message.get_attr("IFA_ADDRESS") == str(address):
            return ipr.get_links(message["index"])[0].get_attr("IFLA_IFNAME")
    return None


def ensure_up(ipr, index: int, mtu: int, txqlen: Optional[int] = None) -> None:
    link = ipr.get_links(index)[0]
    if link.get_attr("IFLA_MTU") != mtu:
        ipr.link("set", index=index, mtu=mtu)
    if txqlen is not None and link.get_attr("IFLA_TXQLEN") != txqlen:
        ipr.link("set", index=index, txqlen=txqlen)
    if not link["flags"] & 1:  # IFF_UP
        ipr.link("set", index=index, state="up")


def ensure_bridge(ipr, name: str) -> bool:
    """Make sure bridge `name` exists; True when it had to be created."""
    index = link_index(ipr, name)
    if index is not None:
        if link_kind(ipr, index) != "bridge":
            raise NetlinkError(f"{name} exists but is not a bridge; remove it (ip link del {name}) and start again")
        return False
    ipr.link("add", ifname=name, kind="bridge")
    return True


def ensure_addresses(ipr, index: int, wanted: List[IPv4Interface]) -> None:
    """Make `wanted` the IPv4 addresses of link `index`: remove others, add missing."""
    present = {
        IPv4Interface((m.get_attr("IFA_ADDRESS"), m["prefixlen"]))
        for m in ipr.get_addr(index=index, family=socket.AF_INET)
    }
    for extra in present - set(wanted):
        ipr.addr("del", index=index, address=str(extra.ip), prefixlen=extra.network.prefixlen)
    for missing in [w for w in wanted if w not in present]:
        ipr.addr("add", index=index, address=str(missing.ip), prefixlen=missing.network.prefixlen)


def ensure_route(ipr, destination: IPv4Network, index: int) -> None:
    """Route `destination` through link `index`; `replace` is a no-op when it already does."""
    ipr.route("replace", dst=str(destination.network_address), dst_len=destination.prefixlen, oif=index)


def limit_gso(ipr, index: int, size: int) -> bool:
    """Keep the link's GSO packets at most `size` bytes; False where the kernel won't (5.10 and later do)."""
    if ipr.get_links(index)[0].get_attr("IFLA_GSO_MAX_SIZE") == size:
        return True
    try:
        ipr.link("set", index=index, gso_max_size=size)
    except KernelRefusal as e:  # older kernels refuse the attribute on an existing link, or ignore it
        log.info("gso_max_size %d: %s", size, e)
        return False
    return ipr.get_links(index)[0].get_attr("IFLA_GSO_MAX_SIZE") == size


def link_events() -> IPRoute:
    """A netlink socket that hears every link being made, changed or removed; close it."""
    ipr = IPRoute()
    ipr.bind(groups=RTMGRP_LINK)
    return ipr


def changed_links(events, timeout: float) -> List[str]:
    """Names of the links that changed, from what `events` heard within `timeout` seconds."""
    ready, _, _ = select.select([events], [], [], timeout)
    return [m.get_attr("IFLA_IFNAME") for m in events.get()] if ready else []


def bridge_ports(ipr, index: int) -> List[str]:
    return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links() if link.get_attr("IFLA_MASTER") == index]


def remove_link(ipr, name: str) -> bool:
    index = link_index(ipr, name)
    if index is None:
        return False
    ipr.link("del", index=index)
    return True


def tune_tun_sysctls(name: str) -> None:
    """Per-device settings of the TUN device.

    IPv6 is off because the overlay carries IPv4 only, so the kernel queues no
    IPv6 chatter on it. accept_local lets in the ICMP net-unreachable the runtime
    writes back from the device's own address to a sender on this host, which
    the kernel would otherwise drop as a martian.
    """
    for path in (f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", f"/proc/sys/net/ipv4/conf/{name}/accept_local"):
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write("1\n")


IGNORE_LINKDOWN = "/proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown"


def linkdown_routes_ignored(path: str = IGNORE_LINKDOWN) -> bool:
    """Whether the kernel skips routes over links without carrier, as flannel0 is while no runtime holds it.

    The setting of `all` counts for every device whatever the device's own says.
    """
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def enable_ip_forward(path: str = IP_FORWARD) -> None:
    with open(path, "r+") as f:
        if f.read().strip() != "1":
            f.seek(0)
            f.write("1\n")
