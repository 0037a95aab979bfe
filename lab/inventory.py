"""The pyinfra inventory `up` writes: `pyinfra inventory/lab.py deploys/overlay.py`."""

import os
import tempfile
from pathlib import Path

MARKER = "# Written by `python -m lab up`"


def host_data(address, key_path):
    """What pyinfra needs to reach a lab host, and the host's public address.

    Every `up` may give a host fresh SSH host keys, so known_hosts is neither
    read nor written: a rebuilt lab never trips over a stale entry. Lab hosts
    have no default route, so the overlay's interface is named.
    """
    return {
        "ssh_hostname": address,
        "ssh_user": "root",
        "ssh_key": str(key_path),
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "flannel_public_ip": address,
        "flannel_iface": "eth0",
    }


def render(lab_name, hosts, key_path):
    """Inventory text for `hosts`, a list of (name, address)."""
    lines = [
        f"{MARKER} for the lab {lab_name!r}; `python -m lab down` removes it.",
        "# The overlay's net-conf comes from inventory/group_data/all.py.",
        "",
        "nodes = [",
    ]
    for name, address in hosts:
        lines.append(f"    ({name!r}, {{")
        for key, value in host_data(address, key_path).items():
            lines.append(f"        {key!r}: {value!r},")
        lines.append("    }),")
    lines.append("]")
    return "\n".join(lines) + "\n"


def write(path, text):
    """Write atomically: a reader never sees half an inventory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def remove(path):
    """Remove an inventory the lab wrote; leave any other file alone."""
    path = Path(path)
    if path.is_file() and path.read_text().startswith(MARKER):
        path.unlink()
