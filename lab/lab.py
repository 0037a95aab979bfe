"""A lab: booted Debian hosts on one bridge, built by `up`, removed by `down`.

Everything `up` makes is recorded in the lab's state directory (hosts, PIDs,
the SSH key), so `status`, `ssh` and `down` work from any later process.
"""

import os
import shlex
import shutil
from pathlib import Path

from . import host as hostmod
from . import cgroup, inventory, network, rootfs, ssh
from . import state as statemod
from .errors import LabError
from .plan import DEFAULT_HOSTS, DEFAULT_NAME, DEFAULT_NETWORK, make_plan

DEFAULT_STATE = "/var/lib/flannelette-lab"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A host that failed to boot may not have its signal handlers yet: it is
# given little time to power off before it is killed.
FAILED_BOOT_GRACE = 3
TOOLS = {
    "systemd-nspawn": "systemd-container", "ip": "iproute2", "mount": "mount",
    "ssh-keygen": "openssh-client", "debootstrap": "debootstrap",
}


class Lab(statemod.Stateful):
    """One lab, named so that a test lab and a user's lab can run side by side.

    The name prefixes namespaces (NAME-node1), the bridge (NAME-br), veths
    (NAME-n1) and the state directory. The default lab writes its inventory
    to inventory/lab.py; any other lab writes it into its state directory.
    """

    def __init__(self, name=DEFAULT_NAME, network=DEFAULT_NETWORK,
                 state_dir=None, inventory_path=None, boot_timeout=120,
                 log=print, underlay="wire"):
        self.plan = make_plan(name, network)
        self.underlay = underlay  # "wire" (lab.wire) or "veth": how the hosts' links carry datagrams
        self.name = name
        base = Path(os.environ.get("FLANNELETTE_LAB_STATE", DEFAULT_STATE))
        self.state_dir = Path(state_dir) if state_dir else base / name
        if inventory_path is None:
            inventory_path = (PROJECT_ROOT / "inventory" / "lab.py"
                              if name == DEFAULT_NAME
                              else self.state_dir / "inventory.py")
        self.inventory_path = Path(inventory_path)
        self.key_path = self.state_dir / "id_ed25519"
        self.boot_timeout = boot_timeout
        self.log = log

    # -- queries ---------------------------------------------------------

    def hosts(self):
        """[(name, address)] of the lab's hosts, node1 first."""
        return [(h.name, h.address) for h in self._planned(self._load())]

    def status(self):
        """[(name, address, sshd answers)] of the lab's hosts."""
        return [(name, addr, ssh.answers(addr, self.key_path))
                for name, addr in self.hosts()]

    def processes(self):
        """[(name, pid, start time)] of the hosts' systemd-nspawn processes."""
        state = self._load() or self._new_state()
        return [(name, e["pid"], e["started"])
                for name, e in state["hosts"].items() if e["pid"]]

    def connect(self, name):
        """A paramiko SSHClient logged in to host `name` as root; close it."""
        return ssh.connect(self._address(name), self.key_path)

    def run(self, name, command, timeout=60):
        """Run `command` (a shell string, or an argv list) on host `name` over
        SSH: a CompletedProcess with returncode, stdout, stderr."""
        if not isinstance(command, str):
            command = shlex.join(command)
        client = self.connect(name)
        try:
            return ssh.run(client, command, timeout=timeout)
        finally:
            client.close()

    def run_attached(self, name, command, stdin, stdout, stderr):
        """Run `command` (a shell string) on host `name` as `ssh` does, with
        these streams as its own; its exit code."""
        client = self.connect(name)
        try:
            return ssh.run_attached(client, command, stdin, stdout, stderr)
        finally:
            client.close()

    def _address(self, name):
        for host_name, address in self.hosts():
            if host_name == name:
                return address
        known = ", ".join(n for n, _ in self.hosts()) or "none; run `up` first"
        raise LabError(f"{name}: no such host in lab {self.name!r} (hosts: {known})")

    # -- up --------------------------------------------------------------

    def up(self, hosts=DEFAULT_HOSTS):
        """Bring up node1..node`hosts`, keeping any already running; return
        [(name, address)] of all the lab's hosts."""
        wanted = self.plan.hosts(hosts)
        _preflight(need_debootstrap=not rootfs.rootfs_path().is_dir())
        lower = rootfs.ensure(log=self.log)
        state = self._load()
        network.check_network_free(self.plan)
        fresh = state is None
        state = state or self._new_state()
        booted = []
        try:
            self._up(state, wanted, lower, booted)
        except BaseException as err:
            kept = self._keep_logs(booted)
            self._undo(fresh, booted, state)
            if isinstance(err, OSError):  # e.g. the state directory's disk is full
                err = LabError(f"{err.strerror} ({err.filename or self.state_dir})")
            if isinstance(err, LabError) and kept:
                err = LabError(f"{err}\nconsole logs kept in {kept}")
            raise err from None
        return self.hosts()

    def _up(self, state, wanted, lower, booted):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ssh.ensure_key(self.key_path, f"flannelette-lab-{self.name}")
        network.ensure_bridge(self.plan)
        raised = hostmod.ensure_inotify_instances(len(wanted))
        if raised:
            self.log(f"fs.inotify.max_user_instances raised to {raised}, for {len(wanted)} booted hosts")
        for host in wanted:
            if not self._is_running(state, host):
                booted.append(host)
                self._boot(state, host, lower)
        for host in booted:
            entry = state["hosts"][host.name]
            hostmod.wait_ready(host, entry["pid"], entry["started"], self.key_path,
                               self._console_log(host), self.boot_timeout)
            self.log(f"{host.name} {host.address}: up")
        inventory.write(self.inventory_path, inventory.render(
            self.name, self.hosts(), self.key_path))

    def _boot(self, state, host, lower):
        hdir = hostmod.host_dir(self.state_dir, host)
        state["hosts"][host.name] = {"pid": None, "started": None}
        self._save(state)  # recorded before it exists, so `down` finds it
        network.ensure_host_link(self.plan, host, self.underlay)
        root = hostmod.mount_layer(lower, hdir, f"flannelette-lab-{host.netns}")
        hostmod.personalise(root, host, ssh.public_key(self.key_path))
        pid, started = hostmod.start(host, root, self._console_log(host))
        state["hosts"][host.name].update(pid=pid, started=started)
        self._save(state)

    def _is_running(self, state, host):
        entry = state["hosts"].get(host.name)
        return bool(entry and entry["pid"]
                    and hostmod.is_running(entry["pid"], entry["started"]))

    def _console_log(self, host):
        return hostmod.host_dir(self.state_dir, host) / "console.log"

    def _keep_logs(self, hosts):
        """Copy console logs of hosts that failed to come up to the cache."""
        kept = rootfs.cache_dir() / "logs"
        logs = [(h, self._console_log(h)) for h in hosts]
        logs = [(h, p) for h, p in logs if p.is_file()]
        for host, path in logs:
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, kept / f"{self.name}-{host.name}.console.log")
        return kept if logs else None

    def _undo(self, fresh, booted, state):
        """After a failed `up`: a new lab goes entirely, an existing one loses
        only the hosts this `up` added."""
        if fresh:
            self.down(grace=FAILED_BOOT_GRACE)
            return
        self._remove_hosts(state, booted, grace=FAILED_BOOT_GRACE)
        self._save(state)

    # -- down ------------------------------------------------------------

    def down(self, grace=30):
        """Remove everything `up` made; the rootfs cache stays. Hosts get
        `grace` seconds to power off before they are killed."""
        state = self._load() or self._new_state()
        hosts = self._planned(state) + self._stray_hosts(state)
        survivors = self._remove_hosts(state, hosts, grace)
        network.remove_bridge(self.plan)
        inventory.remove(self.inventory_path)
        rootfs.remove_tree(self.state_dir)
        if survivors:
            raise LabError(f"lab {self.name!r}: processes survived SIGKILL: "
                           f"{survivors}")

    def _remove_hosts(self, state, hosts, grace):
        entries = [state["hosts"].get(h.name) for h in hosts]
        survivors = hostmod.stop_all(
            [(e["pid"], e["started"]) for e in entries if e and e["pid"]], grace)
        for host in hosts:
            survivors += hostmod.end_guest(host)
            hostmod.remove_layer(host, hostmod.host_dir(self.state_dir, host))
            network.remove_host_link(host)
            state["hosts"].pop(host.name, None)
        return survivors

    def _stray_hosts(self, state):
        """Hosts whose namespace or cgroup exists but that the state doesn't know."""
        prefix = f"{self.name}-node"
        found = network.netns_list() + cgroup.groups(prefix)
        indexes = {ns[len(prefix):] for ns in found if ns.startswith(prefix)}
        return [self.plan.host(int(i)) for i in sorted(filter(str.isdigit, indexes), key=int)
                if f"node{i}" not in state["hosts"]]

    # -- state -----------------------------------------------------------

    def _new_state(self):
        return {"name": self.name, "network": str(self.plan.network), "hosts": {}}


def _preflight(need_debootstrap):
    """Everything `up` needs from the machine, all problems at once."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces, mounts, "
                        "systemd-nspawn)")
    missing = [pkg for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None
               and (tool != "debootstrap" or need_debootstrap)]
    if missing:
        problems.append("missing tools; install them with: apt-get install -y "
                        + " ".join(missing))
    if not os.path.exists("/dev/net/tun"):
        problems.append("/dev/net/tun: missing (load the tun module)")
    if problems:
        raise LabError("\n".join(problems))
