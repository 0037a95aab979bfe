"""/run/flannel/subnet.env, written the way flanneld writes it, atomically."""

from __future__ import annotations

from ipaddress import IPv4Network

from flannelette.model.files import replace_file

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
    replace_file(path, text)
