"""Inventory data, read the way pyinfra reads it, turned into a plan.

Controller side only: it imports pyinfra, which the runtime on a host never has.
"""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Address
from pathlib import Path
from typing import Optional

from flannelette.controller import inventory_files
from flannelette.model import config
from flannelette.model.config import WIRE_FLANNELETTE, ConfigError, Lease, NetConf, Problem
from flannelette.model.files import replace_file
from flannelette.model.problems import schema_problems
from flannelette.model.plan import HostSpec, Plan, make_plan

NET_CONF_KEY = "flannel_net_conf"
# Every flannel_* key of a host's data and its value when the inventory gives
# none; None leaves it unset, for what is derived (or allocated) per host.
HOST_DEFAULTS = {
    NET_CONF_KEY: {"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}},
    "flannel_public_ip": None,  # ssh_hostname, or the host's name, when that is an IPv4 address
    "flannel_subnet": None,  # allocated into the allocation file beside the inventory
    "flannel_iface": None,  # the interface holding flannel_public_ip
    "flannel_ip_masq": True,
    "flannel_wire": WIRE_FLANNELETTE,
    "flannel_inventory": None,  # the inventory file pyinfra loaded
    "flannel_container_runtime": "cni",  # or podman, docker, or a list of them
    "flannel_psk_file": None,  # the network's preshared key, when not from FLANNELETTE_PSK
}


def load(path: str):
    """The hosts of an inventory file with their data, group_data precedence as in a real run.

    Read by inventory_files, in one pass; by pyinfra's own loader where that
    one can't be sure to read it alike (a file that uses pyinfra, connector hosts).
    """
    if not Path(path).is_file():
        raise ConfigError([Problem(path, "file", "no such inventory file")])
    cwd = os.getcwd()
    if inventory_files.reads_alike(path, cwd):
        loaded = inventory_files.load(path, cwd)
        if loaded is not None:
            return loaded
    return load_with_pyinfra(path, cwd)


def load_with_pyinfra(path: str, cwd: str):
    """A pyinfra Inventory from an inventory file, made by pyinfra's CLI loader."""
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli import util
    from pyinfra_cli.exceptions import CliError, UnexpectedExternalError
    from pyinfra_cli.inventory import make_inventory

    # pyinfra caches compiled inventory and group_data code by file name for the
    # life of the process; a long-lived caller must see files as they are now.
    util.PYTHON_CODES.clear()
    state = State()  # inventory and group_data files run within a state, as in `pyinfra`
    state.cwd = cwd
    try:
        with ctx_state.use(state):
            return make_inventory(path, cwd=state.cwd)
    except UnexpectedExternalError as e:
        raise inventory_files.file_error(e.exception, path, e.filename) from None
    except SyntaxError as e:
        raise inventory_files.file_error(e, path) from None
    except CliError as e:
        raise ConfigError([Problem(path, "file", str(e))]) from None


def allocation_path(inventory_path: str) -> str:
    """inventory/prod.py -> inventory/prod.leases.json"""
    path = Path(inventory_path)
    return str(path.with_name(path.stem + ".leases.json"))


def plan_inventory(inventory, inventory_path: str, allocate: bool = False) -> Plan:
    """Validate every host of `inventory` and plan its leases; all problems at once."""
    net_conf, hosts = read_hosts(inventory)
    alloc_file = allocation_path(inventory_path)
    hint = f"run `flannelette plan {inventory_path} --write` to allocate one"
    return make_plan(net_conf, hosts, read_allocations(alloc_file), alloc_file, allocate, hint)


def read_hosts(inventory) -> tuple:
    """(NetConf, [HostSpec]) from pyinfra hosts, or a ConfigError with every problem."""
    problems: list[Problem] = []
    confs: dict = {}
    hosts = []
    for host in inventory:
        data = host_data(host.data.dict())
        before = len(problems)
        problems += schema_problems(_flannel_keys(data), "host", host.name)
        if len(problems) > before:
            continue
        conf = _net_conf(data[NET_CONF_KEY], host.name, confs, problems)
        spec = _host_spec(host.name, data, problems)
        if conf is not None and spec is not None:
            hosts.append(spec)
    if not hosts and not problems:
        problems.append(Problem("inventory", "hosts", "the inventory has no hosts"))
    problems += _net_conf_agreement(confs)
    if problems:
        raise ConfigError(problems)
    return next(iter(confs.values()))[0], hosts


def host_data(data: dict) -> dict:
    """A host's data over HOST_DEFAULTS, without the keys left unset (None)."""
    return {k: v for k, v in {**HOST_DEFAULTS, **data}.items() if v is not None}


def _flannel_keys(data: dict) -> dict:
    return {k: v for k, v in data.items() if isinstance(k, str) and k.startswith("flannel_")}


def _net_conf(value, host_name: str, confs: dict, problems: list) -> Optional[NetConf]:
    """Parse each distinct net-conf once; remember which hosts use which."""
    key = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if key not in confs:
        try:
            conf = _parse_net_conf(value)
        except ConfigError as e:
            problems += e.problems
            conf = None
        confs[key] = (conf, [])
    confs[key][1].append(host_name)
    return confs[key][0]


def _parse_net_conf(value) -> NetConf:
    if isinstance(value, str):
        return config.load_net_conf(value)
    return config.parse_net_conf(value, where=NET_CONF_KEY)


def _net_conf_agreement(confs: dict) -> list[Problem]:
    parsed = {k: v for k, v in confs.items() if v[0] is not None}
    if len({v[0] for v in parsed.values()}) <= 1:
        return []
    groups = "; ".join(f"{', '.join(hosts)}: {conf.network}/{conf.subnet_len}" for conf, hosts in parsed.values())
    return [Problem("inventory", NET_CONF_KEY, f"hosts disagree on the network ({groups}): set it once, in group_data/all.py")]


def _host_spec(name: str, data: dict, problems: list) -> Optional[HostSpec]:
    before = len(problems)
    public_ip = _public_ip(name, data, problems)
    subnet = None
    if "flannel_subnet" in data:
        subnet = config.parse_cidr(data["flannel_subnet"], lambda m: problems.append(Problem(name, "flannel_subnet", m)))
    iface = data.get("flannel_iface")
    if iface is not None and not _valid_ifname(iface):
        problems.append(Problem(name, "flannel_iface", f"{iface!r} is not a Linux interface name (1-15 characters, no '/', ':' or spaces)"))
    if len(problems) > before:
        return None
    return HostSpec(name, public_ip, subnet, iface, data["flannel_ip_masq"], data["flannel_wire"])


def _public_ip(name: str, data: dict, problems: list) -> Optional[IPv4Address]:
    if "flannel_public_ip" in data:
        return config.parse_address(
            data["flannel_public_ip"], lambda m: problems.append(Problem(name, "flannel_public_ip", m))
        )
    address = data.get("ssh_hostname") or name
    try:
        return IPv4Address(address)
    except ValueError:
        problems.append(
            Problem(
                name,
                "flannel_public_ip",
                f"not set, and the host's address {address!r} is not an IPv4 address: "
                "set flannel_public_ip to the address peers send UDP to",
            )
        )
        return None


def _valid_ifname(name: str) -> bool:
    return 0 < len(name) <= 15 and not any(c in name for c in "/: \t\n") and name not in (".", "..")


def read_allocations(path: str) -> list[Lease]:
    """The allocation file's leases; none when it doesn't exist yet.

    Entries are checked for shape here and against the network by the plan,
    only for hosts still in the inventory.
    """
    if not os.path.exists(path):
        return []
    data = config.read_json(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(path, "file", "must be a JSON object with a \"leases\" list")])
    problems = schema_problems(data, "leases", path)
    leases = []
    for i, entry in enumerate(data.get("leases", []) if not problems else []):
        fail = lambda field: lambda m: problems.append(Problem(path, f"leases[{i}].{field}", m))  # noqa: E731
        subnet = config.parse_cidr(entry["subnet"], fail("subnet"))
        public_ip = config.parse_address(entry["public_ip"], fail("public_ip"))
        if subnet is not None and public_ip is not None:
            leases.append(Lease(entry["host"], subnet, public_ip))
    if problems:
        raise ConfigError(problems)
    return leases


def write_allocations(path: str, plan: Plan) -> bool:
    """Write the plan's leases to the allocation file, atomically; False when it already held them."""
    return replace_file(path, config.render_leases(plan.leases))
