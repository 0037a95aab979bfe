"""A tiny initramfs for the lab's VMs: busybox, the virtio drivers Debian's
kernel has as modules, and an init that loads them and boots the root disk.

Pure but for reading files, so the archive and the load order are tested
without root. The archive is cpio's "newc" format, the one the kernel reads.
"""

import gzip
import posixpath
from pathlib import Path

# The disk and the NIC a VM gets; ext4 is built into Debian's kernel.
DRIVERS = ("virtio_pci", "virtio_blk", "virtio_net")
# What the init prints once the kernel runs it: a hung kernel never gets here.
MARKER = "lab-init: kernel up"
INIT = """#!/bin/busybox sh
# Loads the virtio drivers, mounts the root= disk and hands over to its init.
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
exec >/dev/console 2>&1
echo "{marker}"
{insmods}
for word in $(cat /proc/cmdline); do case "$word" in root=*) root=${{word#root=}} ;; esac; done
for i in $(seq 100); do [ -b "$root" ] && break; sleep 0.1; done
mount -t ext4 -o rw "$root" /root || {{ echo "lab-init: cannot mount $root"; exec sh; }}
mount --move /dev /root/dev
umount /proc
exec switch_root /root /sbin/init
"""
NEWC_MAGIC = b"070701"
S_IFDIR, S_IFREG, S_IFCHR, S_IFLNK = 0o040000, 0o100000, 0o020000, 0o120000


def parse_modules_dep(text):
    """{module name: (its path, [paths it needs])} from depmod's modules.dep."""
    table = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, needs = line.split(":", 1)
        table[module_name(path)] = (path.strip(), needs.split())
    return table


def module_name(path):
    """kernel/drivers/net/virtio_net.ko -> virtio_net."""
    return posixpath.basename(path.strip()).split(".ko")[0].replace("-", "_")


def load_order(table, wanted):
    """Module paths for `wanted` and everything they need, each after its needs."""
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        path, needs = table[name]
        for need in needs:
            visit(module_name(need))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def init_script(modules):
    insmods = "\n".join(f"insmod /lib/modules/{path}" for path in modules)
    return INIT.format(marker=MARKER, insmods=insmods)


def entries(busybox, modules_dir, modules):
    """[(path in the archive, mode, bytes or None)]: the initramfs's contents.
    A mode's type bits say what it is; a device entry's bytes are its (major, minor)."""
    found = [("bin", S_IFDIR | 0o755, None), ("dev", S_IFDIR | 0o755, None),
             ("dev/console", S_IFCHR | 0o600, (5, 1)), ("proc", S_IFDIR | 0o755, None),
             ("root", S_IFDIR | 0o755, None),
             ("bin/busybox", S_IFREG | 0o755, Path(busybox).read_bytes()),
             ("init", S_IFREG | 0o755, init_script(modules).encode())]
    dirs = sorted({posixpath.dirname(f"lib/modules/{m}") for m in modules})
    for d in _with_parents(dirs):
        found.append((d, S_IFDIR | 0o755, None))
    for m in modules:
        found.append((f"lib/modules/{m}", S_IFREG | 0o644, (Path(modules_dir) / m).read_bytes()))
    return found


def _with_parents(dirs):
    every = set()
    for d in dirs:
        while d:
            every.add(d)
            d = posixpath.dirname(d)
    return sorted(every)


def newc(items):
    """A cpio "newc" archive of `items` (see entries), with its trailer."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(items + [("TRAILER!!!", 0, None)], start=1):
        device = data if mode & 0o170000 == S_IFCHR else (0, 0)
        body = data if isinstance(data, bytes) else b""
        fields = [ino, mode, 0, 0, 1, 0, len(body), 0, 0, device[0], device[1],
                  len(name) + 1, 0]
        out += NEWC_MAGIC + b"".join(b"%08x" % f for f in fields)
        out += name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4)
        out += body
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build(target, busybox, modules_dir, wanted=DRIVERS):
    """Write the gzipped initramfs to `target`; the modules come from
    `modules_dir` (a /lib/modules/VERSION that depmod has indexed)."""
    table = parse_modules_dep((Path(modules_dir) / "modules.dep").read_text())
    modules = load_order(table, wanted)
    Path(target).write_bytes(gzip.compress(newc(entries(busybox, modules_dir, modules)), 6))
    return modules
