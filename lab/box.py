"""A Vagrant box for the libvirt provider, made from the VM image's recipe, so
that the Vagrantfile's cluster boots without downloading a box:

    python -m lab box [--output flannelette-bookworm.box]
    vagrant box add --name flannelette/bookworm flannelette-bookworm.box
    FLANNELETTE_BOX=flannelette/bookworm NODES=3 vagrant up --provider libvirt

The box is a tar of box.img (qcow2), metadata.json, the kernel and initramfs,
and a Vagrantfile that boots them directly (the image has no bootloader).
Beyond the lab VM's tree it has what Vagrant expects of a box: a `vagrant`
user who may sudo without a password and lets Vagrant's insecure key in
(`vagrant up` replaces it), and udev with systemd-networkd asking DHCP for
eth0's address, where vagrant-libvirt's management network answers.
"""

import glob
import hashlib
import json
import math
import os
import shutil
import tarfile
from pathlib import Path

from . import image as imagemod
from . import qemu, rootfs, shell
from .errors import LabError

DEFAULT_OUTPUT = f"flannelette-{rootfs.SUITE}.box"
# udev: systemd-networkd waits for it to announce a link before configuring it.
# kmod is in the VM image already, unpacked; here dpkg installs it, as udev needs it.
PACKAGES = ("adduser", "udev", "sudo")
DPKG_INSTALLED = ("kmod", *PACKAGES)
USER = "vagrant"
SUDOERS = f"{USER} ALL=(ALL) NOPASSWD:ALL\n"
# vagrant-libvirt learns a VM's address from its management network's DHCP
# leases; the MAC as client id keeps VMs that share a machine-id apart.
MANAGEMENT_NETWORK = "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n"
VAGRANT_KEYS = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"
BOX_VAGRANTFILE = """# Written by `python -m lab box`: the image has no bootloader, so libvirt boots
# the kernel and initramfs that sit beside it in the box.
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "{cmdline}"
  end
end
"""
QCOW2_OPTIONS = ("-c",)
CONTENTS = ("metadata.json", "Vagrantfile", "vmlinuz", "initrd.img", "box.img")


def recipe_id():
    recipe = "\n".join([imagemod.recipe_id(), *DPKG_INSTALLED, SUDOERS, MANAGEMENT_NETWORK,
                        BOX_VAGRANTFILE, *qemu.BOOT_ARGS, *QCOW2_OPTIONS])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def metadata(disk_bytes):
    """metadata.json of a libvirt box whose disk is `disk_bytes` long (whole GiB, rounded up)."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": math.ceil(disk_bytes / (1 << 30))}


def vagrantfile():
    return BOX_VAGRANTFILE.format(cmdline=" ".join(qemu.BOOT_ARGS))


def insecure_key(pattern=VAGRANT_KEYS):
    """Vagrant's well-known public key, as the installed vagrant ships it."""
    found = sorted(glob.glob(pattern))
    if not found:
        raise LabError(f"{pattern}: no vagrant installed to take its insecure key from "
                       "(apt-get install vagrant)")
    return Path(found[-1]).read_text()


def ensure(log=print):
    """The cached box directory (see CONTENTS), built first if there is none."""
    lower = rootfs.ensure(log=log)
    cache = rootfs.cache_dir()
    key = insecure_key()
    with rootfs.locked(cache / ".lock"):
        target = cache / f"box-{rootfs.SUITE}-{recipe_id()}"
        if (target / "box.img").is_file():
            return target
        log(f"building the Vagrant box in {target} (once; later runs reuse it)")
        staging = cache / f".box-{rootfs.SUITE}-{recipe_id()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            imagemod.build(cache, lower, staging, PACKAGES, lambda root, debs: configure(root, debs, key))
            finish(staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in cache.glob(f"box-{rootfs.SUITE}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target


def configure(root, debs, key):
    """Turn the lab VM's tree into a Vagrant box's (see the module's docstring)."""
    # A box VM is made itself by Vagrant, not by the lab's kernel command line.
    (root / "etc/systemd/system/multi-user.target.wants/lab-vm-setup.service").unlink(missing_ok=True)
    inside = root / "tmp" / "box-debs"
    inside.mkdir()
    for name in DPKG_INSTALLED:
        shutil.copy(debs[name], inside)
    shell.run(["chroot", str(root), "sh", "-c", "dpkg -i /tmp/box-debs/*.deb"], timeout=600)
    shutil.rmtree(inside)
    shell.run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", USER])
    (root / "etc/sudoers.d" / USER).write_text(SUDOERS)
    (root / "etc/sudoers.d" / USER).chmod(0o440)
    ssh_dir = root / "home" / USER / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(key)
    (ssh_dir / "authorized_keys").chmod(0o600)
    shell.run(["chroot", str(root), "chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.ssh"])
    (root / "etc/systemd/network/10-management.network").write_text(MANAGEMENT_NETWORK)
    shell.run(["chroot", str(root), "systemctl", "enable", "systemd-networkd.service"])


def finish(directory):
    """The raw disk the image build left becomes box.img; the box's metadata and Vagrantfile beside it."""
    raw = directory / "root.img"
    # Compressed: vagrant-libvirt uploads the image into libvirt's pool through a
    # stream, a third of the bytes at a third of the time.
    shell.run(["qemu-img", "convert", *QCOW2_OPTIONS, "-f", "raw", "-O", "qcow2", str(raw), str(directory / "box.img")],
              timeout=600)
    (directory / "metadata.json").write_text(json.dumps(metadata(raw.stat().st_size)) + "\n")
    (directory / "Vagrantfile").write_text(vagrantfile())
    raw.unlink()
    (directory / "kernel-version").unlink(missing_ok=True)


def write(directory, output):
    """The box file `output`: a tar of `directory`'s CONTENTS, metadata.json
    first; written beside `output` and renamed, so it is whole or absent."""
    output = Path(output)
    temp = output.with_name(f".{output.name}.tmp")
    try:
        with tarfile.open(temp, "w") as tar:
            for name in CONTENTS:
                tar.add(Path(directory) / name, arcname=name)
        os.replace(temp, output)
    finally:
        temp.unlink(missing_ok=True)
    return output
