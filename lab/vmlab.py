"""A lab of qemu VMs: Debian's own kernel, virtio NICs, and the same names,
addresses and inventory as the nspawn lab (lab.lab), built by `up`, removed by
`down`.

The VMs sit on a bridge inside a network namespace of their own (NAME-net), so
they can have the Vagrantfile's addresses (192.168.56.11..) beside any lab on
this machine; everything that talks to them (SSH here, pyinfra as a process)
does so from inside that namespace. What `up` starts is recorded in the state
directory before it exists, so `down` from any later process finds it.

Every VM runs Debian rootfs.SUITE but those `up` is told to give another
suite (rootfs.OLDEST_SUITE: the oldest kernel and python3 the runtime supports).
"""

import os
import shlex
import shutil
import time
from pathlib import Path

from . import host as hostmod
from . import image as imagemod
from . import inventory, network, qemu, rootfs, ssh
from . import state as statemod
from .errors import LabError
from .plan import DEFAULT_HOSTS, make_plan

DEFAULT_NAME = "vm"
# The Vagrantfile's private network: node1 is 192.168.56.11.
DEFAULT_NETWORK = "192.168.56.0/24"
DEFAULT_STATE = "/var/lib/flannelette-lab"
TOOLS = {qemu.QEMU: "qemu-system-x86", "ip": "iproute2", "mkfs.ext4": "e2fsprogs",
         "ssh-keygen": "openssh-client", "apt-get": "apt", "dpkg-deb": "dpkg"}


