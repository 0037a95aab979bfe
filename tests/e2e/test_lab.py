"""The lab itself: booted hosts that reach each other and nothing else, and a
`down` that leaves nothing behind."""

import os
from pathlib import Path

import pytest

from lab import Lab, LabError
from lab import host as hostmod
from lab import network, ssh

pytestmark = pytest.mark.e2e

# Opens /dev/net/tun and makes a TUN device: root with CAP_NET_ADMIN can.
MAKE_TUN = (
    "python3 -c \"import fcntl, os, struct; "
    "fd = os.open('/dev/net/tun', os.O_RDWR); "
    "fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'labtun0', 0x1001)); "
    "print('tun ok')\""
)


def quiet_lab(name, network):
    return Lab(name=name, network=network, log=lambda _: None)


def leftovers(lab, pids):
    """Everything of `lab` still on this machine, by kind; empty when clean."""
    prefix = f"{lab.name}-"
    links = network.shell.run(["ip", "-br", "link"]).stdout.split("\n")
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    found = {
        "netns": [ns for ns in network.netns_list() if ns.startswith(prefix)],
        "links": [ln.split()[0] for ln in links if ln.startswith(prefix)],
        "mounts": [m for m in mounts if str(lab.state_dir) in m
                   or f"flannelette-lab-{prefix}" in m],
        "processes": [pid for pid, started in pids
                      if hostmod.is_running(pid, started)],
        "state": [str(lab.state_dir)] if lab.state_dir.exists() else [],
        "nspawn": [p.name for p in Path("/run/systemd/nspawn/propagate").glob(
            prefix + "*")],
    }
    return {kind: items for kind, items in found.items() if items}


def test_three_hosts_boot_reach_each_other_and_nothing_else():
    lab = quiet_lab("labtest", "192.168.57.0/24")
    pids = []
    try:
        hosts = lab.up(hosts=3)
        pids = [(pid, started) for _, pid, started in lab.processes()]
        assert hosts == [("node1", "192.168.57.11"), ("node2", "192.168.57.12"),
                         ("node3", "192.168.57.13")]
        assert len(pids) == 3
        for name, address in hosts:
            check_host(lab, name, address, hosts)
        assert "'ssh_hostname': '192.168.57.12'" in lab.inventory_path.read_text()
    finally:
        lab.down()
    assert leftovers(lab, pids) == {}


def check_host(lab, name, address, hosts):
    client = lab.connect(name)  # paramiko, as pyinfra connects
    try:
        def run(cmd):
            return ssh.run(client, cmd, timeout=60)

        state = run("systemctl is-system-running --wait").stdout.strip()
        assert state in ("running", "degraded"), f"{name}: {state}"
        assert run("hostname").stdout.strip() == name
        tun = run(MAKE_TUN)
        assert tun.stdout.strip() == "tun ok", f"{name}: {tun.stderr}"
        for peer, peer_address in hosts + [("lab machine", "192.168.57.1")]:
            ping = run(f"ping -c1 -W2 {peer_address}")
            assert ping.returncode == 0, f"{name} cannot reach {peer}: {ping.stdout}"
        assert run("ip -4 route show default").stdout.strip() == ""
        out = run("ip route get 1.1.1.1")
        assert out.returncode != 0 and "unreachable" in out.stderr, out
    finally:
        client.close()


def test_up_again_changes_nothing_and_more_hosts_are_added():
    lab = quiet_lab("labgrow", "192.168.62.0/24")
    pids = []
    try:
        lab.up(hosts=2)
        before = lab.processes()
        pids = [(pid, started) for _, pid, started in before]
        assert lab.up(hosts=2) == [("node1", "192.168.62.11"), ("node2", "192.168.62.12")]
        assert lab.processes() == before
        lab.up(hosts=3)
        pids = [(pid, started) for _, pid, started in lab.processes()]
        assert [p for p in lab.processes() if p[0] != "node3"] == before
        assert lab.run("node3", ["ping", "-c1", "-W2", "192.168.62.11"]).returncode == 0
        assert [ok for _, _, ok in lab.status()] == [True, True, True]
    finally:
        lab.down()
    assert leftovers(lab, pids) == {}


def test_a_host_that_does_not_boot_in_time_leaves_nothing_behind():
    lab = Lab(name="labfail", network="192.168.63.0/24", boot_timeout=0,
              log=lambda _: None)
    with pytest.raises(LabError, match="node1: sshd did not answer"):
        lab.up(hosts=1)
    assert leftovers(lab, []) == {}


def test_a_failed_debootstrap_leaves_no_rootfs(tmp_path, monkeypatch):
    monkeypatch.setenv("FLANNELETTE_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("FLANNELETTE_LAB_MIRROR", "http://127.0.0.1:9/debian")
    lab = quiet_lab("labdeb", "192.168.64.0/24")
    with pytest.raises(LabError, match="debootstrap failed"):
        lab.up(hosts=1)
    assert sorted(os.listdir(tmp_path)) == [".lock", "debootstrap.log"]
    assert leftovers(lab, []) == {}


def test_the_shared_lab_fixture_is_three_booted_hosts(lab):
    assert [name for name, _ in lab.hosts()] == ["node1", "node2", "node3"]
    assert lab.run("node3", "systemctl is-system-running --wait").stdout.strip() in (
        "running", "degraded")
    assert lab.inventory_path.parent == lab.state_dir
