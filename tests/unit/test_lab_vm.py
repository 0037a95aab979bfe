"""The VM lab's pure parts: the initramfs archive and its load order, qemu's
command line, the kernel command line that makes a VM itself."""

import base64
import gzip
from pathlib import Path

from lab import image, initramfs, qemu, rootfs
from lab.image import Image
from lab.plan import make_plan

MODULES_DEP = """\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
"""


def test_every_module_loads_after_what_it_needs_and_once():
    order = initramfs.load_order(initramfs.parse_modules_dep(MODULES_DEP), initramfs.DRIVERS)
    names = [initramfs.module_name(p) for p in order]
    assert len(names) == len(set(names)) == 9
    for path, (_, needs) in initramfs.parse_modules_dep(MODULES_DEP).items():
        if path in names:
            assert all(names.index(initramfs.module_name(n)) < names.index(path) for n in needs)


def read_newc(data):
    """[(name, mode, rdev, body)] of a newc archive, up to its trailer."""
    found, at = [], 0
    while True:
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        assert data[at:at + 6] == b"070701"
        namesize, filesize = fields[11], fields[6]
        start = at + 110
        name = data[start:start + namesize - 1].decode()
        body_at = start + namesize + (-(start + namesize) % 4)
        if name == "TRAILER!!!":
            return found
        found.append((name, fields[1], (fields[9], fields[10]), data[body_at:body_at + filesize]))
        at = body_at + filesize + (-(body_at + filesize) % 4)


def test_the_initramfs_holds_busybox_the_modules_and_an_init_that_loads_them(tmp_path):
    (tmp_path / "busybox").write_bytes(b"\x7fELF busybox")
    modules = tmp_path / "modules"
    for line in MODULES_DEP.splitlines():
        path = modules / line.split(":")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ko " + path.name.encode())
    (modules / "modules.dep").write_text(MODULES_DEP)
    order = initramfs.build(tmp_path / "initrd.img", tmp_path / "busybox", modules)
    entries = {name: (mode, rdev, body) for name, mode, rdev, body in
               read_newc(gzip.decompress((tmp_path / "initrd.img").read_bytes()))}
    assert entries["bin/busybox"][2] == b"\x7fELF busybox"
    assert entries["dev/console"][:2] == (initramfs.S_IFCHR | 0o600, (5, 1))
    init = entries["init"][2].decode()
    assert entries["init"][0] == initramfs.S_IFREG | 0o755 and initramfs.MARKER in init
    assert [line.split("/lib/modules/")[1] for line in init.splitlines() if line.startswith("insmod")] == order
    for path in order:
        assert entries[f"lib/modules/{path}"][2] == b"ko " + Path(path).name.encode()
        assert f"lib/modules/{Path(path).parent}" in entries


def test_qemu_boots_the_shared_disk_behind_a_snapshot_on_the_hosts_own_tap():
    host = make_plan("vm", "192.168.56.0/24").host(2)
    argv = qemu.command(Image(Path("/cache/vm")), host, host.veth, "tcg", "/s/console.log", "ssh-ed25519 AAAA lab\n")
    value = dict(zip(argv[1::2], argv[2::2]))
    assert argv[0] == "qemu-system-x86_64" and value["-accel"] == "tcg"
    assert "-drive" in argv and "file=/cache/vm/root.img,format=raw,if=virtio,snapshot=on" in argv
    assert "tap,id=net0,ifname=vm-n2,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=net0,mac=52:54:c0:a8:38:0c" in argv
    assert argv[argv.index("-kernel") + 1] == "/cache/vm/vmlinuz"


def test_the_kernel_command_line_names_the_vm_its_address_and_the_labs_key():
    host = make_plan("vm", "192.168.56.0/24").host(1)
    words = dict(w.split("=", 1) for w in qemu.kernel_args(host, "ssh-ed25519 AAAA lab\n").split() if "=" in w)
    assert words["root"] == "/dev/vda" and words["console"] == "ttyS0" and words["net.ifnames"] == "0"
    assert words["systemd.hostname"] == "node1" and words["lab.address"] == "192.168.56.11/24"
    assert base64.b64decode(words["lab.key"]).decode() == "ssh-ed25519 AAAA lab"


def test_every_vm_has_its_own_mac_address():
    plan = make_plan("vm", "192.168.56.0/24")
    macs = {qemu.mac_address(plan.host(i)) for i in range(1, 245)}
    assert len(macs) == 244


def test_each_suites_image_is_cached_apart_and_fetched_from_that_suites_lists(tmp_path):
    old, new = (image.image_path(tmp_path, suite) for suite in (rootfs.OLDEST_SUITE, rootfs.SUITE))
    assert old.name.startswith("vm-bullseye-") and new.name.startswith("vm-bookworm-")
    assert image.sources_list("http://m/debian", "bullseye") == \
        f"deb [signed-by={image.KEYRING}] http://m/debian bullseye main\n"
