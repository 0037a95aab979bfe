"""The overlay's deploys: validate and plan the whole inventory, then install one host.

Everything a host gets is decided before the first host is touched: the plan
is made once per run from every host of the inventory (the same code and the
same errors as `flannelette validate`), and each host's python3 and public
interface are read, not changed, before its first operation.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Optional

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server, systemd

from flannelette.deploy import bundle, facts, ops, render
from flannelette.deploy.render import (
    COMMAND, CONF_DIR, CONFLIST, LEASES, NET_CONF, PRIVATE_KEY, PSK, PYZ, SYSCTL, UNIT, UNIT_NAME,
)
from flannelette.controller import inventory as flannel_inventory
from flannelette.host.kernel.netlink import IP_FORWARD
from flannelette.model.config import ENCRYPTION_OFF, WIRE_FLANNEL, ConfigError, decode_key
from flannelette.model.plan import Plan

# Written before the runtime first turns IPv4 forwarding on, so that a
# teardown can put the host's setting back as it found it.
STATE_DIR = "/var/lib/flannelette"
IP_FORWARD_BEFORE = f"{STATE_DIR}/ip_forward.before"
PSK_VARIABLE = "FLANNELETTE_PSK"  # the network's preshared key, from the operator's secret store
# host-local keeps the addresses it handed out here, one directory per network.
CNI_ALLOCATIONS = "/var/lib/cni/networks/flannelette"
# Directories a deploy may have created; teardown removes them only when empty,
# deepest first.
CREATED_DIRS = (
    "/etc/cni/net.d", "/etc/cni", "/var/lib/cni/networks", "/var/lib/cni",
    os.path.dirname(PYZ), CONF_DIR, STATE_DIR,
)


class DeployError(PyinfraError):
    """Stops the run before any operation executes: pyinfra prints it and exits 1."""


def run_as_deploy_file(namespace: dict, deploy_function) -> None:
    """Call `deploy_function` when pyinfra runs the file of `namespace` as a deploy file.

    pyinfra executes a deploy file with no `__name__` of its own; imported as
    a module (`from flannelette.deploy import overlay`, or pyinfra's
    `flannelette.deploy.overlay.install`) the same file only defines.
    """
    if "__name__" not in namespace:
        deploy_function()


# -- the plan, once per run -------------------------------------------------------


def loaded_inventory_file(inventory) -> Optional[str]:
    """The inventory file pyinfra's CLI loaded, or None (pyinfra's API, or hosts named on its command line).

    pyinfra puts every host of an inventory file in a group named after the
    file (inventory/prod.py: "prod"); of the Python files the CLI ran, the
    inventory is the one so named that isn't group data.
    """
    cli = sys.modules.get("pyinfra_cli.util")  # never imported here: it patches the interpreter for gevent
    if cli is None:
        return None
    everyone = set(inventory)
    found = [
        name for name in cli.PYTHON_CODES
        if Path(name).parent.name != "group_data" and os.path.isfile(name)
        and set(inventory.get_group(Path(name).stem, [])) == everyone
    ]
    return found[0] if len(found) == 1 else None


def inventory_path(inventory, given: Optional[str] = None) -> str:
    """The inventory file whose NAME.leases.json holds the allocations (inventory/prod.py -> prod.leases.json).

    The deploy's argument, else the host data flannel_inventory, else the file
    pyinfra loaded; without any, ./inventory.leases.json.
    """
    return given or host.data.get("flannel_inventory") or loaded_inventory_file(inventory) or "inventory"


_plans: dict = {}


def load_plan(inventory=None, path: Optional[str] = None) -> Plan:
    """The plan of the inventory being deployed, made once and shared by every host."""
    inventory = inventory if inventory is not None else host.inventory
    path = inventory_path(inventory, path)
    key = (id(inventory), path)
    if key not in _plans:
        try:
            _plans[key] = flannel_inventory.plan_inventory(inventory, path)
        except ConfigError as error:
            _plans[key] = error
    plan = _plans[key]
    if isinstance(plan, ConfigError):
        raise DeployError(f"{path} is not valid; no host was changed:\n{plan}")
    return plan


# -- checks that read a host and change nothing ------------------------------------

MIN_PYTHON = bundle.MIN_PYTHON


def require_python3() -> str:
    """Path of the host's python3, or a DeployError naming the host and what it has."""
    found = host.get_fact(facts.Python3)
    need = ".".join(map(str, MIN_PYTHON))
    if not found:
        raise DeployError(f"{host.name}: no python3 found; the flannelette runtime needs python3 >= {need}")
    version = found["version"]
    if version is None or version[:2] < MIN_PYTHON:
        have = ".".join(map(str, version)) if version else "of unknown version"
        raise DeployError(f"{host.name}: {found['path']} is Python {have}; the flannelette runtime needs >= {need}")
    return found["path"]


