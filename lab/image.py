"""The VM image: the lab's cached rootfs of one Debian suite with that suite's
cloud kernel, booted directly by qemu (kernel, initramfs, ext4 root disk).
Built once per suite, cached beside the rootfs, shared read-only by every VM
of that suite (each writes to a snapshot).

Every VM boots the same disk; what makes one VM itself (hostname, address, the
lab's SSH key) comes from its kernel command line, read by a unit in the guest.
The SSH host keys are made once, at build time.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import host as hostmod
from . import initramfs, rootfs, shell
from .errors import LabError

KERNEL_PACKAGE = "linux-image-cloud-amd64"
# kmod: the guest's kernel loads tun, bridge, veth and netfilter modules on
# demand through modprobe, which the nspawn lab never needed.
EXTRA_PACKAGES = ("kmod",)
BUSYBOX_PACKAGE = "busybox-static"
SETUP_SCRIPT = """#!/bin/sh
# This VM's address and the lab's SSH key, from the kernel command line
# (lab.address=CIDR lab.key=BASE64); the hostname comes from systemd.hostname=.
set -e
for word in $(cat /proc/cmdline); do
  case "$word" in
    lab.address=*) address=${word#lab.address=} ;;
    lab.key=*) key=${word#lab.key=} ;;
  esac
done
ip link set lo up
ip addr replace "$address" dev eth0
ip link set eth0 up
printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n::1\\t\\tlocalhost ip6-localhost ip6-loopback\\n' "$(hostname)" > /etc/hosts
mkdir -p -m 700 /root/.ssh
echo "$key" | base64 -d > /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
"""
SETUP_UNIT = """[Unit]
Description=The lab VM's address and SSH key, from the kernel command line
After=local-fs.target
Before=network-pre.target ssh.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-vm-setup

[Install]
WantedBy=multi-user.target
"""
FSTAB = "/dev/vda / ext4 rw 0 0\n"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Room on the root disk for the deploy, containers and logs; the file is sparse.
HEADROOM_MIB = 1024


@dataclass(frozen=True)
class Image:
    directory: Path

    @property
    def kernel(self):
        return self.directory / "vmlinuz"

    @property
    def initrd(self):
        return self.directory / "initrd.img"

    @property
    def disk(self):
        return self.directory / "root.img"

    @property
    def kernel_version(self):
        return (self.directory / "kernel-version").read_text().strip()


def recipe_id(suite=rootfs.SUITE):
    recipe = "\n".join([rootfs.recipe_id(suite), KERNEL_PACKAGE, *EXTRA_PACKAGES, BUSYBOX_PACKAGE,
                        initramfs.INIT, *initramfs.DRIVERS, SETUP_SCRIPT, SETUP_UNIT, FSTAB])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def image_path(cache=None, suite=rootfs.SUITE):
    return (cache or rootfs.cache_dir()) / f"vm-{suite}-{recipe_id(suite)}"


def ensure(log=print, suite=rootfs.SUITE):
    """The cached VM image of `suite`, built first (from its cached rootfs) if there is none."""
    lower = rootfs.ensure(log=log, suite=suite)
    cache = rootfs.cache_dir()
    with rootfs.locked(cache / ".lock"):
        target = image_path(cache, suite)
        if (target / "root.img").is_file():
            return Image(target)
        log(f"building the Debian {suite} VM image in {target} (once; later runs reuse it)")
        started = time.monotonic()
        build(cache, lower, target, suite=suite)
        log(f"VM image ready in {time.monotonic() - started:.0f}s")
        for old in cache.glob(f"vm-{suite}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return Image(target)


def build(cache, lower, target, extra_packages=(), customize=None, suite=rootfs.SUITE):
    """The image in directory `target`, from the rootfs `lower` of `suite`. A
    variant of it (lab.box) names `extra_packages` to download and a
    `customize(root, debs)` that changes the tree before it becomes the disk."""
    tmp = Path(tempfile.mkdtemp(prefix=".build-vm-", dir=cache))
    try:
        apt = apt_options(tmp / "apt", suite)
        packages = [kernel_package(apt), *EXTRA_PACKAGES, BUSYBOX_PACKAGE, *extra_packages]
        debs = download(tmp / "debs", packages, apt)
        out = tmp / "out"
        out.mkdir()
        root = hostmod.mount_layer(lower, tmp / "layer", "flannelette-lab-vm-image")
        version = install_kernel(root, debs)
        configure(root)
        if customize:
            customize(root, debs)
        shutil.copy(root / "boot" / f"vmlinuz-{version}", out / "vmlinuz")
        busybox = extract(debs[BUSYBOX_PACKAGE], tmp / "busybox") / "bin/busybox"
        initramfs.build(out / "initrd.img", busybox, root / "lib/modules" / version)
        make_disk(root, out / "root.img")
        (out / "kernel-version").write_text(version + "\n")
        os.rename(out, target)
    except OSError as err:
        raise LabError(f"building the VM image in {tmp}: {err}") from None
    finally:
        rootfs.remove_tree(tmp)


def sources_list(mirror, suite):
    return f"deb [signed-by={KEYRING}] {mirror} {suite} main\n"


def apt_options(directory, suite):
    """apt's options for package lists of `suite` alone, kept in `directory`
    (filled here by apt-get update), whatever suite this machine runs."""
    lists = directory / "lists"
    (lists / "partial").mkdir(parents=True)
    (directory / "sources.list.d").mkdir()
    (directory / "sources.list").write_text(sources_list(rootfs.mirror(suite=suite), suite))
    for path in (directory, lists, lists / "partial"):
        os.chown(path, _apt_uid(), 0)  # apt fetches as _apt where it can
    options = ["-o", f"Dir::Etc::SourceList={directory / 'sources.list'}",
               "-o", f"Dir::Etc::SourceParts={directory / 'sources.list.d'}",
               "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={directory / 'cache'}",
               "-o", "Acquire::Languages=none"]
    proc = shell.run(["apt-get", *options, "update", "-q"], check=False, timeout=600)
    if proc.returncode != 0:
        raise LabError(f"apt-get update of Debian {suite}: {proc.stderr.strip()}")
    return options


def kernel_package(apt):
    """The versioned kernel package the cloud kernel metapackage points at now."""
    out = shell.run(["apt-cache", *apt, "show", "--no-all-versions", KERNEL_PACKAGE]).stdout
    for line in out.splitlines():
        if line.startswith("Depends:"):
            return line.split(":", 1)[1].split(",")[0].split()[0]
    raise LabError(f"apt-cache show {KERNEL_PACKAGE}: no Depends line")


def download(directory, packages, apt):
    """{package: its .deb}, fetched by apt from Debian's registry."""
    directory.mkdir(parents=True)
    os.chown(directory, _apt_uid(), 0)  # apt downloads as _apt where it can
    proc = shell.run(["apt-get", *apt, "download", "-q", *packages], check=False, cwd=directory, timeout=600)
    if proc.returncode != 0:
        raise LabError(f"apt-get download {' '.join(packages)}: {proc.stderr.strip()} "
                       "(apt-get update may help)")
    found = {}
    for deb in directory.glob("*.deb"):
        name = deb.name.split("_")[0]
        found[name] = deb
    return found


def _apt_uid():
    try:
        import pwd
        return pwd.getpwnam("_apt").pw_uid
    except KeyError:
        return 0


def extract(deb, root):
    """Unpack a .deb's files into `root` as dpkg would, keeping a usr-merged
    root's /bin, /sbin and /lib symlinks (the packages still ship those paths)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)],
                         stdin=fsys.stdout, capture_output=True, text=True)
    fsys.stdout.close()
    if fsys.wait() != 0 or tar.returncode != 0:
        raise LabError(f"unpacking {deb}: {tar.stderr.strip()}")
    return Path(root)


def install_kernel(root, debs):
    """The kernel, its modules (indexed by depmod) and kmod into `root`; the kernel's version."""
    kernel = next(deb for name, deb in debs.items() if name.startswith("linux-image-"))
    for deb in [kernel] + [debs[p] for p in EXTRA_PACKAGES]:
        extract(deb, root)
    versions = sorted(p.name for p in (root / "lib/modules").iterdir())
    if len(versions) != 1:
        raise LabError(f"{kernel}: expected one kernel in lib/modules, found {versions}")
    shell.run(["chroot", str(root), "depmod", "-a", versions[0]])
    return versions[0]


def configure(root):
    """The guest unit that makes a VM itself, fstab, and SSH host keys."""
    script = root / "usr/local/sbin/lab-vm-setup"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(SETUP_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system/lab-vm-setup.service").write_text(SETUP_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "lab-vm-setup.service").unlink(missing_ok=True)
    (wants / "lab-vm-setup.service").symlink_to("/etc/systemd/system/lab-vm-setup.service")
    (root / "etc/fstab").write_text(FSTAB)
    shell.run(["ssh-keygen", "-A", "-f", str(root)])


def make_disk(root, path):
    """An ext4 image holding `root`'s tree, made without a loop device."""
    used = int(shell.run(["du", "-sx", "--block-size=1M", str(root)]).stdout.split()[0])
    shell.run(["mkfs.ext4", "-q", "-F", "-L", "lab-root", "-d", str(root), str(path),
               f"{used + HEADROOM_MIB}M"], timeout=600)
