"""libvirt for `vagrant up` where no systemd runs it: libvirtd and virtlogd
started as this process's children (so their PIDs are known) and stopped by
PID afterwards, and what a run defined in libvirt (domains, networks, a
storage pool and its volumes) removed by name.

A libvirtd that already answers is used as it is and left running.
"""

import shutil
import subprocess
import time
from pathlib import Path

from . import host as hostmod
from . import shell
from .errors import LabError

URI = "qemu:///system"
# virtlogd first: libvirtd hands it every VM's console output.
DAEMONS = ("/usr/sbin/virtlogd", "/usr/sbin/libvirtd")
KINDS = {"domain": ("list", "--all", "--name"), "network": ("net-list", "--all", "--name"),
         "pool": ("pool-list", "--all", "--name")}


def virsh(*args, check=True, timeout=120):
    return shell.run(["virsh", "-q", "-c", URI, *args], check=check, timeout=timeout)


def answers():
    """Whether a libvirtd serves URI."""
    return shutil.which("virsh") is not None and virsh("uri", check=False, timeout=30).returncode == 0


def names(kind):
    """The names of every libvirt `kind` ("domain", "network", "pool") defined."""
    return sorted(line.strip() for line in virsh(*KINDS[kind]).stdout.splitlines() if line.strip())


class Daemons:
    """libvirtd and virtlogd, started by `start` unless a libvirtd answers already."""

    def __init__(self, log_dir, netns=None, hide_kvm=False, timeout=60):
        self.log_dir = Path(log_dir)
        self.netns = netns  # where libvirtd makes its bridges and starts dnsmasq and qemu
        # Where /dev/kvm opens but KVM doesn't work, libvirt finds its cached
        # qemu capabilities stale and probes qemu again at every start (minutes
        # under load); a libvirtd that sees no /dev/kvm trusts its cache.
        self.hide_kvm = hide_kvm
        self.timeout = timeout
        self.started = []  # [(pid, start time)] of the daemons this object started

    def start(self):
        if answers():
            return self
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for path in DAEMONS:
            with open(self.log_dir / f"{Path(path).name}.log", "ab") as log:
                proc = subprocess.Popen(self._argv(path), stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.started.append((proc.pid, hostmod.start_time(proc.pid)))
        deadline = time.monotonic() + self.timeout
        while not answers():
            if time.monotonic() > deadline or not all(hostmod.is_running(*p) for p in self.started):
                self.stop()
                raise LabError(f"libvirtd did not answer at {URI} within {self.timeout}s; "
                               f"see {self.log_dir}/libvirtd.log")
            time.sleep(0.5)
        return self

    def _argv(self, path):
        """The daemon's command line; every step before it execs, so the PID is the daemon's."""
        argv = [path]
        if self.hide_kvm and path.endswith("/libvirtd") and Path("/dev/kvm").exists():
            argv = ["unshare", "--mount", "sh", "-c", f"mount --bind /dev/null /dev/kvm && exec {path}"]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def stop(self):
        """End the daemons this object started, by PID; the PIDs that survived."""
        survivors = hostmod.stop_all(list(reversed(self.started)), timeout=15)
        self.started = []
        return survivors


def define_pool(name, path):
    """A directory storage pool `name` at `path`, started."""
    Path(path).mkdir(parents=True, exist_ok=True)
    virsh("pool-define-as", name, "dir", "--target", str(path))
    virsh("pool-start", name)


def remove_pool(name):
    """Every volume of pool `name`, then the pool."""
    if name not in names("pool"):
        return
    virsh("pool-refresh", name, check=False)
    for line in virsh("vol-list", name, check=False).stdout.splitlines():
        if line.split():
            virsh("vol-delete", line.split()[0], "--pool", name, check=False)
    virsh("pool-destroy", name, check=False)
    virsh("pool-undefine", name, check=False)


def remove_domain(name):
    virsh("destroy", name, check=False)
    virsh("undefine", name, "--nvram", check=False)


def remove_network(name):
    virsh("net-destroy", name, check=False)
    virsh("net-undefine", name, check=False)


REMOVERS = {"domain": remove_domain, "network": remove_network, "pool": remove_pool}


def remove_new(before):
    """Remove whatever of each kind is defined now and was not in `before`
    ({kind: [names]}); domains first, as they use the networks and volumes."""
    for kind in ("domain", "network", "pool"):
        for name in names(kind):
            if name not in before.get(kind, ()):
                REMOVERS[kind](name)


def snapshot():
    """{kind: [names]} of everything defined in libvirt now."""
    return {kind: names(kind) for kind in KINDS}