def overlay_mtu(plan: Plan) -> int:
    """The MTU containers get: the public interface's, less the 28 bytes of UDP/IPv4 (and WireGuard's 32)."""
    spec = plan.host(host.name)
    try:
        _, mtu = facts.public_link(host.get_fact(facts.Links), spec.iface, spec.public_ip)
    except ValueError as error:
        raise DeployError(f"{host.name}: {error}") from None
    return render.overlay_mtu(mtu, encrypted(plan))


def encrypted(plan: Plan) -> bool:
    conf = plan.net_conf
    return conf.encryption != ENCRYPTION_OFF and conf.wire != WIRE_FLANNEL


_keys: dict = {}


def keyed_leases(plan: Plan) -> tuple:
    """The plan's leases with every flannelette host's public key, read from the hosts (each made there on the
    first deploy); a DeployError naming the hosts that can't encrypt, before any host is changed."""
    if not encrypted(plan):
        return plan.leases
    key = id(plan)
    if key not in _keys:
        found, problems = {}, []
        for lease in plan.leases:
            if lease.wire == WIRE_FLANNEL:
                continue
            other = host.inventory.get_host(lease.host)
            public = other.get_fact(facts.PublicKey, path=PRIVATE_KEY)
            if public is None or decode_key(public) is None:
                problems.append(f"{lease.host}: can't make or read its WireGuard key ({public or 'no answer'}); "
                                "set Backend.Encryption to off to run unencrypted")
            else:
                found[lease.host] = public
        _keys[key] = problems or found
    keys = _keys[key]
    if isinstance(keys, list):
        raise DeployError("no host was changed:\n" + "\n".join(keys))
    return tuple(replace(lease, public_key=keys.get(lease.host)) for lease in plan.leases)


def network_psk() -> Optional[str]:
    """The network's preshared key, from the operator's environment (FLANNELETTE_PSK), never from a file here."""
    text = os.environ.get(PSK_VARIABLE, "").strip()
    if text and decode_key(text) is None:
        raise DeployError(f"{PSK_VARIABLE} is not a WireGuard key (44 characters of base64, as `wg genpsk` prints)")
    return text or None


# -- the deploys -------------------------------------------------------------------


@deploy("flannelette overlay", data_defaults=flannel_inventory.HOST_DEFAULTS)
def install(inventory_file: Optional[str] = None, runtime: Optional[Path] = None):
    """Put the runtime, its files and its unit on this host; start, reload or restart it.

    Every host of the inventory is validated and planned first, once per run:
    a problem anywhere stops the run before any host is touched.
    `inventory_file` names the inventory file when pyinfra can't tell.
    """
    plan = load_plan(path=inventory_file)
    python = require_python3()
    mtu = overlay_mtu(plan)
    runtime_op = install_runtime(runtime or bundle.build_once())
    net_conf, leases = write_config(plan)
    psk = write_psk(plan)
    unit = write_unit(plan, python, psk is not None)
    write_host_files(plan, mtu)
    remember_ip_forward()
    ops.unit_follows(
        name="Restart flannelette if the runtime, net-conf or unit changed, else reload it if leases changed",
        service=UNIT_NAME,
        restart_when=ops.changed(runtime_op, net_conf, unit, *([psk] if psk is not None else [])),
        reload_when=ops.changed(leases),
        daemon_reload_when=ops.changed(unit),
    )
    systemd.service(
        name="Keep flannelette running and enabled at boot",
        service=UNIT_NAME,
        running=True,
        enabled=True,
    )


