# An example fleet of three hosts. Copy it, put your hosts in, and run
#   flannelette validate inventory/prod.py
#   flannelette plan inventory/prod.py --write   (allocates subnets into prod.leases.json)
#   pyinfra inventory/prod.py deploys/overlay.py
#
# Per-host keys (all optional):
#   flannel_public_ip  the address peers send the overlay's UDP to; defaults to
#                      ssh_hostname (or the host name) when that is an IPv4 address
#   flannel_subnet     a static subnet for this host, inside SubnetMin..SubnetMax;
#                      hosts without one get theirs from prod.leases.json
#   flannel_iface      the public interface, whose MTU - 28 is the overlay MTU;
#                      defaults to the interface holding flannel_public_ip
#   flannel_ip_masq    masquerade traffic leaving the overlay (default True)
#
# The network itself (flannel_net_conf) is in group_data/all.py.

hosts = [
    ("node1", {
        "ssh_hostname": "192.168.56.11",
        "flannel_iface": "eth1",
        "flannel_subnet": "10.244.1.0/24",
    }),
    ("node2", {
        "ssh_hostname": "192.168.56.12",
        "flannel_iface": "eth1",
    }),
    ("node3.example.net", {
        "flannel_public_ip": "192.168.56.13",
        "flannel_iface": "eth1",
    }),
]
