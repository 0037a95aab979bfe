"""The lab itself: booted hosts that reach each other and nothing else, and a
`down` that leaves nothing behind."""

import ipaddress
import os
import signal
import time
from pathlib import Path

import pytest
from e2e_labs import E2E_SCRATCH_NETWORK, scratch_lab_name

from lab import Lab, LabError, cgroup
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


def quiet_lab(suffix, **kwargs):
    return Lab(name=scratch_lab_name(suffix), network=E2E_SCRATCH_NETWORK,
               log=lambda _: None, **kwargs)


def scratch_address(index):
    """The scratch network's address .`index`."""
    return str(ipaddress.IPv4Network(E2E_SCRATCH_NETWORK)[index])


def guest_processes(lab):
    """PIDs in the lab's host cgroups, or whose root directory is one of its
    hosts': a guest's processes by what the kernel says, not by name."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            groups = (entry / "cgroup").read_text() if entry.name.isdigit() else ""
            root = os.readlink(entry / "root") if groups else ""
        except OSError:  # gone while we looked
            continue
        if f"/{cgroup.PARENT}/{lab.name}-" in groups or root.startswith(f"{lab.state_dir}/"):
            found.append(int(entry.name))
    return found


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
        "guest processes": guest_processes(lab),
        "cgroups": cgroup.groups(prefix),
        "state": [str(lab.state_dir)] if lab.state_dir.exists() else [],
        "nspawn": [p.name for p in Path("/run/systemd/nspawn/propagate").glob(
            prefix + "*")],
    }
    return {kind: items for kind, items in found.items() if items}


def test_three_hosts_boot_reach_each_other_and_nothing_else():
    lab = quiet_lab("t")
    pids = []
    try:
        hosts = lab.up(hosts=3)
        pids = [(pid, started) for _, pid, started in lab.processes()]
        assert hosts == [("node1", scratch_address(11)), ("node2", scratch_address(12)),
                         ("node3", scratch_address(13))]
        assert len(pids) == 3
        for name, address in hosts:
            check_host(lab, name, address, hosts)
        assert f"'ssh_hostname': '{scratch_address(12)}'" in lab.inventory_path.read_text()
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
        for peer, peer_address in hosts + [("lab machine", scratch_address(1))]:
            ping = run(f"ping -c1 -W2 {peer_address}")
            assert ping.returncode == 0, f"{name} cannot reach {peer}: {ping.stdout}"
        assert run("ip -4 route show default").stdout.strip() == ""
        out = run("ip route get 1.1.1.1")
        assert out.returncode != 0 and "unreachable" in out.stderr, out
    finally:
        client.close()


def test_up_again_changes_nothing_and_more_hosts_are_added():
    lab = quiet_lab("g")
    pids = []
    try:
        lab.up(hosts=2)
        before = lab.processes()
        pids = [(pid, started) for _, pid, started in before]
        assert lab.up(hosts=2) == [("node1", scratch_address(11)), ("node2", scratch_address(12))]
        assert lab.processes() == before
        lab.up(hosts=3)
        pids = [(pid, started) for _, pid, started in lab.processes()]
        assert [p for p in lab.processes() if p[0] != "node3"] == before
        assert lab.run("node3", ["ping", "-c1", "-W2", scratch_address(11)]).returncode == 0
        assert [ok for _, _, ok in lab.status()] == [True, True, True]
    finally:
        lab.down()
    assert leftovers(lab, pids) == {}


def test_a_host_that_does_not_boot_in_time_leaves_nothing_behind():
    lab = quiet_lab("f", boot_timeout=0)
    with pytest.raises(LabError, match="node1: sshd did not answer"):
        lab.up(hosts=1)
    assert leftovers(lab, []) == {}


def test_a_failed_debootstrap_leaves_no_rootfs(tmp_path, monkeypatch):
    monkeypatch.setenv("FLANNELETTE_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("FLANNELETTE_LAB_MIRROR", "http://127.0.0.1:9/debian")
    lab = quiet_lab("d")
    with pytest.raises(LabError, match="debootstrap failed"):
        lab.up(hosts=1)
    assert sorted(os.listdir(tmp_path)) == [".lock", "debootstrap.log"]
    assert leftovers(lab, []) == {}


def test_the_shared_lab_fixture_is_three_booted_hosts(lab):
    assert [name for name, _ in lab.hosts()] == ["node1", "node2", "node3"]
    assert lab.run("node3", "systemctl is-system-running --wait").stdout.strip() in (
        "running", "degraded")
    assert lab.inventory_path.parent == lab.state_dir


def test_down_ends_a_guest_whose_systemd_nspawn_was_killed():
    """Killed, systemd-nspawn leaves its guest running, reparented to PID 1
    in a namespace of its own: the host's cgroup still holds it."""
    lab = quiet_lab("k")
    try:
        lab.up(hosts=1)
        [(_, pid, started)] = lab.processes()
        os.kill(pid, signal.SIGKILL)
        while hostmod.is_running(pid, started):
            time.sleep(0.1)
        assert guest_processes(lab) != []
    finally:
        lab.down()
    assert leftovers(lab, []) == {}
