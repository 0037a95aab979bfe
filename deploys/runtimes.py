"""The host's container runtimes on the overlay (host data flannel_container_runtime).

"cni" is the conflist that containerd, CRI-O and Nomad read. podman 4 (netavark)
and Docker read no conflist: podman gets a network definition of its own, on
cni0 with the host's subnet; Docker gets "bridge": "cni0" and the MTU merged
into its daemon.json. Before a file is first changed, what was there is kept
in the state directory, so that teardown removes exactly what the deploy added.
"""

from __future__ import annotations

import hashlib
import json
from io import StringIO
from typing import Optional

from pyinfra import host
from pyinfra.facts.server import Which
from pyinfra.operations import files, systemd

from flannelette.deploy import ops
from flannelette.deploy.render import allocation_slices
from flannelette.deploy.facts import FileText

RUNTIMES = ("cni", "podman", "docker")
BRIDGE = "cni0"
NETWORK_NAME = "flannelette"
PODMAN_NETWORK = f"/etc/containers/networks/{NETWORK_NAME}.json"
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
# Docker needs cni0 to exist when it starts: the runtime makes it.
DOCKER_DROPIN = "/etc/systemd/system/docker.service.d/flannelette.conf"
DOCKER_DROPIN_TEXT = "[Unit]\n# cni0, Docker's bridge, is made by flannelette\nWants=flannelette.service\nAfter=flannelette.service\n"
# The program that says the runtime is installed, and its Debian package.
COMMANDS = {"podman": ("podman", "podman"), "docker": ("dockerd", "docker.io")}
DOCKER_KEYS = ("bridge", "mtu", "fixed-cidr")
# Docker refuses "bip" beside "bridge": the bridge's own address is the gateway.
DOCKER_CONFLICTS = ("bip",)


def wanted(data) -> tuple:
    """The runtimes named by flannel_container_runtime (a name or a list), in a fixed order."""
    value = data.get("flannel_container_runtime") or "cni"
    names = [value] if isinstance(value, str) else list(value)
    return tuple(r for r in RUNTIMES if r in names)


def render_podman_network(subnet, gateway, mtu: int) -> str:
    """podman's network file, as `podman network create` writes it, on cni0, leasing from podman's slice."""
    start, end = allocation_slices(subnet)["podman"]
    network = {
        "name": NETWORK_NAME,
        "id": hashlib.sha256(NETWORK_NAME.encode()).hexdigest(),
        "driver": "bridge",
        "network_interface": BRIDGE,
        "subnets": [{"subnet": str(subnet), "gateway": str(gateway),
                     "lease_range": {"start_ip": str(start), "end_ip": str(end)}}],
        "ipv6_enabled": False,
        "internal": False,
        "dns_enabled": False,
        "options": {"mtu": str(mtu)},
        "ipam_options": {"driver": "host-local"},
    }
    return json.dumps(network, indent=5) + "\n"


def docker_keys(mtu: int, subnet) -> dict:
    """What the deploy sets in daemon.json (DOCKER_KEYS); fixed-cidr: Docker's slice of the subnet."""
    return dict(zip(DOCKER_KEYS, (BRIDGE, mtu, str(allocation_slices(subnet)["docker"]))))


def parse_daemon_json(text: Optional[str], where: str) -> dict:
    """daemon.json's settings ({} when absent or empty); ValueError naming the file when it can't be used."""
    if not (text or "").strip():
        return {}
    try:
        settings = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where}: not JSON ({e}); fix it or remove it") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: not a JSON object")
    conflicts = [k for k in DOCKER_CONFLICTS if k in settings]
    if conflicts:
        raise ValueError(f"{where}: {', '.join(conflicts)} {settings[conflicts[0]]!r}: Docker takes no bip beside "
                         f'"bridge": "{BRIDGE}" (the overlay sets the subnet); remove it')
    return settings


def merge_daemon_json(settings: dict, mtu: int, subnet) -> str:
    return json.dumps({**settings, **docker_keys(mtu, subnet)}, indent=2) + "\n"


def unmerge_daemon_json(now: dict, before_text: Optional[str]) -> Optional[str]:
    """daemon.json after teardown: the deploy's keys taken out or put back as they were, the operator's later
    changes kept; the original bytes when nothing else changed; None when there was no file and nothing is left."""
    before = json.loads(before_text) if (before_text or "").strip() else {}
    ours = DOCKER_KEYS
    restored = {k: v for k, v in now.items() if k not in ours}
    restored.update({k: before[k] for k in ours if k in before})
    if restored == before:
        return before_text
    return json.dumps(restored, indent=2) + "\n"


