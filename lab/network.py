"""The lab's physical network: a bridge on the lab machine, a namespace per host.

Each host's namespace has one interface, eth0, with its lab address and no
default route: hosts reach each other and the lab machine, nothing else. The
lab sets eth0 up before the host boots and nothing in the guest manages it,
so the address survives the guest's boot.

By default the network behaves like a wire (lab.wire): segmentation offloads
off on each host's eth0 and its bridge port, so datagrams are cut in software
before they cross, and receive GRO on at eth0, as on a host with a real NIC.
"""

import ipaddress

from . import shell, wire
from .errors import LabError

UNDERLAYS = wire.MODES


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
