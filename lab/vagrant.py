"""The Vagrantfile's cluster booted by `vagrant up` with vagrant-libvirt, on
the box `python -m lab box` writes, on a machine where nothing runs libvirt.

libvirtd (so its bridges, dnsmasq and the VMs' taps) runs in a network
namespace of its own, NAME-net, and so do vagrant, pyinfra and SSH to the VMs:
the cluster never meets this machine's network and nothing leaves the
machine (both libvirt networks are isolated, forward mode none).
VAGRANT_HOME (the added box, the settings below the project's Vagrantfile) and
VAGRANT_DOTFILE_PATH (each VM's key) live in the state directory, so the box
and the keys go with it. `down` destroys the VMs with vagrant, removes what
libvirt gained since `up` began, stops the daemons it started and ends every
process left in the namespace, by PID.
"""

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path

from . import box as boxmod
from . import host as hostmod
from . import libvirt, network, shell, ssh
from .errors import LabError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NAME = "vagrant"
DEFAULT_STATE = "/var/lib/flannelette-lab"
# Where vagrant-libvirt's management network (DHCP, vagrant's SSH) sits; the
# Vagrantfile's private network is 192.168.56.0/24, both inside the namespace.
MANAGEMENT_NETWORK = "192.168.121.0/24"
TOOLS = {"vagrant": "vagrant", "virsh": "libvirt-clients", "libvirtd": "libvirt-daemon-system",
         "dnsmasq": "dnsmasq-base", "qemu-img": "qemu-utils"}
HOME_VAGRANTFILE = """# VAGRANT_HOME's Vagrantfile, read before the project's: where this cluster's
# VMs, networks and disks go in libvirt.
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.default_prefix = "{prefix}"
    lv.storage_pool_name = "{pool}"
    lv.management_network_name = "{prefix}management"
    lv.management_network_address = "{management}"
    lv.management_network_mode = "none"
  end
end
"""
LIBVIRT_CONFIG = "/etc/libvirt"


