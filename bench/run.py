"""Throughput and latency through flannelette against kernel VXLAN, Debian's wireguard-go and the bare underlay, in one run.

Two network namespaces play two hosts, plugged into a bridge in a third (the
switch). Each path is measured in turn with iperf3 (TCP Gbit/s and
retransmits, UDP packets per second at two payload sizes) and ping (RTT);
for flannelette also the CPU time of both runtimes per gigabit carried.
flannelette runs in three modes: fast (segments, between flannelette
hosts, once the capability exchange has agreed on them), flannel
(Backend.Wire flannel: one packet per datagram, nothing added) and encrypted
(both hosts with keys: WireGuard's sessions, sealed units; docs/encryption.md).
wireguard-go runs between the same two hosts, on the same underlay.

Every path is measured on each underlay, wire first (lab.wire): "wire"
(segmentation offloads off everywhere, so every path, VXLAN included, is cut
into datagrams in software before it crosses, as on a real network) with
receive GRO off, then on, then on with --loss of the datagrams dropped one
by one in the switch (TCP only); and "veth" (GSO buffers cross whole). The
table gives each TCP figure's ratio to VXLAN on the same underlay, and
starts with the CPU it ran on: ratios differ between machines. Needs root,
iperf3, ethtool, nft and /dev/net/tun.

    sudo .venv/bin/python -m bench [--seconds 5] [--loss 0.01] [--underlays wire,wire-gro,wire-loss,veth]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from lab import wire

UNDERLAY = ("192.168.250.1", "192.168.250.2")
DEVICE = "eth0"  # each host's interface on the switch
VXLAN = ("10.250.0.1", "10.250.0.2")
OVERLAY = ("10.244.1.1", "10.244.2.1")  # the cni0 gateways of the two hosts
UNDERLAY_MTU = 1500
VXLAN_ID, VXLAN_PORT = 4242, 4789
UDP_PAYLOADS = (64, 1400)
MODES = ("fast", "flannel", "encrypted")  # flannelette's wire modes, each a path of the bench
WIREGUARD = ("10.251.0.1", "10.251.0.2")  # wireguard-go's wg0 on each host
WG_PORT = 51820
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sh(*argv: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def in_ns(ns: str, *argv: str, **kwargs) -> str:
    return sh("ip", "netns", "exec", ns, *argv, **kwargs)


class Hosts:
    """Two namespaces on a switch; everything made is removed by name or PID in close()."""

    def __init__(self, prefix: str):
        self.names = (f"{prefix}a", f"{prefix}b")
        self.switch = f"{prefix}s"
        self.ports = (f"{prefix}pa", f"{prefix}pb")
        self.processes: List[subprocess.Popen] = []
        self.workdir = tempfile.mkdtemp(prefix="flannelette-bench-")

    def build(self) -> None:
        for name in (self.switch,) + self.names:
            sh("ip", "netns", "add", name)
            in_ns(name, "ip", "link", "set", "lo", "up")
        in_ns(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(self.switch, "ip", "link", "set", "br0", "up")
        for name, port, address in zip(self.names, self.ports, UNDERLAY):
            sh("ip", "link", "add", port, "netns", self.switch, "mtu", str(UNDERLAY_MTU), "type", "veth",
               "peer", "name", DEVICE, "netns", name, "mtu", str(UNDERLAY_MTU))
            in_ns(self.switch, "ip", "link", "set", port, "master", "br0", "up")
            in_ns(name, "ip", "addr", "add", f"{address}/24", "dev", DEVICE)
            in_ns(name, "ip", "link", "set", DEVICE, "up")

    def underlay(self, kind: str, gro: bool, loss: float) -> None:
        """Make the underlay a wire ("wire": cut in software) or leave GSO buffers whole ("veth")."""
        on = kind != "wire"
        for ns, device in [(self.switch, port) for port in self.ports] + [(name, DEVICE) for name in self.names]:
            features = [word for feature in wire.OFFLOADS for word in (feature, "on" if on else "off")]
            in_ns(ns, "ethtool", "-K", device, *features)
        for name in self.names:
            for argv in wire.receive_gro(DEVICE, gro):
                in_ns(name, *argv)
        in_ns(self.switch, *wire.no_loss()[0], check=False)
        if loss:
            for argv in wire.loss(loss):
                in_ns(self.switch, *argv)

    def spawn(self, ns: str, *argv: str, log: Optional[str] = None) -> subprocess.Popen:
        out = open(os.path.join(self.workdir, log), "w") if log else subprocess.DEVNULL
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.processes:
            self.stop(proc)
        for name in self.names + (self.switch,):
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- measurements -----------------------------------------------------------------


def iperf(hosts: Hosts, server: str, *args: str, seconds: int) -> dict:
    a, b = hosts.names
    srv = hosts.spawn(b, "iperf3", "-s", "-1", "-B", server)
    time.sleep(0.5)
    try:
        out = in_ns(a, "iperf3", "-c", server, "-t", str(seconds), "-J", *args, timeout=seconds + 60)
    finally:
        hosts.stop(srv)
    return json.loads(out)


def tcp(hosts: Hosts, server: str, seconds: int, runtimes: List[int] = (), streams: int = 1) -> Dict[str, float]:
    """TCP throughput, retransmits and, given the runtimes' PIDs, their CPU seconds per gigabit."""
    before = cpu_seconds(runtimes)
    end = iperf(hosts, server, "-P", str(streams), seconds=seconds)["end"]
    used = cpu_seconds(runtimes) - before
    received = end["sum_received"]
    result = {"gbits": received["bits_per_second"] / 1e9, "retransmits": end["sum_sent"].get("retransmits", 0)}
    if runtimes:
        # iperf3's server starts half a second early and stops a little late: the
        # runtimes' CPU in those moments is idle polling, small against the run.
        result["cpu_per_gbit"] = used / (received["bytes"] * 8 / 1e9)
    return result


