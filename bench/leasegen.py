"""Lease tables of any size for scale tests and the scale bench: a network cut into subnets, one lease per subnet.

`generate(60000)` cuts 10.0.0.0/8 into /24s, as a fleet that size would; the
public IPs come from 100.64.0.0/10, so they never collide with a test's real
hosts. With `keys`, every lease carries a (made-up but well-formed) public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, List, Optional

NETWORK = IPv4Network("10.0.0.0/8")
SUBNET_LEN = 24
PUBLIC = IPv4Network("100.64.0.0/10")


def net_conf(network: IPv4Network = NETWORK, subnet_len: int = SUBNET_LEN) -> dict:
    return {"Network": str(network), "SubnetLen": subnet_len, "Backend": {"Type": "udp"}}


def public_key(i: int) -> str:
    """A 32-byte key as `wg pubkey` prints it, the same for the same `i`."""
    return base64.b64encode(hashlib.sha256(b"flannelette lease %d" % i).digest()).decode()


def generate(count: int, network: IPv4Network = NETWORK, subnet_len: int = SUBNET_LEN, keys: bool = False,
             taken: Iterable[dict] = (), first: int = 0) -> List[dict]:
    """`count` leases after `taken` (real hosts, kept first), skipping their subnets and public IPs.

    `first` shifts which subnets and addresses are handed out, so two tables
    of the same size differ in every generated lease.
    """
    taken = list(taken)
    used_subnets = {lease["subnet"] for lease in taken}
    used_ips = {lease["public_ip"] for lease in taken}
    size = 1 << (32 - subnet_len)
    base = int(network.network_address)
    leases = list(taken)
    i = first
    while len(leases) < len(taken) + count:
        i += 1  # flannel never hands out the network's first subnet
        subnet = f"{IPv4Address(base + i * size)}/{subnet_len}"
        public_ip = str(PUBLIC.network_address + i)
        if subnet in used_subnets or public_ip in used_ips:
            continue
        if base + i * size > int(network.broadcast_address):
            raise ValueError(f"{network} holds fewer than {count} /{subnet_len} subnets")
        lease = {"host": f"gen{i}", "subnet": subnet, "public_ip": public_ip}
        if keys:
            lease["public_key"] = public_key(i)
        leases.append(lease)
    return leases


def write(path: str, leases: List[dict]) -> None:
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump({"leases": leases}, f)
    os.replace(temp, path)


def write_table(directory: str, count: int, keys: bool = False, taken: Iterable[dict] = (),
                network: IPv4Network = NETWORK, first: int = 0) -> tuple:
    """net-conf.json and leases.json for `count` generated leases in `directory`: their paths."""
    conf = os.path.join(directory, "net-conf.json")
    with open(conf, "w") as f:
        json.dump(net_conf(network), f)
    leases = os.path.join(directory, "leases.json")
    write(leases, generate(count, network, keys=keys, taken=taken, first=first))
    return conf, leases


def write_inventory(directory: str, count: int, groups: int = 2) -> str:
    """An inventory folder in `directory` like the example one, `count` generated hosts cut into `groups` groups,
    each with its ssh_hostname and static flannel_subnet, the network in group_data/all.py: the inventory's path."""
    os.makedirs(os.path.join(directory, "inventory", "group_data"), exist_ok=True)
    with open(os.path.join(directory, "inventory", "group_data", "all.py"), "w") as f:
        f.write(f"flannel_net_conf = {net_conf()!r}\n")
    leases = generate(count)
    path = os.path.join(directory, "inventory", "fleet.py")
    with open(path, "w") as f:
        for g in range(groups):
            f.write(f"group{g} = [\n")
            for lease in leases[g::groups]:
                data = {"ssh_hostname": lease["public_ip"], "flannel_subnet": lease["subnet"]}
                f.write(f"    ({lease['host']!r}, {data!r}),\n")
            f.write("]\n")
    return path