def install_runtime(pyz: Path):
    op = ops.put_atomic(name="Install the flannelette runtime (zipapp)", src=str(pyz), dest=PYZ, mode="755")
    files.link(name=f"Link {COMMAND} to the runtime", path=COMMAND, target=PYZ)
    return op


def write_config(plan: Plan) -> tuple:
    net_conf = ops.put_atomic(
        name=f"Write {NET_CONF}", src=StringIO(render.render_net_conf(plan.net_conf)), dest=NET_CONF
    )
    leases = ops.put_atomic(
        name=f"Write {LEASES} (the same on every host)",
        src=StringIO(render.render_lease_table(keyed_leases(plan))),
        dest=LEASES,
    )
    return net_conf, leases


def write_psk(plan: Plan):
    psk = network_psk() if encrypted(plan) else None
    if psk is None:
        files.file(name=f"No preshared key ({PSK_VARIABLE} unset)", path=PSK, present=False)
        return None
    return ops.put_atomic(name=f"Write the network's preshared key {PSK} (0600)", src=StringIO(psk + "\n"), dest=PSK,
                          mode="600")


def write_unit(plan: Plan, python: str, psk: bool = False):
    spec = plan.host(host.name)
    key = PRIVATE_KEY if encrypted(plan) else None
    text = render.render_unit(python, spec.public_ip, spec.iface, spec.ip_masq, key, PSK if psk else None)
    return ops.put_atomic(name=f"Write {UNIT}", src=StringIO(text), dest=UNIT)


def write_host_files(plan: Plan, mtu: int) -> None:
    ops.put_atomic(name=f"Persist IPv4 forwarding in {SYSCTL}", src=StringIO(render.render_sysctl()), dest=SYSCTL)
    conflist = render.render_conflist(plan.lease_for(host.name), mtu)
    ops.put_atomic(name=f"Write the CNI network {CONFLIST} (MTU {mtu})", src=StringIO(conflist), dest=CONFLIST)


def remember_ip_forward() -> None:
    """Record the host's IPv4 forwarding setting once, before the runtime first sets it."""
    if host.get_fact(FileContents, path=IP_FORWARD_BEFORE) is None:
        found = (host.get_fact(FileContents, path=IP_FORWARD) or ["0"])[0].strip()
        ops.put_atomic(
            name=f"Remember IPv4 forwarding as found ({found}), for teardown",
            src=StringIO(found + "\n"),
            dest=IP_FORWARD_BEFORE,
        )


# -- teardown ----------------------------------------------------------------------


@deploy("flannelette teardown")
def remove():
    """Stop and remove the overlay: the host as it was before the first deploy.

    Stopping the runtime removes what it made in the kernel (flannel0, its
    rules, cni0 once nothing is attached, /run/flannel); this removes the files.
    """
    systemd.service(name="Stop flannelette and disable it at boot", service=UNIT_NAME, running=False, enabled=False)
    unit = files.file(name=f"Remove {UNIT}", path=UNIT, present=False)
    systemd.daemon_reload(name="Forget the flannelette unit", _if=unit.did_change)
    for path in (CONFLIST, SYSCTL, NET_CONF, LEASES, PYZ, PRIVATE_KEY, PSK):
        files.file(name=f"Remove {path}", path=path, present=False)
    files.link(name=f"Remove {COMMAND}", path=COMMAND, present=False)
    files.directory(name=f"Remove {CNI_ALLOCATIONS} (host-local's addresses)", path=CNI_ALLOCATIONS, present=False)
    restore_ip_forward()
    ops.remove_empty_dirs(name="Remove the directories the deploy created, if empty", paths=CREATED_DIRS)


def restore_ip_forward() -> None:
    before = host.get_fact(FileContents, path=IP_FORWARD_BEFORE)
    if before is None:
        return
    value = before[0].strip() if before else ""
    now = (host.get_fact(FileContents, path=IP_FORWARD) or [""])[0].strip()
    if value in ("0", "1") and value != now:
        server.shell(
            name=f"Put IPv4 forwarding back as found ({value})",
            commands=[f"echo {value} > {IP_FORWARD}"],
        )
    files.file(name=f"Remove {IP_FORWARD_BEFORE}", path=IP_FORWARD_BEFORE, present=False)
