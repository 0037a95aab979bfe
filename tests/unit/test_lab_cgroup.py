"""The lab's per-host cgroups and its container settings, on plain directories."""

import io
import os
import tarfile

from lab import cgroup, containers, host, rootfs
from lab.plan import make_plan

MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_cgroup2_is_found_on_a_hybrid_machine(tmp_path):
    (tmp_path / "mounts").write_text(MOUNTS)
    assert str(cgroup.hierarchy(tmp_path / "mounts")) == "/sys/fs/cgroup/unified"
    (tmp_path / "mounts").write_text(MOUNTS.replace("cgroup2 ", "cgroup "))
    assert cgroup.hierarchy(tmp_path / "mounts") is None


def test_a_hosts_group_is_named_after_its_namespace(tmp_path):
    node2 = make_plan("ctr", "192.168.63.0/24").host(2)
    group = cgroup.group_of(node2.netns, root=tmp_path)
    assert group == tmp_path / "flannelette-lab" / "ctr-node2"
    cgroup.create(group)
    cgroup.create(tmp_path / "flannelette-lab" / "other-node1")
    assert cgroup.groups("ctr-node", root=tmp_path) == ["ctr-node2"]


def test_pids_are_read_from_the_group_and_below(tmp_path):
    (tmp_path / "payload/init.scope").mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("10\n")
    (tmp_path / "payload/init.scope/cgroup.procs").write_text("11\n12\n")
    assert sorted(cgroup.pids(tmp_path)) == [10, 11, 12]


def test_nspawn_gets_what_podman_and_docker_need():
    cmd = host.nspawn_command(make_plan().host(1), "/x/root")
    assert "--system-call-filter=add_key keyctl bpf" in cmd
    assert "--tmpfs=/var/lib/containers" in cmd and "--tmpfs=/var/lib/docker" in cmd
    assert containers.NSPAWN_ENV == {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}


def test_the_busybox_image_has_users_groups_and_applets():
    with tarfile.open(fileobj=io.BytesIO(containers.image_tar(b"\x7fELF"))) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("etc/passwd").read().startswith(b"root:x:0:0:")
        assert b"root:x:0:" in tar.extractfile("etc/group").read()
    assert names["bin/nc"].linkname == "busybox" and names["bin/busybox"].mode == 0o755


def test_configure_leaves_docker_off_and_imports_podmans_image_at_boot(tmp_path):
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "docker.service").symlink_to("/lib/systemd/system/docker.service")
    (tmp_path / "bin").mkdir()
    (tmp_path / "etc/ssh").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"\x7fELF")
    rootfs.configure(tmp_path)
    assert not (wants / "docker.service").is_symlink()
    assert (wants / "lab-podman-image.service").is_symlink()
    assert 'runtime = "runc"' in (tmp_path / "etc/containers/containers.conf").read_text()
    assert (tmp_path / containers.IMAGE_TAR).stat().st_size > 0


def test_prune_keeps_another_recipe_that_was_used_lately(tmp_path):
    keep, recent, old = (tmp_path / f"{rootfs.SUITE}-{n}" for n in ("a", "b", "c"))
    for d in (keep, recent, old):
        d.mkdir()
    os.utime(old, (0, 0))
    rootfs._prune(tmp_path, keep=keep, suite=rootfs.SUITE)
    assert keep.is_dir() and recent.is_dir() and not old.exists()
