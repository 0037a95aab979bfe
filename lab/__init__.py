"""The lab: booted Debian hosts (systemd-nspawn) on one bridge, for trying and
testing the overlay on a plain Linux machine with root and no hypervisor.

    from lab import Lab
    lab = Lab(name="t1", network="192.168.57.0/24")
    lab.up(hosts=3)          # [("node1", "192.168.57.11"), ...]
    lab.run("node2", "ip -br addr").stdout
    lab.down()
"""

from .errors import LabError
from .lab import Lab

__all__ = ["Lab", "LabError"]