# -- on the host ------------------------------------------------------------------


def remembered(path: str, state_dir: str) -> str:
    return f"{state_dir}/before{path.replace('/', '.')}"


def remember(path: str, state_dir: str) -> None:
    """Keep `path` as found ({"text": ...}, or {"text": null} when absent), once, before the deploy first changes it."""
    record = remembered(path, state_dir)
    if host.get_fact(FileText, path=record) is not None:
        return
    text = host.get_fact(FileText, path=path)
    ops.put_atomic(name=f"Remember {path} as found, for teardown", src=StringIO(json.dumps({"text": text}) + "\n"),
                   dest=record, mode="600")


def recalled(path: str, state_dir: str):
    """(True, text or None) from the record of `path`; (False, None) when the deploy never changed it."""
    record = host.get_fact(FileText, path=remembered(path, state_dir))
    if record is None:
        return False, None
    return True, json.loads(record)["text"]


def require_installed(runtimes) -> None:
    """A ValueError naming the host and the package, for a runtime the host doesn't have."""
    for runtime in runtimes:
        if runtime in COMMANDS and not host.get_fact(Which, command=COMMANDS[runtime][0]):
            command, package = COMMANDS[runtime]
            raise ValueError(f"{host.name}: flannel_container_runtime {runtime!r}: {command} is not installed "
                             f"(apt-get install {package}), or remove {runtime!r} from flannel_container_runtime")


def current_daemon_json() -> dict:
    return parse_daemon_json(host.get_fact(FileText, path=DOCKER_DAEMON_JSON), f"{host.name}: {DOCKER_DAEMON_JSON}")


def configure(runtimes, lease, mtu: int, state_dir: str) -> None:
    if "podman" in runtimes:
        remember(PODMAN_NETWORK, state_dir)
        ops.put_atomic(name=f"Write podman's network {NETWORK_NAME} on {BRIDGE} ({PODMAN_NETWORK}, MTU {mtu})",
                       src=StringIO(render_podman_network(lease.subnet, lease.gateway, mtu)), dest=PODMAN_NETWORK)
    if "docker" in runtimes:
        settings = current_daemon_json()
        remember(DOCKER_DAEMON_JSON, state_dir)
        dropin = ops.put_atomic(name=f"Start Docker after flannelette ({DOCKER_DROPIN})",
                                src=StringIO(DOCKER_DROPIN_TEXT), dest=DOCKER_DROPIN)
        daemon_json = ops.put_atomic(name=f'Set "bridge": "{BRIDGE}", "mtu": {mtu}, "fixed-cidr" in {DOCKER_DAEMON_JSON}',
                                     src=StringIO(merge_daemon_json(settings, mtu, lease.subnet)),
                                     dest=DOCKER_DAEMON_JSON)
        systemd.daemon_reload(name="Read Docker's drop-in", _if=dropin.did_change)
        systemd.service(name="Restart Docker on its new bridge", service="docker", restarted=True,
                        _if=daemon_json.did_change)


def remove(state_dir: str) -> None:
    """Put back every file `configure` changed, as the records say it was."""
    changed, before = recalled(PODMAN_NETWORK, state_dir)
    if changed:
        restore(PODMAN_NETWORK, before, state_dir)
    changed, before = recalled(DOCKER_DAEMON_JSON, state_dir)
    if changed:
        restored = unmerge_daemon_json(current_daemon_json(), before)
        op = restore(DOCKER_DAEMON_JSON, restored, state_dir)
        dropin = files.file(name=f"Remove {DOCKER_DROPIN}", path=DOCKER_DROPIN, present=False)
        systemd.daemon_reload(name="Forget Docker's drop-in", _if=dropin.did_change)
        systemd.service(name="Restart Docker on its own bridge again", service="docker", restarted=True,
                        _if=op.did_change)


def restore(path: str, text: Optional[str], state_dir: str):
    if text is None:
        op = files.file(name=f"Remove {path} (the deploy made it)", path=path, present=False)
    else:
        op = ops.put_atomic(name=f"Put {path} back as it was", src=StringIO(text), dest=path)
    files.file(name=f"Forget the record of {path}", path=remembered(path, state_dir), present=False)
    return op
