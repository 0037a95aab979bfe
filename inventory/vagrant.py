# The Vagrantfile's VMs: `NODES=3 vagrant up`, then
#   pyinfra inventory/vagrant.py deploys/overlay.py
# Hosts node1.. at the fixed private addresses 192.168.56.11.., as vagrant's
# user with sudo and the key vagrant made for each VM. A re-created VM has new
# host keys, so known_hosts is neither read nor written.
# The overlay's net-conf comes from group_data/all.py.

import os
from pathlib import Path

# Where vagrant keeps its machines: VAGRANT_DOTFILE_PATH, as vagrant reads it, or .vagrant.
_MACHINES = Path(__file__).resolve().parent.parent / os.environ.get("VAGRANT_DOTFILE_PATH", ".vagrant") / "machines"


def _private_key(name):
    """The key `vagrant up` made for VM `name`, under whichever provider ran it."""
    providers = [os.environ.get("VAGRANT_DEFAULT_PROVIDER"), "libvirt", "virtualbox"]
    for provider in filter(None, providers):
        key = _MACHINES / name / provider / "private_key"
        if key.exists():
            return str(key)
    return str(_MACHINES / name / "libvirt" / "private_key")


nodes = [
    (f"node{i}", {
        "ssh_hostname": f"192.168.56.{10 + i}",
        "ssh_user": "vagrant",
        "ssh_key": _private_key(f"node{i}"),
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "_sudo": True,
        "flannel_public_ip": f"192.168.56.{10 + i}",
        "flannel_iface": "eth1",
    })
    for i in range(1, int(os.environ.get("NODES", "3")) + 1)
]