class VagrantCluster:
    """`vagrant up` of node1..`nodes` in namespace NAME-net, state in DEFAULT_STATE/NAME."""

    def __init__(self, name=DEFAULT_NAME, nodes=2, driver="qemu", log=print):
        self.name = name
        self.nodes = nodes
        self.driver = driver
        self.log = log
        self.netns = f"{name}-net"
        self.prefix = f"flannelette-{name}-"
        self.pool = f"flannelette-{name}"
        self.box_name = f"flannelette-{name}/{boxmod.rootfs.SUITE}"
        base = Path(os.environ.get("FLANNELETTE_LAB_STATE", DEFAULT_STATE))
        self.state_dir = base / name
        self.home = self.state_dir / "vagrant.d"
        self.dotfile = self.state_dir / "dotfile"
        self.daemons = libvirt.Daemons(self.state_dir / "logs", netns=self.netns, hide_kvm=driver == "qemu")
        self.timings = {}
        self._clients = {}
        self._before_config = config_files()

    # -- what the cluster is ---------------------------------------------

    def hosts(self):
        """[(name, address)] at the Vagrantfile's private addresses."""
        return [(f"node{i}", f"192.168.56.{10 + i}") for i in range(1, self.nodes + 1)]

    def env(self):
        """The environment vagrant and the inventory (inventory/vagrant.py) read."""
        return {**os.environ, "VAGRANT_HOME": str(self.home), "VAGRANT_DOTFILE_PATH": str(self.dotfile),
                "VAGRANT_CWD": str(ROOT), "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                "VAGRANT_CHECKPOINT_DISABLE": "1", "NODES": str(self.nodes),
                "FLANNELETTE_BOX": self.box_name, "FLANNELETTE_LIBVIRT_DRIVER": self.driver}

    def command_prefix(self):
        """Run a command with this before it to reach the VMs (pyinfra, ssh)."""
        return ["ip", "netns", "exec", self.netns]

    def private_key(self, name):
        return self.dotfile / "machines" / name / "libvirt" / "private_key"

    # -- up --------------------------------------------------------------

    def up(self):
        """Box, namespace, libvirtd, `vagrant box add`, `vagrant up`; taken down again if any fails."""
        try:
            self._timed("box", self._ensure_box_dir)
            self._start_libvirt()
            self._timed("vagrant box add", self._add_box)
            self._timed("vagrant up", lambda: self.vagrant("up", "--provider", "libvirt", timeout=1800))
        except BaseException:
            self.down()
            raise
        return self.hosts()

    def _timed(self, what, step):
        started = time.monotonic()
        result = step()
        self.timings[what] = time.monotonic() - started
        return result

    def _ensure_box_dir(self):
        self.box_dir = boxmod.ensure(log=self.log)
        # libvirt's qemu runs as its own user: it reads the kernel in the box directory.
        for path in (self.state_dir.parent, self.state_dir, self.home):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        (self.home / "Vagrantfile").write_text(HOME_VAGRANTFILE.format(
            prefix=self.prefix, pool=self.pool, management=MANAGEMENT_NETWORK))

    def _start_libvirt(self):
        if self.netns not in network.netns_list():
            shell.run(["ip", "netns", "add", self.netns])
        shell.run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        before = {"config": config_files()}
        self._save(before)
        self.daemons.start()
        before.update(libvirt.snapshot())
        self._save(before)
        libvirt.define_pool(self.pool, self.state_dir / "pool")

    def _add_box(self):
        box_file = boxmod.write(self.box_dir, self.state_dir / boxmod.DEFAULT_OUTPUT)
        try:
            self.vagrant("box", "add", "--force", "--name", self.box_name, str(box_file), timeout=600)
        finally:
            box_file.unlink(missing_ok=True)

    def vagrant(self, *args, timeout=600, check=True):
        """`vagrant ARGS` in the namespace, from the repository's root; its output goes to the state directory."""
        with open(self.state_dir / "vagrant.log", "a") as log:
            log.write(f"\n$ vagrant {' '.join(args)}\n")
            proc = subprocess.Popen([*self.command_prefix(), "vagrant", *args], cwd=ROOT, env=self.env(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace")
            watchdog = threading.Timer(timeout, proc.kill)  # a vagrant that hangs in silence too
            watchdog.start()
            try:
                _copy_timed(proc.stdout, log)
            finally:
                watchdog.cancel()
                proc.stdout.close()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            if proc.returncode < 0:
                raise LabError(f"vagrant {' '.join(args)}: no end after {timeout}s; see {self.state_dir}/vagrant.log")
        if check and proc.returncode != 0:
            raise LabError(f"vagrant {' '.join(args)}: exit {proc.returncode}:\n{self.log_tail()}")
        return proc

    def log_tail(self, lines=30):
        try:
            text = (self.state_dir / "vagrant.log").read_text(errors="replace")
        except OSError:
            return "  (no vagrant.log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- on the VMs ------------------------------------------------------

    def run(self, name, command, timeout=60):
        """Run `command` (a shell string) as root on VM `name`, as vagrant's
        user with sudo, over one SSH connection kept per VM."""
        client = self._clients.get(name)
        transport = client and client.get_transport()
        if not (transport and transport.is_active()):
            client = ssh.connect(dict(self.hosts())[name], self.private_key(name), timeout=30,
                                 netns=self.netns, username="vagrant")
            self._clients[name] = client
        return ssh.run(client, f"sudo -n sh -c {shlex.quote(command)}", timeout=timeout)

    def close(self):
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- down ------------------------------------------------------------

    def down(self):
        """Everything `up` made goes, whichever step it reached (see the module's docstring)."""
        self.close()
        before = self._load()
        problems = []
        if self.daemons.started or libvirt.answers():
            try:
                if self.home.exists():
                    self.vagrant("destroy", "-f", timeout=600, check=False)
            except LabError as err:  # a hung destroy: libvirt's own removal below still runs
                problems.append(str(err))
            try:
                libvirt.remove_new(before)
            except LabError as err:
                problems.append(str(err))
        survivors = self.daemons.stop()
        survivors += hostmod.stop_all([(pid, hostmod.start_time(pid)) for pid in processes_in(self.netns)], 15)
        if self.netns in network.netns_list():
            shell.run(["ip", "netns", "del", self.netns])
        for path in set(config_files()) - set(before.get("config", ())):
            Path(path).unlink(missing_ok=True)  # a definition libvirt kept on disk after all
        self._keep_logs()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if survivors:
            problems.append(f"processes survived SIGKILL: {survivors}")
        if problems:
            raise LabError(f"vagrant cluster {self.name!r}: " + "; ".join(problems))

    def _keep_logs(self):
        """vagrant's output and the daemons' logs, kept in the cache past the state directory."""
        kept = boxmod.rootfs.cache_dir() / "logs"
        for path in [self.state_dir / "vagrant.log", *self.state_dir.glob("logs/*.log")]:
            if path.is_file():
                kept.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, kept / f"{self.name}-{path.name}")

    def leftovers(self):
        """Everything of the cluster still on this machine, by kind; empty when clean."""
        found = {
            "netns": [self.netns] if self.netns in network.netns_list() else [],
            "processes": processes_in(self.netns) + qemu_processes(self.prefix),
            "libvirt config": sorted(set(config_files()) - set(self._before_config)),
            "state": [str(self.state_dir)] if self.state_dir.exists() else [],
        }
        return {kind: items for kind, items in found.items() if items}

    # -- state -----------------------------------------------------------

    def _save(self, before):
        self._before_config = before["config"]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "before.json").write_text(json.dumps(before))

    def _load(self):
        try:
            before = json.loads((self.state_dir / "before.json").read_text())
        except (OSError, ValueError):
            before = {"config": config_files()}
        self._before_config = before["config"]
        return before


def _copy_timed(lines, log):
    """Each line of vagrant's output into `log` after the seconds since it began."""
    started = time.monotonic()
    for line in lines:
        log.write(f"[{time.monotonic() - started:6.1f}s] {line}")
        log.flush()


def config_files(root=LIBVIRT_CONFIG):
    """The definitions libvirt keeps on disk: domains, networks, storage pools."""
    return sorted(str(p) for p in Path(root).glob("**/*.xml"))


def processes_in(netns):
    """PIDs of the processes whose network namespace is `netns`."""
    try:
        target = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns/net").st_ino == target:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return sorted(pids)


def qemu_processes(prefix):
    """PIDs of qemu processes running a libvirt domain named `prefix`…, wherever they are."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and f"guest={prefix}".encode() in b",".join(argv):
            pids.append(int(entry.name))
    return sorted(pids)


def missing():
    """What this machine lacks to run the cluster, as reasons a person can act on."""
    absent = sorted({pkg for tool, pkg in TOOLS.items()
                     if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()})
    reasons = ["missing tools; install them with: apt-get install -y --no-install-recommends " + " ".join(absent)] \
        if absent else []
    if shutil.which("vagrant") and "vagrant-libvirt" not in shell.run(["vagrant", "plugin", "list"], check=False).stdout:
        reasons.append("vagrant has no libvirt provider (apt-get install -y --no-install-recommends vagrant-libvirt)")
    return reasons
