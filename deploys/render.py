"""The files the deploy puts on a host, rendered from the plan with no host at hand.

Each function returns the exact text of one file, so a test can compare it
with a golden copy and pyinfra can compare it with what a host holds.
"""

from __future__ import annotations

import json
import posixpath
from importlib import resources

import jinja2

from flannelette.host.daemon import BRIDGE_NAME as BRIDGE
from flannelette.host.healthz import DEFAULT_PORT as HEALTHZ_PORT
from flannelette.host.datapath.noise import OVERHEAD as WIREGUARD_OVERHEAD
from flannelette.host.kernel.netlink import ENCAP_OVERHEAD
from flannelette.host.paths import (  # noqa: F401 (for the deploy)
    COMMAND, CONF_DIR, LEASES, NET_CONF, PRIVATE_KEY, PSK, PYZ, UNIT_NAME,
)
from flannelette.host.subnetenv import DEFAULT_PATH as SUBNET_ENV
from flannelette.model.config import Lease, NetConf, render_leases

# Where the deploy puts things on a host (its configuration: flannelette.host.paths).
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
SYSCTL = "/etc/sysctl.d/90-flannelette.conf"
CONFLIST = "/etc/cni/net.d/10-flannelette.conflist"
# CNI spec versions the conflist is valid in, newest first: the newest one the
# host's plugins take is written (Debian 11's plugins, 0.9, stop at 0.4.0).
CNI_VERSIONS = ("1.0.0", "0.4.0")
# The runtime's health and metrics endpoint, where `flannelette status` looks.
HEALTHZ = f"127.0.0.1:{HEALTHZ_PORT}"


def _template(name: str) -> str:
    """A template of templates/, read as a resource of the installed package."""
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


_env = jinja2.Environment(
    loader=jinja2.FunctionLoader(_template),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def _render(template: str, **values) -> str:
    return _env.get_template(template).render(**values)


def render_net_conf(net_conf: NetConf) -> str:
    """net-conf.json as the inventory gave it, in flannel's format."""
    return json.dumps(net_conf.source, indent=2, sort_keys=True) + "\n"


def render_lease_table(leases) -> str:
    return render_leases(leases)


def render_unit(python: str, public_ip, iface=None, ip_masq: bool = True, private_key=None, psk=None) -> str:
    return _render(
        "flannelette.service.j2",
        python=python,
        pyz=PYZ,
        net_conf=NET_CONF,
        leases=LEASES,
        public_ip=public_ip,
        iface=iface,
        ip_masq=ip_masq,
        private_key=private_key,
        psk=psk,
        healthz=HEALTHZ,
        runtime_directory=posixpath.dirname(SUBNET_ENV).removeprefix("/run/"),
    )


def cni_version(supported) -> str:
    """The newest of CNI_VERSIONS among the plugins' `supported` ones; the newest of all where that is unknown
    (no plugins yet) or none is among them."""
    return next((v for v in CNI_VERSIONS if v in (supported or ())), CNI_VERSIONS[0])


def render_conflist(lease: Lease, mtu: int, shared: bool = False, cni_version: str = CNI_VERSIONS[0]) -> str:
    """The CNI network: containers on cni0, addresses from the host's subnet; from its first half only when
    the subnet is `shared` with podman's and Docker's allocators (allocation_slices)."""
    subnet = lease.subnet
    return _render(
        "10-flannelette.conflist.j2",
        cni_version=cni_version,
        bridge=BRIDGE,
        mtu=mtu,
        subnet=subnet,
        gateway=lease.gateway,
        range_start=lease.gateway + 1,
        range_end=allocation_slices(subnet)["cni"][-1] if shared else subnet.broadcast_address - 1,
    )


def allocation_slices(subnet) -> dict:
    """{allocator: its addresses} within one host's subnet. host-local (CNI), netavark (podman) and Docker each
    hand out addresses on their own: on one cni0 they must draw from ranges that never meet. CNI gets the
    first half, podman the third quarter, Docker the last (a CIDR: Docker's fixed-cidr)."""
    halves = list(subnet.subnets(prefixlen_diff=1))
    quarters = list(halves[1].subnets(prefixlen_diff=1))
    return {
        "cni": range_of(halves[0], first=2),
        "podman": range_of(quarters[0]),
        "docker": quarters[1],
    }


def range_of(network, first: int = 0) -> tuple:
    """(first, last) address of `network`, from its address number `first`."""
    return network[first], network[-1]


def render_sysctl() -> str:
    return _render("sysctl.conf.j2")


def overlay_mtu(link_mtu: int, encrypted: bool = False) -> int:
    """The MTU containers get: the link's, less UDP/IPv4 and, where hosts encrypt, what WireGuard adds."""
    return link_mtu - ENCAP_OVERHEAD - (WIREGUARD_OVERHEAD if encrypted else 0)
