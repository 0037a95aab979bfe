"""The overlay's deploys: validate and plan the whole inventory, then install one host.

Everything a host gets is decided before the first host is touched: the plan
is made once per run from every host of the inventory (the same code and the
same errors as `flannelette validate`), and each host's python3 and public
interface are read, not changed, before its first operation.
"""

from __future__ import annotations

import os
import posixpath
import sys
from io import StringIO
from pathlib import Path
from typing import Optional

import gevent
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.files import File, FileContents
from pyinfra.operations import files, server, systemd

from flannelette.deploy import bundle, facts, ops, pyz_main, render, runtimes
from flannelette.deploy.render import (
    COMMAND, CONF_DIR, CONFLIST, LEASES, NET_CONF, PRIVATE_KEY, PSK, PYZ, SYSCTL, UNIT, UNIT_NAME,
)
from flannelette.controller import inventory as flannel_inventory
from flannelette.host.kernel.netlink import IP_FORWARD
from flannelette.model.config import WIRE_FLANNEL, ConfigError, decode_key
from flannelette.model.plan import Plan

# Written before the runtime first turns IPv4 forwarding on, so that a
# teardown can put the host's setting back as it found it.
STATE_DIR = "/var/lib/flannelette"
IP_FORWARD_BEFORE = f"{STATE_DIR}/ip_forward.before"
# Which of CREATED_DIRS the host had before the first deploy: teardown leaves those.
# flannelette's own directories are not recorded: the key fact makes CONF_DIR
# before any record could be taken.
DIRS_BEFORE = f"{STATE_DIR}/dirs.before"
OWN_DIRS = (os.path.dirname(PYZ), CONF_DIR, STATE_DIR)
PSK_VARIABLE = "FLANNELETTE_PSK"  # the network's preshared key, from the operator's secret store
PSK_FILE_KEY = "flannel_psk_file"  # or host data naming a file that holds it
# host-local keeps the addresses it handed out here, one directory per network.
CNI_ALLOCATIONS = "/var/lib/cni/networks/flannelette"
# The unit's CacheDirectory=: the runtime's modules, unpacked and compiled (flannelette.deploy.pyz_main).
BYTECODE_CACHE = "/var/cache/flannelette"
# Directories a deploy may have created; teardown removes them only when empty,
# deepest first.
CREATED_DIRS = (
    "/etc/cni/net.d", "/etc/cni", "/var/lib/cni/networks", "/var/lib/cni",
    posixpath.dirname(runtimes.PODMAN_NETWORK), posixpath.dirname(runtimes.DOCKER_DROPIN),
    *OWN_DIRS,
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

MIN_PYTHON = pyz_main.MIN_PYTHON


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
    return plan.net_conf.encrypted


_keys: dict = {}


def keyed_leases(plan: Plan) -> tuple:
    """The plan's leases with every flannelette host's public key, read from the hosts (each made there on the
    first deploy); a DeployError naming the hosts that can't encrypt, before any host is changed.

    Every host's deploy needs every key: the first to ask reads them all, one
    host at a time in parallel, and the others wait for that one reading.
    """
    if not encrypted(plan):
        return plan.leases
    if id(plan) not in _keys:  # no greenlet switch between the test and the store: one reading per run
        _keys[id(plan)] = gevent.spawn(read_public_keys, host.state, host.inventory, plan)
    keys = _keys[id(plan)].get()
    if isinstance(keys, list):
        raise DeployError("no host was changed:\n" + "\n".join(keys))
    return plan.keyed(keys)


def read_public_keys(state, inventory, plan: Plan):
    """{host: public key} of the plan's flannelette hosts, or the problems of those that can't encrypt."""
    names = [lease.host for lease in plan.leases if lease.wire != WIRE_FLANNEL]
    readings = [gevent.spawn(_public_key, state, inventory.get_host(name)) for name in names]
    gevent.joinall(readings)
    found, problems = {}, []
    for name, reading in zip(names, readings):
        public = reading.value
        if public is None or decode_key(public) is None:
            problems.append(f"{name}: can't make or read its WireGuard key ({public or 'no answer'}); "
                            "set Backend.Encryption to off to run unencrypted")
        else:
            found[name] = public
    return problems or found


def _public_key(state, other) -> Optional[str]:
    with ctx_state.use(state), ctx_host.use(other):
        return other.get_fact(facts.PublicKey, path=PRIVATE_KEY)


def network_psk() -> Optional[str]:
    """The network's preshared key, from the operator's secret store: the environment (FLANNELETTE_PSK) or a
    file outside the deploy that host data flannel_psk_file names; the same for every host of the run."""
    text, where = os.environ.get(PSK_VARIABLE, "").strip(), PSK_VARIABLE
    path = host.data.get(PSK_FILE_KEY)
    if path:
        if text:
            raise DeployError(f"{host.name}: {PSK_VARIABLE} and {PSK_FILE_KEY} {path!r} are both set: "
                              "give the preshared key one way")
        text, where = read_psk_file(path), f"{host.name}: {PSK_FILE_KEY} {path!r}"
    if text and decode_key(text) is None:
        raise DeployError(f"{where} is not a WireGuard key (44 characters of base64, as `wg genpsk` prints)")
    first = _psks.setdefault(id(host.inventory), (text, where))  # the first host's, as the plan is once per run
    if first[0] != text:
        raise DeployError(f"{where} gives another preshared key than {first[1]}: the key is the network's, one for "
                          "every host")
    return text or None


_psks: dict = {}  # id(inventory) -> the first host's key and where it came from, for the others to match


def read_psk_file(path: str) -> str:
    """The key in the file `path` (relative to the directory pyinfra runs in), which others may not read."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text().strip()
    except OSError as e:
        raise DeployError(f"{host.name}: {PSK_FILE_KEY} {path!r}: {e.strerror}") from None
    if mode & 0o004:
        raise DeployError(f"{host.name}: {PSK_FILE_KEY} {path!r} is readable by every user (mode "
                          f"{mode & 0o777:04o}): `chmod 600` it")
    return text


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
    container_runtimes = require_container_runtimes()
    on_host = host.get_fact(facts.FileStates, paths=WRITTEN_FILES)  # once: each file below is compared by hash
    runtime_op = install_runtime(runtime or bundle.build_once(), on_host)
    net_conf, leases = write_config(plan, on_host)
    psk = write_psk(plan, on_host)
    unit = write_unit(plan, python, on_host, psk is not None)
    write_host_files(plan, mtu, on_host, container_runtimes)
    remember_ip_forward(on_host)
    remember_dirs(on_host)
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
    runtimes.configure(container_runtimes, plan.lease_for(host.name), mtu, STATE_DIR)


def require_container_runtimes() -> tuple:
    """The runtimes of flannel_container_runtime, each installed here, or a DeployError naming the host."""
    wanted = runtimes.wanted(host.data)
    try:
        runtimes.require_installed(wanted)
        if "docker" in wanted:
            runtimes.current_daemon_json()
    except ValueError as error:
        raise DeployError(f"no host was changed:\n{error}") from None
    return wanted


# Every file install() writes, read from the host in one command before the first operation.
WRITTEN_FILES = (PYZ, NET_CONF, LEASES, PSK, UNIT, SYSCTL, CONFLIST, IP_FORWARD_BEFORE, DIRS_BEFORE)


def put(name: str, src, dest: str, on_host: dict, mode: str = "644"):
    """ops.put_atomic of `src` to `dest`, against what FileStates found there."""
    return ops.put_atomic(name=name, src=src, dest=dest, mode=mode, remote=on_host.get(dest))


def install_runtime(pyz: Path, on_host: dict):
    op = put("Install the flannelette runtime (zipapp)", str(pyz), PYZ, on_host, mode="755")
    files.link(name=f"Link {COMMAND} to the runtime", path=COMMAND, target=PYZ)
    return op


def write_config(plan: Plan, on_host: dict) -> tuple:
    net_conf = put(f"Write {NET_CONF}", StringIO(render.render_net_conf(plan.net_conf)), NET_CONF, on_host)
    leases = put(f"Write {LEASES} (the same on every host)", StringIO(render.render_lease_table(keyed_leases(plan))),
                 LEASES, on_host)
    return net_conf, leases


def write_psk(plan: Plan, on_host: dict):
    psk = network_psk() if encrypted(plan) else None
    if psk is None:
        ops.absent(name=f"No preshared key ({PSK_VARIABLE} and {PSK_FILE_KEY} unset)", path=PSK,
                   present=PSK in on_host)
        return None
    return put(f"Write the network's preshared key {PSK} (0600)", StringIO(psk + "\n"), PSK, on_host, mode="600")


def write_unit(plan: Plan, python: str, on_host: dict, psk: bool = False):
    spec = plan.host(host.name)
    key = PRIVATE_KEY if encrypted(plan) else None
    text = render.render_unit(python, spec.public_ip, spec.iface, spec.ip_masq, key, PSK if psk else None)
    return put(f"Write {UNIT}", StringIO(text), UNIT, on_host)


def write_host_files(plan: Plan, mtu: int, on_host: dict, container_runtimes=("cni",)) -> None:
    put(f"Persist IPv4 forwarding in {SYSCTL}", StringIO(render.render_sysctl()), SYSCTL, on_host)
    shared = container_runtimes != ("cni",)  # another allocator on cni0: CNI keeps to its slice
    version = render.cni_version(host.get_fact(facts.CniVersions))
    conflist = render.render_conflist(plan.lease_for(host.name), mtu, shared, cni_version=version)
    put(f"Write the CNI network {CONFLIST} (MTU {mtu})", StringIO(conflist), CONFLIST, on_host)


def remember_ip_forward(on_host: dict) -> None:
    """Record the host's IPv4 forwarding setting once, before the runtime first sets it."""
    if IP_FORWARD_BEFORE not in on_host:
        found = (host.get_fact(FileContents, path=IP_FORWARD) or ["0"])[0].strip()
        put(f"Remember IPv4 forwarding as found ({found}), for teardown", StringIO(found + "\n"), IP_FORWARD_BEFORE,
            on_host)


def remember_dirs(on_host: dict) -> None:
    """Record, once, which of the directories a deploy may create the host had already."""
    if DIRS_BEFORE not in on_host:
        found = host.get_fact(facts.DirectoryEntries, paths=list(CREATED_DIRS))
        put("Remember which directories were there, for teardown",
            StringIO("".join(f"{path}\n" for path in CREATED_DIRS if path in found and path not in OWN_DIRS)),
            DIRS_BEFORE, on_host)


# -- teardown ----------------------------------------------------------------------


@deploy("flannelette teardown")
def remove():
    """Stop and remove the overlay: the host as it was before the first deploy.

    A stop keeps flannel0, its route, the rules and cni0 for the next start;
    `flannelette teardown` removes them (cni0 once nothing is attached), then
    this removes the files.
    """
    systemd.service(name="Stop flannelette and disable it at boot", service=UNIT_NAME, running=False, enabled=False)
    if host.get_fact(File, path=PYZ):  # the runtime is there to take down what it made: a second run has none
        server.shell(
            name="Remove flannel0, its route, the rules and an idle cni0",
            commands=[f"python3 {PYZ} teardown"],
        )
    unit = files.file(name=f"Remove {UNIT}", path=UNIT, present=False)
    systemd.daemon_reload(name="Forget the flannelette unit", _if=unit.did_change)
    for path in (CONFLIST, SYSCTL, NET_CONF, LEASES, PYZ, PRIVATE_KEY, PSK):
        files.file(name=f"Remove {path}", path=path, present=False)
    files.link(name=f"Remove {COMMAND}", path=COMMAND, present=False)
    files.directory(name=f"Remove {CNI_ALLOCATIONS} (host-local's addresses)", path=CNI_ALLOCATIONS, present=False)
    files.directory(name=f"Remove {BYTECODE_CACHE} (the runtime's bytecode)", path=BYTECODE_CACHE, present=False)
    restore_ip_forward()
    runtimes.remove(STATE_DIR)
    record = host.get_fact(FileContents, path=DIRS_BEFORE)
    files.file(name=f"Remove {DIRS_BEFORE}", path=DIRS_BEFORE, present=False)
    # Without a record (torn down already, or never deployed) only flannelette's own directories are its.
    created = OWN_DIRS if record is None else [path for path in CREATED_DIRS if path not in record]
    ops.remove_empty_dirs(name="Remove the directories the deploy created, if empty", paths=created)


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