class VMLab(statemod.Stateful):
    """VMs node1..N of lab `name`: namespace NAME-net, bridge NAME-br, taps NAME-nK."""

    def __init__(self, name=DEFAULT_NAME, network=DEFAULT_NETWORK, state_dir=None,
                 boot_timeout=300, accel=None, log=print):
        self.plan = make_plan(name, network)
        self.name = name
        self.netns = f"{name}-net"
        base = Path(os.environ.get("FLANNELETTE_LAB_STATE", DEFAULT_STATE))
        self.state_dir = Path(state_dir) if state_dir else base / name
        self.inventory_path = self.state_dir / "inventory.py"
        self.key_path = self.state_dir / "id_ed25519"
        self.boot_timeout = boot_timeout
        self.accel = accel or os.environ.get("FLANNELETTE_VM_ACCEL")  # None: try KVM, then TCG
        self.log = log
        self._clients = {}
        self._booting_since = {}
        self.boot_seconds = {}  # name: seconds from its qemu's start to sshd letting the lab in, this process's boots

    # -- queries ---------------------------------------------------------

    def hosts(self):
        """[(name, address)] of the VMs, node1 first."""
        return [(h.name, h.address) for h in self._planned(self._load())]

    def processes(self):
        """[(name, pid, start time)] of the VMs' qemu processes."""
        state = self._load() or self._new_state()
        return [(name, e["pid"], e["started"]) for name, e in state["hosts"].items() if e["pid"]]

    @property
    def accelerator(self):
        """"kvm" or "tcg": what the running VMs use."""
        return (self._load() or {}).get("accel")

    def command_prefix(self):
        """Run a command with this before it to reach the VMs (pyinfra, ssh)."""
        return ["ip", "netns", "exec", self.netns]

    def run(self, name, command, timeout=60):
        """Run `command` (a shell string or an argv list) on VM `name` over one
        SSH connection kept per VM (a new one costs seconds under TCG)."""
        if not isinstance(command, str):
            command = shlex.join(command)
        return ssh.run(self._client(name), command, timeout=timeout)

    def _client(self, name):
        client = self._clients.get(name)
        transport = client and client.get_transport()
        if not (transport and transport.is_active()):
            address = dict(self.hosts()).get(name)
            if address is None:
                raise LabError(f"{name}: no such VM in lab {self.name!r}")
            client = ssh.connect(address, self.key_path, timeout=30, netns=self.netns)
            self._clients[name] = client
        return client

    def close(self):
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- up --------------------------------------------------------------

    def up(self, hosts=DEFAULT_HOSTS, suites=None):
        """Boot VMs node1..node`hosts` (those not running yet), each on the
        image of its Debian suite in `suites` ({name: suite}, rootfs.SUITE for
        those it doesn't name); [(name, address)]."""
        _preflight()
        wanted = self.plan.hosts(hosts)
        suite_of = {h.name: (suites or {}).get(h.name, rootfs.SUITE) for h in wanted}
        images = {suite: imagemod.ensure(log=self.log, suite=suite) for suite in sorted(set(suite_of.values()))}
        state = self._load() or self._new_state()
        try:
            self._up(state, wanted, {name: images[suite] for name, suite in suite_of.items()})
        except BaseException:
            self._keep_logs()
            self.down(grace=0)
            raise
        return self.hosts()

    def _up(self, state, wanted, images):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ssh.ensure_key(self.key_path, f"flannelette-lab-{self.name}")
        self._save(state)
        network.ensure_switch(self.netns, self.plan)
        booting = [h for h in wanted if not self._is_running(state, h)]
        for host in booting:
            network.ensure_tap(self.netns, self.plan, host)
            if state["accel"] is None:
                state["accel"] = self._boot_first(state, images[host.name], host)
                self._save(state)
            else:
                self._boot(state, images[host.name], host, state["accel"])
        self._wait_ready(state, booting)
        inventory.write(self.inventory_path, inventory.render(self.name, self.hosts(), self.key_path))

    def _accels_to_try(self):
        if self.accel:
            return [self.accel]
        return list(qemu.ACCELS) if qemu.kvm_usable() else ["tcg"]

    def _boot_first(self, state, image, host):
        """Boot the first VM with each accelerator in turn (KVM, then TCG); the
        first under which its kernel runs within KVM_PROBE_SECONDS is the lab's."""
        tries = self._accels_to_try()
        for accel in tries:
            pid, started = self._boot(state, image, host, accel)
            if accel == tries[-1] or qemu.wait_kernel(pid, started, self._console(host), qemu.KVM_PROBE_SECONDS):
                return accel
            self.log(f"{accel}: {host.name}'s kernel did not start within {qemu.KVM_PROBE_SECONDS}s; trying the next")
            hostmod.stop_all([(pid, started)], timeout=0)
            self._console(host).unlink(missing_ok=True)

    def _boot(self, state, image, host, accel):
        hdir = self._host_dir(host)
        hdir.mkdir(parents=True, exist_ok=True)
        state["hosts"][host.name] = {"pid": None, "started": None}
        self._save(state)
        argv = qemu.command(image, host, host.veth, accel, self._console(host), ssh.public_key(self.key_path))
        self._booting_since[host.name] = time.monotonic()
        pid, started = qemu.start(argv, self.netns, hdir / "qemu.log", hdir)
        state["hosts"][host.name].update(pid=pid, started=started)
        self._save(state)
        return pid, started

    def _wait_ready(self, state, hosts):
        """Until sshd in every VM of `hosts` lets the lab's key in; they boot together."""
        deadline = time.monotonic() + self.boot_timeout
        waiting = list(hosts)
        while waiting:
            for host in list(waiting):
                entry = state["hosts"][host.name]
                if not hostmod.is_running(entry["pid"], entry["started"]):
                    raise LabError(f"{host.name}: qemu exited while booting:\n{self._tail(host)}")
                if ssh.answers(host.address, self.key_path, timeout=10, netns=self.netns):
                    self.boot_seconds[host.name] = time.monotonic() - self._booting_since[host.name]
                    self.log(f"{host.name} {host.address}: up in {self.boot_seconds[host.name]:.0f}s")
                    waiting.remove(host)
            if waiting and time.monotonic() > deadline:
                raise LabError(f"{', '.join(h.name for h in waiting)}: sshd did not answer within "
                               f"{self.boot_timeout}s; {waiting[0].name}'s console said:\n{self._tail(waiting[0])}")
            time.sleep(1)

    def _is_running(self, state, host):
        entry = state["hosts"].get(host.name)
        return bool(entry and entry["pid"] and hostmod.is_running(entry["pid"], entry["started"]))

    def _host_dir(self, host):
        return hostmod.host_dir(self.state_dir, host)

    def _console(self, host):
        return self._host_dir(host) / "console.log"

    def _tail(self, host):
        return hostmod.console_tail(self._console(host))

    def _keep_logs(self):
        """Copy the consoles and qemu logs of a failed `up` to the cache."""
        kept = rootfs.cache_dir() / "logs"
        for path in self.state_dir.glob("hosts/*/*.log"):
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, kept / f"{self.name}-{path.parent.name}.{path.name}")

    # -- down ------------------------------------------------------------

    def down(self, grace=5):
        """End every VM by its PID, delete the taps, the bridge and the namespace
        by name, and the state; the image cache stays. qemu has nothing to save
        (the disk is a snapshot), so `grace` is short."""
        self.close()
        state = self._load() or self._new_state()
        survivors = hostmod.stop_all(
            [(e["pid"], e["started"]) for e in state["hosts"].values() if e["pid"]], grace)
        network.remove_switch(self.netns, self.plan, tap_prefix=f"{self.name}-n")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if survivors:
            raise LabError(f"lab {self.name!r}: qemu processes survived SIGKILL: {survivors}")

    # -- state -----------------------------------------------------------

    def _new_state(self):
        return {"name": self.name, "network": str(self.plan.network), "accel": None, "hosts": {}}


def missing():
    """What this machine lacks to run the VM lab, as reasons a person can act on."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("not root (network namespaces, taps, mounts)")
    absent = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if absent:
        reasons.append("missing tools; install them with: apt-get install -y " + " ".join(absent))
    if not os.path.exists("/dev/net/tun"):
        reasons.append("/dev/net/tun: missing (load the tun module)")
    return reasons


def _preflight():
    reasons = missing()
    if reasons:
        raise LabError("\n".join(reasons))
