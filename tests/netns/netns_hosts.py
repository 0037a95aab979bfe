"""Namespaces as hosts: an underlay switch, hosts running `flannelette run`, pods on cni0.

Everything a test makes is named with a per-run prefix and removed by name or
PID when the test ends, pass or fail.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Network

import pytest

from flannelette.host import metrics
from lab import wire

CLONE_NEWNET = 0x40000000
UNDERLAY = IPv4Network("192.168.60.0/24")
FAR_UNDERLAY = IPv4Network("192.168.61.0/24")  # beyond a router, for a path with a smaller MTU
UPLINK = ("10.255.255.1", "10.255.255.2")
NETWORK = IPv4Network("10.244.0.0/16")
HEALTHZ = "127.0.0.1:8286"
OUTSIDER_IP = "192.168.60.99"
READY_TIMEOUT = 60.0


def pytest_collection_modifyitems(config, items):
    reason = None
    if os.geteuid() != 0:
        reason = "netns tests need root (they create network namespaces and TUN devices)"
    elif not os.path.exists("/dev/net/tun"):
        reason = "netns tests need /dev/net/tun"
    elif not shutil.which("ip"):
        reason = "netns tests need iproute2's ip"
    if reason:
        for item in items:
            if "netns" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def sh(*argv, check=True, timeout=60, **kwargs):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def flannelette_command():
    script = shutil.which("flannelette") or os.path.join(os.path.dirname(sys.executable), "flannelette")
    return [script]


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The last release before the fast format became segments: it sends frames, and never answers a hello.
PREVIOUS_RELEASE = "a0272de"


def previous_release(workdir, commit=PREVIOUS_RELEASE):
    """The command that runs the runtime as of `commit`, built from this repository's history; None without it."""
    if sh("git", "-C", ROOT, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        return None
    tree = os.path.join(workdir, f"release-{commit}")
    os.makedirs(tree, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "runtime", "schemas"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    shutil.copytree(os.path.join(tree, "schemas"), os.path.join(tree, "runtime", "flannelette", "schemas"))
    # Its package first on the path: the installed dependencies serve both builds.
    return ["env", f"PYTHONPATH={os.path.join(tree, 'runtime')}", sys.executable, "-m", "flannelette"]


def eventually(condition, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    return condition()


_libc = ctypes.CDLL(None, use_errno=True)


def in_namespace(ns, make):
    """Run `make()` in a thread moved into namespace `ns`; sockets it creates stay there."""
    out = {}

    def enter():
        try:
            with open(f"/run/netns/{ns}") as f:
                if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            out["value"] = make()
        except BaseException as e:  # handed to the caller
            out["error"] = e

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class Notifications:
    """A NOTIFY_SOCKET the test reads, as systemd would."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.seen = []

    def wait_for(self, state, timeout=READY_TIMEOUT, after=0):
        """Wait until message number > `after` contains `state`; the index of that message."""
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.seen[after:], after):
                if state in message.split("\n"):
                    return i + 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {state} within {timeout}s; got {self.seen}")
            self.sock.settimeout(remaining)
            try:
                self.seen.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self):
        self.sock.close()


class Host:
    def __init__(self, cluster, index, far=False):
        self.cluster, self.index, self.far = cluster, index, far
        self.name = f"node{index}"
        self.ns = f"{cluster.prefix}h{index}"
        self.public_ip = str((FAR_UNDERLAY if far else UNDERLAY).network_address + 10 + index)
        self.subnet = IPv4Network(f"10.244.{index}.0/24")
        self.gateway = str(self.subnet.network_address + 1)
        self.subnet_file = os.path.join(cluster.workdir, f"{self.name}.env")
        self.proc = None
        self.log_path = os.path.join(cluster.workdir, f"{self.name}.log")
        self.notes = None
        self.pods = 0
        self.wire = None  # "flannel" marks a flanneld host in leases.json
        self.private_key = None  # its key file, once make_key() made one
        self.public_key = None

    def make_key(self):
        """A key for this host, made as a host makes it (`flannelette keygen`); its public half goes in the lease."""
        self.private_key = os.path.join(self.cluster.workdir, f"{self.name}.key")
        self.public_key = sh(*flannelette_command(), "keygen", "--private-key", self.private_key).stdout.strip()
        return self.public_key

    def lease(self):
        lease = {"host": self.name, "subnet": str(self.subnet), "public_ip": self.public_ip}
        if self.wire:
            lease["wire"] = self.wire
        if self.public_key:
            lease["public_key"] = self.public_key
        return lease

    def run(self, *argv, check=True, timeout=60):
        return sh("ip", "netns", "exec", self.ns, *argv, check=check, timeout=timeout)

    def start(self, *extra, wait=True, ip_masq=True, release=None):
        """Run the runtime here; `release`: the command of another build (previous_release) instead of this one."""
        if self.notes:
            self.notes.close()
        socket_path = os.path.join(self.cluster.workdir, f"{self.name}-{time.monotonic_ns()}.notify")
        self.notes = Notifications(socket_path)
        argv = ["ip", "netns", "exec", self.ns] + (release or flannelette_command()) + [
            "run", "--net-conf", self.cluster.net_conf, "--leases", self.cluster.leases,
            "--public-ip", self.public_ip, "--subnet-file", self.subnet_file, "--healthz", HEALTHZ,
        ] + (["--ip-masq"] if ip_masq else []) + (["--private-key", self.private_key] if self.private_key else []) \
            + list(extra)
        env = dict(os.environ, NOTIFY_SOCKET=socket_path)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.cluster.pids.append(self.proc)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self):
        try:
            self.notes.wait_for("READY=1")
        except AssertionError:
            raise AssertionError(f"{self.name} did not become ready:\n{self.log()}") from None

    def signal(self, signum):
        self.proc.send_signal(signum)

    def reload(self):
        """SIGHUP, and back once the runtime has said RELOADING=1 and then READY=1."""
        seen = len(self.notes.seen)
        self.signal(signal.SIGHUP)
        after = self.notes.wait_for("RELOADING=1", after=seen)
        self.notes.wait_for("READY=1", after=after)

    def stop(self, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def teardown(self):
        """`flannelette teardown` here: what a stop left, removed."""
        return self.run(*flannelette_command(), "teardown", check=False)

    def overlay_route(self):
        """The route of the overlay's network here, as `ip route` prints it ('' when there is none)."""
        return self.run("ip", "route", "show", str(NETWORK)).stdout.strip()

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def fetch(self, path):
        code = (
            "import urllib.request, urllib.error, sys\n"
            "try:\n"
            f"    r = urllib.request.urlopen('http://{HEALTHZ}{path}', timeout=10); sys.stdout.write(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    sys.stdout.write(e.read().decode()); sys.exit(3)\n"
        )
        return self.run(sys.executable, "-c", code, check=False)

    def metrics(self):
        samples = metrics.parse(self.fetch("/metrics").stdout)
        return {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples}

    def drops(self, reason):
        return self.metrics().get(("flannelette_drops_total", (("reason", reason),)), 0)

    def metric(self, name, **labels):
        return self.metrics().get((f"flannelette_{name}", tuple(sorted(labels.items()))), 0)

    def links(self):
        return {line.split()[0].split("@")[0] for line in self.run("ip", "-br", "link").stdout.splitlines()}

    def ping(self, target, source=None, count=1, timeout=2):
        argv = ["ping", "-c", str(count), "-W", str(timeout)] + (["-I", source] if source else []) + [target]
        return self.run(*argv, check=False, timeout=count * timeout + 10).returncode == 0

    def add_pod(self, suffix="p"):
        """A container: a namespace on this host's cni0 with the subnet's next free address."""
        pod = f"{self.ns}{suffix}"
        host_end = f"{self.cluster.prefix}{self.index}{suffix}"[:15]
        sh("ip", "netns", "add", pod)
        self.cluster.namespaces.append(pod)
        sh("ip", "link", "add", host_end, "netns", self.ns, "type", "veth", "peer", "name", "eth0", "netns", pod)
        self.run("ip", "link", "set", host_end, "master", "cni0", "up")
        self.pods += 1
        address = str(self.subnet.network_address + 10 + self.pods)
        for argv in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", f"{address}/24", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"], ["ip", "route", "add", "default", "via", self.gateway]):
            sh("ip", "netns", "exec", pod, *argv)
        return pod, address


class Cluster:
    """An underlay switch namespace with a bridge, and hosts plugged into it.

    `underlay` is "wire" (lab.wire: every datagram cut in software before it
    crosses, as on a real network) or "veth" (GSO buffers cross whole); `gro`
    whether each host's eth0 joins datagrams again on receipt.
    """

    def __init__(self, prefix, workdir, underlay="wire", gro=False):
        self.prefix, self.workdir = prefix, workdir
        self.underlay, self.gro = underlay, gro
        self.switch = f"{prefix}sw"
        self.far_switch = f"{prefix}sx"
        self.namespaces, self.pids, self.hosts = [], [], []
        self.net_conf = os.path.join(workdir, "net-conf.json")
        self.leases = os.path.join(workdir, "leases.json")
        self.path_mtu = None

    def build(self, count, net_conf=None, path_mtu=None, keys=False):
        """`count` hosts; with `path_mtu`, the last one beyond a router whose link to it has that MTU; with `keys`,
        each with a WireGuard key in its lease."""
        self._add_ns(self.switch)
        sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        if path_mtu:
            self._add_router(path_mtu)
        with open(self.net_conf, "w") as f:
            json.dump(net_conf or {"Network": str(NETWORK), "Backend": {"Type": "udp"}}, f)
        for i in range(count):
            host = self.add_host(far=bool(path_mtu) and i == count - 1)
            if keys:
                host.make_key()
        self.write_leases(self.hosts)
        return self.hosts

    def _add_router(self, mtu):
        """A second switch beyond a routed link of `mtu` bytes: datagrams that cross it are fragmented."""
        self.path_mtu = mtu
        self._add_ns(self.far_switch)
        sh("ip", "netns", "exec", self.far_switch, "ip", "link", "add", "br0", "type", "bridge")
        for ns, net in ((self.switch, UNDERLAY), (self.far_switch, FAR_UNDERLAY)):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net.network_address + 1}/24", "dev", "br0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "br0", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "link", "add", "uplink", "netns", self.switch, "mtu", str(mtu), "type", "veth",
           "peer", "name", "uplink", "netns", self.far_switch, "mtu", str(mtu))
        for ns, address, other, far in ((self.switch, UPLINK[0], UPLINK[1], FAR_UNDERLAY),
                                         (self.far_switch, UPLINK[1], UPLINK[0], UNDERLAY)):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/30", "dev", "uplink")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "uplink", "up")
            sh("ip", "netns", "exec", ns, "ip", "route", "add", str(far), "via", other)
            self._as_wire(ns, "uplink", receiving=False)

    def _as_wire(self, ns, device, receiving):
        commands = wire.cut_in_software(device) if self.underlay == "wire" else []
        if receiving:
            commands += wire.receive_gro(device, self.gro)
        for argv in commands:
            sh("ip", "netns", "exec", ns, *argv)

    def set_gro(self, on):
        """Receive GRO on or off at every host's eth0."""
        self.gro = on
        for host in self.hosts:
            for argv in wire.receive_gro("eth0", on):
                sh("ip", "netns", "exec", host.ns, *argv)

    def set_loss(self, probability):
        """Drop this share of the underlay's UDP datagrams, each on its own, in the switches (0: none)."""
        for ns in [self.switch] + ([self.far_switch] if self.path_mtu else []):
            sh("ip", "netns", "exec", ns, *wire.no_loss()[0], check=False)
            if probability:
                for argv in wire.loss(probability):
                    sh("ip", "netns", "exec", ns, *argv)

    def _add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def plug(self, ns, address, far=False):
        switch = self.far_switch if far else self.switch
        port = f"{ns}u"[-15:]
        sh("ip", "link", "add", port, "netns", switch, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "netns", "exec", switch, "ip", "link", "set", port, "master", "br0", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        self._as_wire(switch, port, receiving=False)
        self._as_wire(ns, "eth0", receiving=True)
        if self.path_mtu:
            near, other = (FAR_UNDERLAY, UNDERLAY) if far else (UNDERLAY, FAR_UNDERLAY)
            sh("ip", "netns", "exec", ns, "ip", "route", "add", str(other), "via", str(near.network_address + 1))

    def add_host(self, far=False):
        host = Host(self, len(self.hosts) + 1, far=far)
        self._add_ns(host.ns)
        self.plug(host.ns, host.public_ip, far=far)
        self.hosts.append(host)
        return host

    def spawn(self, ns, *argv):
        """A background process in `ns`, stopped by PID when the test ends."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pids.append(proc)
        return proc

    def ping(self, ns, target, timeout=20.0):
        """True once `target` answers a ping from `ns`, polling up to `timeout`."""
        return eventually(
            lambda: sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", target, check=False).returncode == 0,
            timeout=timeout,
        )

    def add_outsider(self):
        ns = f"{self.prefix}out"
        self._add_ns(ns)
        self.plug(ns, OUTSIDER_IP)
        return ns

    def write_leases(self, hosts, extra=None):
        document = {"leases": [h.lease() for h in hosts] + (extra or [])}
        temp = self.leases + ".tmp"
        with open(temp, "w") as f:
            json.dump(document, f)
        os.replace(temp, self.leases)

    def close(self):
        for proc in self.pids:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for host in self.hosts:
            if host.notes:
                host.notes.close()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


_counter = [0]


@pytest.fixture
def underlay(request):
    """The underlay of a test's cluster: "wire" unless a module asks for both (DATA_PATH = True)."""
    return getattr(request, "param", "wire")


def pytest_generate_tests(metafunc):
    # The data-path tests run on both underlays: as a real network behaves, and as veth does.
    if getattr(metafunc.module, "DATA_PATH", False) and "cluster" in metafunc.fixturenames:
        metafunc.parametrize("underlay", wire.MODES, indirect=True)


@pytest.fixture
def cluster(tmp_path, underlay):
    _counter[0] += 1
    made = Cluster(f"ft{os.getpid() % 1000}{_counter[0]}", str(tmp_path), underlay=underlay)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def three(cluster):
    """Three hosts on the underlay, each running flannelette and ready."""
    hosts = list(cluster.build(3))  # a copy: hosts added later join cluster.hosts only
    for host in hosts:
        host.start()
    return hosts
