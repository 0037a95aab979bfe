"""/run/flannel/subnet.env, written the way flanneld writes it, atomically."""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Network

DEFAULT_PATH = "/run/flannel/subnet.env"


def render(network: IPv4Network, subnet: IPv4Network, mtu: int, ip_masq: bool) -> str:
    """flanneld's four lines; FLANNEL_SUBNET is the gateway (first address) with the subnet's length."""
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    )


def parse(text: str) -> dict:
    """KEY=VALUE lines as a dict, as the CNI flannel plugin reads them."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def write(path: str, text: str) -> None:
    """Replace `path` with `text` in one rename, so a reader sees the old or the new file, never half."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".subnet.env.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
