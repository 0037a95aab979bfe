"""One lab VM as a qemu process: its command line, starting it inside the
lab's network namespace, and choosing KVM or TCG by trying.

/dev/kvm can be there and still not work: under nested virtualisation that
doesn't, qemu aborts or the guest's kernel hangs before it prints a line. So
KVM is tried on the first VM with a short deadline for the initramfs to say
the kernel runs, and TCG (qemu's emulator) is used when it doesn't.
"""

import base64
import os
import subprocess
import time
from pathlib import Path

from . import host as hostmod
from .initramfs import MARKER

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 1024
# A working KVM reaches the initramfs in a second or two; TCG in a few.
KVM_PROBE_SECONDS = 10
ACCELS = ("kvm", "tcg")
# What every VM of the image's kernel boots with, the Vagrant box's too.
BOOT_ARGS = (
    "root=/dev/vda", "console=ttyS0", "net.ifnames=0", "panic=-1",
    # No udev in the image: a getty on the console would wait 90s for its device.
    "systemd.mask=serial-getty@ttyS0.service",
)


def kernel_args(host, authorized_key):
    """The kernel command line that makes a VM `host` (see lab.image)."""
    key = base64.b64encode(authorized_key.strip().encode()).decode()
    return " ".join([*BOOT_ARGS, f"systemd.hostname={host.name}", f"lab.address={host.cidr}", f"lab.key={key}"])


def mac_address(host):
    """Stable and distinct per host: qemu's prefix, then the host's address."""
    octets = [int(o) for o in host.address.split(".")]
    return "52:54:" + ":".join(f"{o:02x}" for o in octets)


def command(image, host, tap, accel, console, authorized_key):
    """qemu's argv for `host` on the tap device `tap`: direct kernel boot, the
    shared root disk behind a throwaway snapshot, one virtio NIC."""
    return [
        QEMU, "-name", host.name, "-accel", accel, "-smp", "1", "-m", str(MEMORY_MIB),
        "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", kernel_args(host, authorized_key),
        "-drive", f"file={image.disk},format=raw,if=virtio,snapshot=on",
        "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=net0,mac={mac_address(host)}",
    ]


def start(argv, netns, log_path, tmpdir):
    """Start qemu inside `netns` (where its tap is), detached; (pid, start time).
    `ip netns exec` execs qemu in its own process, so the PID is qemu's."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmpdir)},  # where snapshot=on keeps its overlay
        )
    return proc.pid, hostmod.start_time(proc.pid)


def kvm_usable():
    """Whether KVM is worth trying: the device is there and this user may open it."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def kernel_ran(console):
    try:
        return MARKER in Path(console).read_text(errors="replace")
    except OSError:
        return False


def wait_kernel(pid, started, console, timeout):
    """True once the console shows the kernel ran the initramfs; False when qemu
    exits or the deadline passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kernel_ran(console):
            return True
        if not hostmod.is_running(pid, started):
            return False
        time.sleep(0.2)
    return kernel_ran(console)
