"""The lab's physical network: a bridge on the lab machine, a namespace per host.

Each host's namespace has one interface, eth0, with its lab address and no
default route: hosts reach each other and the lab machine, nothing else. The
lab sets eth0 up before the host boots and nothing in the guest manages it,
so the address survives the guest's boot.

By default the network behaves like a wire (lab.wire): segmentation offloads
off on each host's eth0 and its bridge port, so datagrams are cut in software
before they cross, and receive GRO on at eth0, as on a host with a real NIC.
"""

import ctypes
import ipaddress
import os
import socket

from . import shell, wire
from .errors import LabError

UNDERLAYS = wire.MODES
CLONE_NEWNET = 0x40000000


def link_exists(name, netns=None):
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return shell.succeeds(prefix + ["link", "show", "dev", name])


def netns_list():
    out = shell.run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def addresses_in(network, ip_addr_output):
    """[(interface, cidr)] of IPv4 addresses in `network`, from `ip -4 -o addr`."""
    found = []
    for line in ip_addr_output.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "inet":
            iface = ipaddress.IPv4Interface(fields[3])
            if iface.network.overlaps(network):
                found.append((fields[1], fields[3]))
    return found


def check_network_free(plan):
    """Refuse a network another interface (another lab?) already uses: the
    lab machine would route to whichever came first."""
    out = shell.run(["ip", "-4", "-o", "addr", "show"]).stdout
    others = [f"{cidr} on {iface}" for iface, cidr in addresses_in(plan.network, out)
              if iface != plan.bridge]
    if others:
        raise LabError(f"network {plan.network} is already in use here "
                       f"({', '.join(others)}); give this lab another --network")


def ensure_bridge(plan):
    if not link_exists(plan.bridge):
        shell.run(["ip", "link", "add", plan.bridge, "type", "bridge"])
    shell.run(["ip", "addr", "replace", plan.gateway, "dev", plan.bridge])
    shell.run(["ip", "link", "set", plan.bridge, "up"])


def remove_bridge(plan):
    if link_exists(plan.bridge):
        shell.run(["ip", "link", "del", plan.bridge])


def ensure_host_link(plan, host, underlay="wire"):
    """The host's namespace, and a veth from the bridge to its eth0 (a wire-like one unless `underlay` is "veth")."""
    if host.netns not in netns_list():
        shell.run(["ip", "netns", "add", host.netns])
    if not link_exists(host.veth):
        shell.run(["ip", "link", "add", host.veth, "type", "veth",
                   "peer", "name", "eth0", "netns", host.netns])
    shell.run(["ip", "link", "set", host.veth, "master", plan.bridge, "up"])
    inside = ["ip", "-n", host.netns]
    shell.run(inside + ["addr", "replace", host.cidr, "dev", "eth0"])
    shell.run(inside + ["link", "set", "eth0", "up"])
    shell.run(inside + ["link", "set", "lo", "up"])
    if underlay == "wire":
        for argv in wire.cut_in_software(host.veth):
            shell.run(argv)
        for argv in wire.cut_in_software("eth0") + wire.receive_gro("eth0", True):
            shell.run(["ip", "netns", "exec", host.netns] + argv)


def remove_host_link(host):
    """Deleting the namespace deletes eth0 and with it the veth's other end."""
    if link_exists(host.veth):
        shell.run(["ip", "link", "del", host.veth])
    if host.netns in netns_list():
        shell.run(["ip", "netns", "del", host.netns])


def socket_in(netns, address, port, timeout):
    """A TCP connection made from inside network namespace `netns`: the calling
    thread enters it for the connect only, and the socket stays in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as target, open("/proc/thread-self/ns/net") as home:
        _setns(libc, target.fileno())
        try:
            return socket.create_connection((address, port), timeout=timeout)
        finally:
            _setns(libc, home.fileno())


def _setns(libc, fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


# The VMs' network: a namespace holding a bridge with the lab machine's
# address and one tap per VM, which qemu (run inside it) opens by name.

def ensure_switch(netns, plan):
    if netns not in netns_list():
        shell.run(["ip", "netns", "add", netns])
    inside = ["ip", "-n", netns]
    if not link_exists(plan.bridge, netns):
        shell.run(inside + ["link", "add", plan.bridge, "type", "bridge"])
    shell.run(inside + ["addr", "replace", plan.gateway, "dev", plan.bridge])
    shell.run(inside + ["link", "set", plan.bridge, "up"])
    shell.run(inside + ["link", "set", "lo", "up"])


def ensure_tap(netns, plan, host):
    inside = ["ip", "-n", netns]
    if not link_exists(host.veth, netns):
        shell.run(inside + ["tuntap", "add", "dev", host.veth, "mode", "tap"])
    shell.run(inside + ["link", "set", host.veth, "master", plan.bridge, "up"])


def links_in(netns=None):
    """Names of the links in `netns` (None: this machine's own namespace)."""
    out = shell.run((["ip", "-n", netns] if netns else ["ip"]) + ["-br", "link"]).stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()]


def remove_switch(netns, plan, tap_prefix):
    """The taps (links named `tap_prefix`...), the bridge, then the namespace, each by name."""
    if netns not in netns_list():
        return
    links = links_in(netns)
    for name in [n for n in links if n.startswith(tap_prefix)] + [plan.bridge]:
        if name in links:
            shell.run(["ip", "-n", netns, "link", "del", name])
    shell.run(["ip", "netns", "del", netns])
