"""What lets a lab host run real containers: podman and Docker in the rootfs,
a local busybox image (the lab has no registry), and the nspawn settings they
need inside a booted container.

Docker is installed but not started at boot: a host whose deploy configures
Docker starts it. Left running everywhere it would make its own docker0
bridge and set the FORWARD policy to DROP on every lab host.
"""

import io
import tarfile
from pathlib import Path

PACKAGES = (
    "podman", "netavark", "aardvark-dns", "uidmap", "fuse-overlayfs", "catatonit",
    "runc", "docker.io", "busybox-static",
)
# Units that Debian's docker.io enables, disabled in the rootfs.
DISABLED_UNITS = ("docker.service", "docker.socket", "containerd.service")
IMAGE = "busybox"
IMAGE_TAR = "usr/local/share/flannelette-lab/busybox.tar"
# crun 1.8 fails to set RLIMIT_MEMLOCK inside systemd-nspawn, and the guest's
# pids controller is not delegated: runc, and no pids limit.
CONTAINERS_CONF = """\
# The lab: runc (crun 1.8 fails on RLIMIT_MEMLOCK inside systemd-nspawn), no
# pids limit (the controller is not delegated), netavark.
[containers]
pids_limit = 0

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
"""
# podman needs no daemon: its image is imported at boot. Docker's is
# imported whenever dockerd starts.
PODMAN_IMAGE_UNIT = f"""\
[Unit]
Description=The lab's busybox image for podman

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'podman image exists {IMAGE} || podman import /{IMAGE_TAR} {IMAGE}'

[Install]
WantedBy=multi-user.target
"""
DOCKER_IMAGE_DROPIN = f"""\
[Service]
ExecStartPost=-/bin/sh -c 'docker image inspect {IMAGE} >/dev/null 2>&1 || docker import /{IMAGE_TAR} {IMAGE}'
"""
FILES = {
    "etc/containers/containers.conf": CONTAINERS_CONF,
    "etc/systemd/system/lab-podman-image.service": PODMAN_IMAGE_UNIT,
    "etc/systemd/system/docker.service.d/lab-image.conf": DOCKER_IMAGE_DROPIN,
}
# What a container in the lab uses: a shell, ping, nc for TCP, ip.
APPLETS = ("sh", "ping", "nc", "ip", "sleep", "cat", "echo", "hostname", "ls", "true")
IMAGE_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
}
# systemd-nspawn: the guest gets a cgroup2 tree of its own (what podman and
# Docker manage), the system calls their runtimes make, and storage that is
# not on the host's overlay root (overlayfs does not stack on overlayfs).
NSPAWN_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
NSPAWN_ARGS = (
    "--system-call-filter=add_key keyctl bpf",
    "--tmpfs=/var/lib/containers", "--tmpfs=/var/lib/docker",
)


def recipe():
    """The text of everything above that goes into the rootfs."""
    return "\n".join([*PACKAGES, *DISABLED_UNITS, *FILES.values(), *APPLETS,
                      *IMAGE_FILES.values()])


def configure(root):
    """Add the container runtimes' lab settings and the busybox image to a
    fresh rootfs."""
    root = Path(root)
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "lab-podman-image.service"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/systemd/system/lab-podman-image.service")
    # The links point into the rootfs, so from here they dangle: glob() would not see them.
    for wanted_by in (root / "etc/systemd/system").glob("*.wants"):
        for unit in DISABLED_UNITS:
            (wanted_by / unit).unlink(missing_ok=True)
    busybox = root / "bin/busybox"
    if busybox.exists():
        tar = root / IMAGE_TAR
        tar.parent.mkdir(parents=True, exist_ok=True)
        tar.write_bytes(image_tar(busybox.read_bytes()))


def image_tar(busybox):
    """A root filesystem of one static busybox, as `podman import` and
    `docker import` take it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for d in ("bin", "etc", "root", "tmp"):
            _add(tar, d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, data=busybox, mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        for rel, text in IMAGE_FILES.items():
            _add(tar, rel, tarfile.REGTYPE, data=text.encode())
    return out.getvalue()


def _add(tar, name, kind, data=b"", mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
