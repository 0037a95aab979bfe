"""An underlay that behaves like a wire, for the lab, the netns tier and the bench.

A veth hands a GSO buffer to its peer whole: a UDP_SEGMENT send, or VXLAN's
encapsulated super-packet, crosses as one buffer, and the receiver's read
returns it whole, which no real network does. With the segmentation offloads
below off on every interface a datagram leaves by (each host's eth0, each
bridge port), the kernel cuts every such buffer into datagrams in software
before it crosses, as a host with a real NIC puts them on the wire. Receive
GRO is a switch of its own at each receiving eth0: a real NIC may join
datagrams again (and does so per NAPI poll, so a read may end anywhere) or not.
Loss is applied in the switch, per datagram, after the sender cut them.

Each function returns the commands (argv lists) to run in the namespace that
holds the device, so every user runs them its own way.
"""

from __future__ import annotations

from typing import List

# What a veth would otherwise leave for a "NIC" that never cuts: TCP segmentation,
# UDP segmentation (UDP_SEGMENT sends), and the same for tunnels (VXLAN).
OFFLOADS = ("tso", "tx-udp-segmentation", "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation", "tx-gso-list")
LOSS_TABLE = "flannelette_loss"
MODES = ("wire", "veth")  # wire: cut in software; veth: GSO buffers pass through whole, as veth does by default


def cut_in_software(device: str) -> List[List[str]]:
    """Segmentation offloads off on `device`: what leaves by it is cut into datagrams first."""
    return [["ethtool", "-K", device] + [word for feature in OFFLOADS for word in (feature, "off")]]


def receive_gro(device: str, on: bool) -> List[List[str]]:
    """Receive GRO on `device` on or off (a veth joins datagrams again only with it on)."""
    return [["ethtool", "-K", device, "gro", "on" if on else "off"]]


def loss(probability: float) -> List[List[str]]:
    """In a switch namespace: drop this share of the UDP datagrams its bridges forward, each on its own."""
    per_10000 = round(probability * 10000)
    return [
        ["nft", "add", "table", "bridge", LOSS_TABLE],
        ["nft", "add", "chain", "bridge", LOSS_TABLE, "forward", "{ type filter hook forward priority 0; }"],
        ["nft", "add", "rule", "bridge", LOSS_TABLE, "forward", "meta", "l4proto", "udp",
         "numgen", "random", "mod", "10000", "<", str(per_10000), "counter", "drop"],
    ]


def no_loss() -> List[List[str]]:
    return [["nft", "delete", "table", "bridge", LOSS_TABLE]]
