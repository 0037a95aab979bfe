"""The static subnet plan: a net-conf and a set of hosts become the lease table.

Pure logic, no I/O: the allocation file is read and written by the callers.
A host keeps its subnet for as long as it stays in the inventory; adding or
removing another host never moves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Optional

from flannelette.model.config import WIRE_FLANNELETTE, ConfigError, Lease, NetConf, Problem, lease_conflicts


@dataclass(frozen=True)
class HostSpec:
    """What the inventory says about one host, already type-checked."""

    name: str
    public_ip: IPv4Address
    subnet: Optional[IPv4Network] = None  # static subnet, from flannel_subnet
    iface: Optional[str] = None
    ip_masq: bool = True
    wire: str = WIRE_FLANNELETTE  # from flannel_wire: "flannel" for a flanneld host


@dataclass(frozen=True)
class Plan:
    net_conf: NetConf
    hosts: tuple  # of HostSpec, in inventory order
    leases: tuple  # of Lease, in inventory order
    new: tuple = field(default=())  # names of hosts given a subnet by this plan

    def lease_for(self, name: str) -> Lease:
        return self._by_name[name][1]

    def host(self, name: str) -> HostSpec:
        return self._by_name[name][0]

    @cached_property
    def _by_name(self) -> dict:
        """name -> (HostSpec, Lease): looked up once per host by the table and the deploy."""
        leases = {lease.host: lease for lease in self.leases}
        return {host.name: (host, leases.get(host.name)) for host in self.hosts}

    def keyed(self, keys: dict) -> tuple:
        """The leases with each host's public key from `keys` ({host: base64}): the table every host gets."""
        return tuple(replace(lease, public_key=keys.get(lease.host)) for lease in self.leases)


def make_plan(
    net_conf: NetConf,
    hosts: Iterable[HostSpec],
    allocations: Iterable[Lease] = (),
    allocation_file: str = "allocations",
    allocate: bool = False,
    allocate_hint: str = "",
) -> Plan:
    """Leases for `hosts`: static subnets first, then the allocation file, then new ones.

    With `allocate` false, a host that needs a subnet the allocation file
    doesn't hold is an error whose message is `allocate_hint` (the command that
    would allocate it), so a read-only pipeline never invents subnets.
    """
    hosts = tuple(hosts)
    allocated = {lease.host: lease.subnet for lease in allocations}
    problems = _host_problems(net_conf, hosts)
    problems += _capacity_problems(net_conf, hosts)
    if problems:
        raise ConfigError(problems)
    chosen = _static_and_allocated(net_conf, hosts, allocated, allocation_file, problems)
    missing = [h.name for h in hosts if h.name not in chosen and h.name not in _bad(problems)]
    if missing and not allocate:
        problems += [
            Problem(name, "subnet", f"has no allocation in {allocation_file}: {allocate_hint}".rstrip(": "))
            for name in missing
        ]
    if problems:
        raise ConfigError(problems)
    free = _free_subnets(net_conf, set(chosen.values()), set(allocated.values()))
    for name in missing:
        chosen[name] = next(free)
    leases = tuple(Lease(h.name, chosen[h.name], h.public_ip, h.wire) for h in hosts)
    problems = lease_conflicts(list(leases), "inventory")
    if problems:
        raise ConfigError(problems)
    return Plan(net_conf, hosts, leases, tuple(missing))


def _free_subnets(net_conf: NetConf, used: set, allocated: set):
    """Unused subnets, lowest first; those of hosts gone from the inventory come last,
    so a subnet isn't handed on while its old holder may still be running."""
    yield from (s for s in net_conf.subnets() if s not in used and s not in allocated)
    yield from sorted(s for s in allocated if s not in used and net_conf.subnet_problem(s) is None)


def _bad(problems: list[Problem]) -> set:
    return {p.where for p in problems}


def _host_problems(net_conf: NetConf, hosts: tuple) -> list[Problem]:
    problems = []
    static: dict = {}
    public: dict = {}
    for host in hosts:
        if host.subnet is not None:
            why = net_conf.subnet_problem(host.subnet)
            if why:
                problems.append(Problem(host.name, "flannel_subnet", why))
            elif host.subnet in static:
                problems.append(
                    Problem(host.name, "flannel_subnet", f"{host.subnet} is also {static[host.subnet]}'s subnet")
                )
            static.setdefault(host.subnet, host.name)
        if host.public_ip in public:
            problems.append(
                Problem(host.name, "flannel_public_ip", f"{host.public_ip} is also {public[host.public_ip]}'s public IP")
            )
        public.setdefault(host.public_ip, host.name)
    return problems


def _capacity_problems(net_conf: NetConf, hosts: tuple) -> list[Problem]:
    count = net_conf.subnet_count()
    if len(hosts) <= count:
        return []
    return [
        Problem(
            "inventory",
            "hosts",
            f"{len(hosts)} hosts, but SubnetMin..SubnetMax ({net_conf.subnet_min}..{net_conf.subnet_max}) "
            f"holds only {count} subnets of /{net_conf.subnet_len}: widen Network or raise SubnetLen",
        )
    ]


def _static_and_allocated(net_conf, hosts, allocated, allocation_file, problems) -> dict:
    """Each host's subnet where the inventory or the allocation file already fixes it."""
    static = {h.subnet: h.name for h in hosts if h.subnet is not None}
    chosen = {h.name: h.subnet for h in hosts if h.subnet is not None}
    for host in hosts:
        subnet = allocated.get(host.name)
        if host.subnet is not None or subnet is None:
            continue
        why = net_conf.subnet_problem(subnet)
        if why is None and subnet in static:
            why = f"{subnet} is now {static[subnet]}'s static flannel_subnet"
        if why:
            problems.append(
                Problem(
                    host.name,
                    "subnet",
                    f"its allocation in {allocation_file} can't be kept: {why}; "
                    f"remove the entry to have a new subnet allocated",
                )
            )
            continue
        chosen[host.name] = subnet
    return chosen
