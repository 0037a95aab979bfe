"""The lab's address and name plan: pure, so it is tested without root.

A lab called NAME on NETWORK has a bridge NAME-br holding NETWORK's first
address (the lab machine's side), and hosts node1..nodeN at .11, .12, ...
each in network namespace NAME-nodeK, joined to the bridge by veth NAME-nK.
"""

import ipaddress
import re
from dataclasses import dataclass

from .errors import LabError

DEFAULT_NAME = "lab"
DEFAULT_NETWORK = "192.168.56.0/24"
DEFAULT_HOSTS = 3
FIRST_HOST_INDEX = 11
# Interface names are at most 15 bytes: NAME-n999 must fit.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,7}$")


@dataclass(frozen=True)
class HostPlan:
    name: str
    address: str
    prefixlen: int
    netns: str
    veth: str

    @property
    def cidr(self):
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class LabPlan:
    name: str
    network: ipaddress.IPv4Network

    @property
    def bridge(self):
        return f"{self.name}-br"

    @property
    def gateway(self):
        """The lab machine's address on the bridge."""
        return f"{self.network[1]}/{self.network.prefixlen}"

    @property
    def max_hosts(self):
        return self.network.num_addresses - FIRST_HOST_INDEX - 1

    def host(self, index):
        """Host `index` (1-based): node1 is at the network's .11."""
        return HostPlan(
            name=f"node{index}",
            address=str(self.network[FIRST_HOST_INDEX + index - 1]),
            prefixlen=self.network.prefixlen,
            netns=f"{self.name}-node{index}",
            veth=f"{self.name}-n{index}",
        )

    def hosts(self, count):
        if not 1 <= count <= min(self.max_hosts, 999):
            raise LabError(
                f"--hosts {count}: must be between 1 and "
                f"{min(self.max_hosts, 999)} for network {self.network}"
            )
        return [self.host(i) for i in range(1, count + 1)]


def make_plan(name=DEFAULT_NAME, network=DEFAULT_NETWORK):
    """Validate a lab's name and network, all errors at once."""
    errors = []
    if not NAME_PATTERN.match(name):
        errors.append(
            f"lab name {name!r}: must be 1-8 lowercase letters or digits, "
            "starting with a letter (it prefixes interface names)"
        )
    try:
        net = ipaddress.IPv4Network(network)
        if net.num_addresses < FIRST_HOST_INDEX + 2:
            errors.append(f"network {network}: too small, use a /28 or larger")
    except ValueError as err:
        errors.append(f"network {network!r}: not an IPv4 network ({err})")
    if errors:
        raise LabError("\n".join(errors))
    return LabPlan(name=name, network=net)
