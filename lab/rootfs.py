"""The lab's Debian root filesystems: built once per suite with debootstrap,
cached, reused. The lab's hosts run SUITE; the VM lab can boot an older one
(OLDEST_SUITE, the oldest Debian the runtime supports) beside it.

Every host mounts it read-only under its own writable layer, so it carries
nothing that belongs to one host: no SSH host keys, no machine id, no hostname.
"""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from . import containers, shell
from .errors import LabError

SUITE = "bookworm"
OLDEST_SUITE = "bullseye"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = "/var/cache/flannelette-lab"
# A minimal cloud image plus what an overlay host needs; iperf3 is the lab's
# test tool for throughput across the overlay; podman and Docker for real
# containers.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3",
    "iproute2", "iptables", "nftables", "containernetworking-plugins",
    "iputils-ping", "iperf3",
)
# Units that wait for, or reach out to, a network the lab doesn't have.
MASKED_UNITS = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
    "apt-daily-upgrade.service", "systemd-networkd-wait-online.service",
    "systemd-timesyncd.service", "e2scrub_all.timer", "fstrim.timer",
)
SSHD_CONFIG = "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n"
# debootstrap copies the build machine's resolver in; the lab has no DNS.
RESOLV_CONF = "# The lab has no DNS: its hosts reach each other by address.\n"
MIN_FREE_BYTES = 1 << 30
# A rootfs of another recipe is pruned only when no lab has used it for this
# long: another checkout may be about to mount the one it just built.
PRUNE_AFTER_SECONDS = 3600


def packages(suite=SUITE):
    """What debootstrap installs: podman and Docker only on the lab's own suite
    (an older suite's podman predates netavark)."""
    return PACKAGES + (containers.PACKAGES if suite == SUITE else ())


def cache_dir():
    return Path(os.environ.get("FLANNELETTE_LAB_CACHE", DEFAULT_CACHE))


def recipe_id(suite=SUITE):
    """Short hash of what goes into the rootfs: a changed recipe means a new build."""
    extra = (containers.recipe(),) if suite == SUITE else ()
    recipe = "\n".join([suite, *packages(suite), *MASKED_UNITS, SSHD_CONFIG, RESOLV_CONF, *extra])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def rootfs_path(cache=None, suite=SUITE):
    return (cache or cache_dir()) / f"{suite}-{recipe_id(suite)}"


def mirror(sources_dir="/etc/apt", suite=SUITE):
    """Debian's package registry as apt on this machine is configured to reach
    it: the URI serving `suite`, else the one serving the lab's SUITE."""
    if os.environ.get("FLANNELETTE_LAB_MIRROR"):
        return os.environ["FLANNELETTE_LAB_MIRROR"]
    texts = [path.read_text(errors="replace") for path in _apt_source_files(Path(sources_dir))]
    for wanted in dict.fromkeys([suite, SUITE]):
        for text in texts:
            uri = find_debian_uri(text, wanted)
            if uri:
                return uri
    return DEFAULT_MIRROR


def _apt_source_files(root):
    files = [root / "sources.list"] + sorted((root / "sources.list.d").glob("*"))
    return [f for f in files if f.is_file() and f.suffix in (".list", ".sources")]


def find_debian_uri(text, suite=SUITE):
    """The URI serving `suite` from a one-line or deb822 apt sources text, or None."""
    for line in text.splitlines():
        m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(2) == suite:
            return m.group(1).rstrip("/")
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
        if "deb" in fields.get("Types", "").split() and suite in fields.get(
            "Suites", ""
        ).split():
            return fields.get("URIs", "").split()[0].rstrip("/") or None
    return None


def ensure(log=print, suite=SUITE):
    """Path of the cached rootfs of `suite`, building it first if there is none."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / ".lock"):
        target = rootfs_path(cache, suite)
        if target.is_dir():
            os.utime(target)  # in use: see _prune
            return target
        _check_free_space(cache)
        log(f"building the lab's Debian {suite} root filesystem in {target} "
            "(once; later runs reuse it)")
        started = time.monotonic()
        _build(cache, target, suite)
        log(f"root filesystem ready in {time.monotonic() - started:.0f}s")
        _prune(cache, keep=target, suite=suite)
        return target


@contextmanager
def locked(path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prune(cache, keep, suite, now=None):
    """Remove root filesystems of `suite`'s other recipes that no running host
    uses and no lab has asked for lately."""
    with open("/proc/self/mounts") as f:
        mounts = f.read()
    idle_since = (now or time.time()) - PRUNE_AFTER_SECONDS
    for old in cache.glob(f"{suite}-*"):
        if (old != keep and f"lowerdir={old}," not in mounts
                and old.stat().st_mtime < idle_since):
            remove_tree(old)


def _check_free_space(cache):
    free = shutil.disk_usage(cache).free
    if free < MIN_FREE_BYTES:
        raise LabError(
            f"{cache}: {free >> 20} MiB free, the lab's root filesystem needs "
            f"{MIN_FREE_BYTES >> 20} MiB (set FLANNELETTE_LAB_CACHE to another disk)"
        )


def _build(cache, target, suite):
    """debootstrap into a temporary directory, renamed into place only when complete."""
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        _debootstrap(tmp, cache / "debootstrap.log", suite)
        configure(tmp, suite)
        os.rename(tmp, target)
    except OSError as err:
        raise LabError(f"building the root filesystem in {tmp}: {err}") from None
    finally:
        if tmp.exists():
            remove_tree(tmp)


def _debootstrap(root, log_path, suite):
    cmd = [
        "debootstrap", "--variant=minbase", "--include=" + ",".join(packages(suite)),
        suite, str(root), mirror(suite=suite),
    ]
    try:
        with open(log_path, "w") as log:
            rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, timeout=1800).returncode
    except FileNotFoundError:
        raise LabError("debootstrap: not installed (apt-get install -y debootstrap)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"debootstrap: no result after 30 minutes; log: {log_path}") from None
    if rc != 0:
        tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-5:]
        raise LabError(
            f"debootstrap failed (exit {rc}); last lines:\n  "
            + "\n  ".join(tail) + f"\nfull log: {log_path}"
        )


def configure(root, suite=SUITE):
    """Make a fresh debootstrap a shareable, offline-friendly lower layer."""
    root = Path(root)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    (root / "etc/ssh/sshd_config.d/lab.conf").write_text(SSHD_CONFIG)
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text(RESOLV_CONF)
    (root / "etc/hostname").unlink(missing_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    if suite == SUITE:
        containers.configure(root)


def mounts_under(path):
    """Mount points at or below `path`, deepest first."""
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    inside = [p for p in points if p == path or p.startswith(path + "/")]
    return sorted(set(inside), key=len, reverse=True)


def remove_tree(path):
    """rm -rf that first unmounts anything below `path` and never crosses a mount."""
    for point in mounts_under(path):
        shell.run(["umount", point], check=False)
    left = mounts_under(path)
    if left:
        raise LabError(f"cannot remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)