def cpu_seconds(pids: List[int]) -> float:
    """utime + stime of the processes, all their threads included."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLOCK_TICKS


def udp_pps(hosts: Hosts, server: str, payload: int, seconds: int) -> float:
    """Packets per second that arrive, with the sender unthrottled."""
    end = iperf(hosts, server, "-u", "-b", "0", "-l", str(payload), seconds=seconds)["end"]
    total = end["sum"]
    received = total["packets"] - total.get("lost_packets", 0)
    return received / total["seconds"]


def ping_rtt(hosts: Hosts, target: str, source: Optional[str] = None) -> float:
    argv = ["ping", "-q", "-c", "50", "-i", "0.02"] + (["-I", source] if source else []) + [target]
    out = in_ns(hosts.names[0], *argv)
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def measure(hosts: Hosts, server: str, source: Optional[str], seconds: int, runtimes: List[int] = ()) -> Dict[str, float]:
    ping_rtt(hosts, server, source)  # warm up ARP and the peers
    result = {"rtt_ms": ping_rtt(hosts, server, source)}
    result.update(tcp(hosts, server, seconds, runtimes))
    for size in UDP_PAYLOADS:
        result[f"pps_{size}"] = udp_pps(hosts, server, size, seconds)
    return result


def measure_tcp(hosts: Hosts, server: str, source: Optional[str], seconds: int,
                runtimes: List[int] = ()) -> Dict[str, float]:
    """TCP and RTT only (the loss runs)."""
    result = {"rtt_ms": ping_rtt(hosts, server, source)}
    result.update(tcp(hosts, server, seconds, runtimes))
    return result


# -- the three paths ----------------------------------------------------------------


def setup_vxlan(hosts: Hosts) -> None:
    for i, name in enumerate(hosts.names):
        in_ns(name, "ip", "link", "add", "fbenchvx", "type", "vxlan", "id", str(VXLAN_ID), "dstport", str(VXLAN_PORT),
              "local", UNDERLAY[i], "remote", UNDERLAY[1 - i], "dev", DEVICE)
        in_ns(name, "ip", "addr", "add", f"{VXLAN[i]}/24", "dev", "fbenchvx")
        in_ns(name, "ip", "link", "set", "fbenchvx", "up")


def teardown_vxlan(hosts: Hosts) -> None:
    for name in hosts.names:
        in_ns(name, "ip", "link", "del", "fbenchvx", check=False)


def flannelette_command() -> List[str]:
    script = shutil.which("flannelette") or os.path.join(os.path.dirname(sys.executable), "flannelette")
    if os.path.exists(script):
        return [script, "run"]
    return [sys.executable, "-m", "flannelette.host.daemon"]


def setup_wireguard_go(hosts: Hosts) -> List[subprocess.Popen]:
    """Debian's wireguard-go on both hosts, each the other's peer, on the same underlay."""
    keys = [sh("wg", "genkey").strip() for _ in hosts.names]
    publics = [subprocess.run(["wg", "pubkey"], input=k + "\n", capture_output=True, text=True, check=True).stdout.strip()
               for k in keys]
    procs = []
    for i, name in enumerate(hosts.names):
        device = f"fbenchwg{i}"  # wireguard-go's control socket is a file: a name of its own on each host
        key_file = os.path.join(hosts.workdir, f"wg-{i}.key")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(keys[i] + "\n")
        procs.append(hosts.spawn(name, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", device,
                                 log=f"wireguard-go-{i}.log"))
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", name, "wg", "show", device], capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("wireguard-go did not make its device")
            time.sleep(0.1)
        in_ns(name, "wg", "set", device, "private-key", key_file, "listen-port", str(WG_PORT), "peer",
              publics[1 - i], "endpoint", f"{UNDERLAY[1 - i]}:{WG_PORT}", "allowed-ips", f"{WIREGUARD[1 - i]}/32")
        in_ns(name, "ip", "addr", "add", f"{WIREGUARD[i]}/24", "dev", device)
        in_ns(name, "ip", "link", "set", device, "mtu", str(UNDERLAY_MTU - 60), "up")
    return procs


def start_flannelette(hosts: Hosts, mode: str) -> List[subprocess.Popen]:
    """Both runtimes in `mode`: fast (unencrypted), flannel (Backend.Wire flannel), encrypted (keys: sealed)."""
    from flannelette.host.datapath import crypto

    conf = os.path.join(hosts.workdir, "net-conf.json")
    leases = os.path.join(hosts.workdir, "leases.json")
    key_files = [os.path.join(hosts.workdir, f"key-{i}") for i in range(2)]
    publics = [crypto.keygen(path) for path in key_files] if mode == "encrypted" else [None, None]
    backend = {"Type": "udp", "Wire": "flannel"} if mode == "flannel" else {"Type": "udp"}
    for i in range(2):  # a fresh subnet.env tells when each runtime is up
        if os.path.exists(os.path.join(hosts.workdir, f"subnet-{i}.env")):
            os.remove(os.path.join(hosts.workdir, f"subnet-{i}.env"))
    with open(conf, "w") as f:
        json.dump({"Network": "10.244.0.0/16", "Backend": backend}, f)
    with open(leases, "w") as f:
        json.dump({"leases": [
            dict({"host": f"bench{i}", "subnet": f"10.244.{i + 1}.0/24", "public_ip": ip},
                 **({"public_key": publics[i]} if publics[i] else {})) for i, ip in enumerate(UNDERLAY)
        ]}, f)
    procs = []
    for i, name in enumerate(hosts.names):
        env_file = os.path.join(hosts.workdir, f"subnet-{i}.env")
        procs.append(hosts.spawn(name, *flannelette_command(), "--net-conf", conf, "--leases", leases,
                                 "--public-ip", UNDERLAY[i], "--subnet-file", env_file,
                                 *(["--private-key", key_files[i]] if publics[i] else []),
                                 log=f"flannelette-{mode}-{i}.log"))
    wait_for_files([os.path.join(hosts.workdir, f"subnet-{i}.env") for i in range(2)], procs)
    return procs


def wait_for_files(paths: List[str], procs: List[subprocess.Popen], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError("flannelette did not come up; see its log in the bench work directory")
        time.sleep(0.1)


# -- report --------------------------------------------------------------------------

COLUMNS = [
    ("TCP Gbit/s", "gbits", "{:.2f}"),
    ("/ vxlan", "ratio", "{:.2f}"),
    ("TCP retr", "retransmits", "{:.0f}"),
    ("ping RTT ms", "rtt_ms", "{:.3f}"),
    ("UDP 64B pps", "pps_64", "{:,.0f}"),
    ("UDP 1400B pps", "pps_1400", "{:,.0f}"),
    ("CPU s/Gbit", "cpu_per_gbit", "{:.3f}"),
]


def render(results: Dict[str, Dict[str, float]]) -> str:
    """One row per path and underlay; each TCP figure's ratio to VXLAN on the same underlay."""
    header = ["path"] + [title for title, _, _ in COLUMNS]
    rows = [header]
    for path, figures in results.items():
        base = results.get("vxlan" + path[path.index(" "):] if " " in path else "vxlan", {})
        figures = dict(figures, ratio=figures["gbits"] / base["gbits"] if base.get("gbits") else None)
        rows.append([path] + [fmt.format(figures[key]) if figures.get(key) is not None else "-"
                              for _, key, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


# The underlays, in the order they are measured: (name, kind, receive GRO, with --loss).
UNDERLAYS = {
    "wire": ("wire", False, False),
    "wire-gro": ("wire", True, False),
    "wire-loss": ("wire", True, True),
    "veth": ("veth", False, False),
}


def run(seconds: int, paths: List[str], loss: float, underlays: List[str]) -> Dict[str, Dict[str, float]]:
    hosts = Hosts(f"fb{os.getpid() % 10000}")
    results: Dict[str, Dict[str, float]] = {}
    try:
        hosts.build()
        setup_vxlan(hosts)
        for name in underlays:
            kind, gro, lossy = UNDERLAYS[name]
            if lossy and not loss:
                continue
            hosts.underlay(kind, gro, loss if lossy else 0.0)
            label = f"{name} {loss:.0%}" if lossy else name
            measure_one = measure_tcp if lossy else measure
            if "underlay" in paths and not lossy:
                results[f"underlay {label}"] = measure(hosts, UNDERLAY[1], None, seconds)
            if "vxlan" in paths:
                results[f"vxlan {label}"] = measure_one(hosts, VXLAN[1], None, seconds)
            if "wireguard-go" in paths:
                procs = setup_wireguard_go(hosts)
                pids = [proc.pid for proc in procs]
                results[f"wireguard-go {label}"] = measure_one(hosts, WIREGUARD[1], None, seconds, pids)
                for proc in procs:
                    hosts.stop(proc)
            for mode in (m for m in MODES if m in paths):
                procs = start_flannelette(hosts, mode)
                pids = [proc.pid for proc in procs]  # ip netns exec execs the runtime: same PID
                results[f"{mode} {label}"] = measure_one(hosts, OVERLAY[1], OVERLAY[0], seconds, pids)
                for proc in procs:
                    hosts.stop(proc)
    finally:
        hosts.close()
    return results


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    return f"{os.uname().machine}, {os.cpu_count()} CPUs"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run (default 5)")
    parser.add_argument("--paths", default="underlay,vxlan,wireguard-go," + ",".join(MODES),
                        help="which paths, comma-separated (default: all: underlay, vxlan, wireguard-go, fast, "
                        "flannel, encrypted)")
    parser.add_argument("--loss", type=float, default=0.01,
                        help="share of underlay datagrams dropped in the wire-loss runs; 0 skips them (default 0.01)")
    parser.add_argument("--underlays", default=",".join(UNDERLAYS),
                        help=f"which underlays, comma-separated, in this order (default: {','.join(UNDERLAYS)})")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("iperf3", "ethtool", "nft") if not shutil.which(tool)]
    if os.geteuid() != 0 or missing:
        print("bench needs root, iperf3, ethtool and nft (apt-get install iperf3 ethtool nftables)", file=sys.stderr)
        return 2
    results = run(args.seconds, args.paths.split(","), args.loss, args.underlays.split(","))
    print(f"# {cpu_model()}")
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
