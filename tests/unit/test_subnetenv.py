"""subnet.env as flanneld writes it."""

import os
from ipaddress import IPv4Network

from flannelette.host import subnetenv

FLANNELD = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


def test_render_matches_flanneld():
    text = subnetenv.render(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24"), 1472, True)
    assert text == FLANNELD
    assert subnetenv.render(IPv4Network("10.0.0.0/8"), IPv4Network("10.5.0.0/24"), 1422, False).endswith(
        "FLANNEL_IPMASQ=false\n"
    )


def test_parse():
    assert subnetenv.parse(FLANNELD)["FLANNEL_SUBNET"] == "10.244.1.1/24"


def test_write_creates_directory_and_leaves_no_temp(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    subnetenv.write(str(path), "old\n")
    subnetenv.write(str(path), FLANNELD)
    assert path.read_text() == FLANNELD
    assert os.listdir(path.parent) == ["subnet.env"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
