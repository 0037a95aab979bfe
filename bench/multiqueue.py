"""What a multi-queue flannel0 gives: the data path run once per TUN queue, each queue in its own process.

The runtime itself serves one queue. This measures the technique that takes
it past one core: flannel0 opened with IFF_MULTI_QUEUE once per queue (the
kernel hands each flow to one queue by its hash), one process per queue,
each with its own flannelette DataPath, receiving on a UDP socket of an
SO_REUSEPORT group on port 8285 and sending from a port of its own, so the
peer's group spreads the flows over its queues as well. Two namespace hosts
on a veth underlay, iperf3 with several parallel streams, against kernel
VXLAN with the same streams. Needs root, iperf3 and /dev/net/tun.

    sudo .venv/bin/python -m bench.multiqueue [--queues 1,2] [--streams 4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Dict, List

from bench.run import OVERLAY, UNDERLAY, UNDERLAY_MTU, VXLAN, Hosts, setup_vxlan, tcp, teardown_vxlan, wait_for_files
from flannelette.host.kernel import netlink, tun, udp
from flannelette.model.config import Lease
from flannelette.host.datapath.leases import LeaseTable
from flannelette.host.datapath.loop import TAKES_ALL, DataPath

NETWORK = IPv4Network("10.244.0.0/16")
SUBNETS = (IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24"))
PORT = 8285
TUN_NAME, BRIDGE_NAME = "flannel0", "cni0"
MTU = UNDERLAY_MTU - netlink.ENCAP_OVERHEAD
PR_SET_PDEATHSIG = 1


# -- one host: runs inside its namespace --------------------------------------------


def udp_socket(address: str, port: int) -> socket.socket:
    sock = udp.tunnel_socket(reuse_port=True)
    sock.bind((address, port))
    return sock


def set_up_links(index: int, fd: int, fast: bool) -> None:
    """flannel0 and cni0 as the runtime leaves them (addresses, route, MTU, offloads)."""
    own = SUBNETS[index]
    with netlink.IPRoute() as ipr:
        link = netlink.link_index(ipr, TUN_NAME)
        netlink.tune_tun_sysctls(TUN_NAME)
        netlink.limit_gso(ipr, link, 65000)
        netlink.ensure_up(ipr, link, MTU, 5000)
        tun.set_offload(fd, fast)
        netlink.ensure_addresses(ipr, link, [IPv4Interface((own.network_address, 32))])
        netlink.ensure_route(ipr, NETWORK, link)
        netlink.ensure_bridge(ipr, BRIDGE_NAME)
        bridge = netlink.link_index(ipr, BRIDGE_NAME)
        netlink.ensure_addresses(ipr, bridge, [IPv4Interface((own.network_address + 1, own.prefixlen))])
        netlink.ensure_up(ipr, bridge, MTU)


def serve_queue(index: int, fd: int, recv: socket.socket, send, fast: bool) -> None:
    """One queue's data path, until SIGTERM."""
    leases = [Lease(f"bench{i}", subnet, IPv4Address(UNDERLAY[i])) for i, subnet in enumerate(SUBNETS)]
    table = LeaseTable(leases[index], leases, SUBNETS[0].prefixlen, PORT, force_flannel=not fast)
    path = DataPath(fd, recv, table, MTU, SUBNETS[index].network_address, time.monotonic, send_sock=send,
                    set_offload=lambda on: tun.set_offload(fd, on))
    # Each queue is a process with an exchange of its own, and an answer would reach whichever queue the
    # peer's kernel picks: the bench runs both ends, so it tells each queue what the other end takes.
    for peer in table.peers():
        path.exchanges.assume(peer, TAKES_ALL)
    path.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    path.stop()


def host(index: int, queues: int, fast: bool, ready: str) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    fds = [tun.open_tun(TUN_NAME, multi_queue=True) for _ in range(queues)]
    set_up_links(index, fds[0], fast)
    address = UNDERLAY[index]
    receivers = [udp_socket(address, PORT) for _ in range(queues)]
    senders = [udp_socket(address, 0) for _ in range(queues)] if queues > 1 else [None]
    children = []
    for queue in range(1, queues):
        pid = os.fork()
        if pid == 0:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            serve_queue(index, fds[queue], receivers[queue], senders[queue], fast)
            os._exit(0)
        children.append(pid)
    with open(ready + ".tmp", "w") as f:
        json.dump([os.getpid()] + children, f)
    os.rename(ready + ".tmp", ready)
    try:
        serve_queue(index, fds[0], receivers[0], senders[0], fast)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


# -- the measurement ------------------------------------------------------------------


def start_hosts(hosts: Hosts, queues: int, mode: str) -> List[int]:
    ready = [os.path.join(hosts.workdir, f"ready-{queues}-{mode}-{i}.json") for i in range(2)]
    procs = [hosts.spawn(name, sys.executable, "-m", "bench.multiqueue", "host", "--index", str(i),
                         "--queues", str(queues), "--mode", mode, "--ready", ready[i],
                         log=f"multiqueue-{queues}-{mode}-{i}.log")
             for i, name in enumerate(hosts.names)]
    wait_for_files(ready, procs)
    pids = []
    for path in ready:
        with open(path) as f:
            pids += json.load(f)
    return procs, pids


def run(queue_counts: List[int], streams: int, seconds: int, mode: str) -> Dict[str, Dict[str, float]]:
    hosts = Hosts(f"fq{os.getpid() % 10000}")
    results = {}
    try:
        hosts.build()
        setup_vxlan(hosts)
        results[f"vxlan, {streams} streams"] = tcp(hosts, VXLAN[1], seconds, streams=streams)
        teardown_vxlan(hosts)
        for queues in queue_counts:
            procs, pids = start_hosts(hosts, queues, mode)
            hosts.spawn(hosts.names[0], "ping", "-q", "-c", "3", "-I", OVERLAY[0], OVERLAY[1]).wait()
            results[f"{mode}, {queues} queue{'s' if queues > 1 else ''}, {streams} streams"] = \
                tcp(hosts, OVERLAY[1], seconds, pids, streams)
            for proc in procs:
                hosts.stop(proc)
    finally:
        hosts.close()
    return results


def render(results: Dict[str, Dict[str, float]]) -> str:
    base = next(iter(results.values()))["gbits"]
    width = max(map(len, results))
    lines = [f"{'path':{width}}  TCP Gbit/s  / vxlan  TCP retr  CPU s/Gbit"]
    for path, r in results.items():
        cpu = f"{r['cpu_per_gbit']:.3f}" if "cpu_per_gbit" in r else "-"
        lines.append(f"{path:{width}}  {r['gbits']:10.2f}  {r['gbits'] / base:7.2f}  {r['retransmits']:8d}  {cpu:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multiqueue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("host", help="(internal) one host's queues, inside its namespace")
    one.add_argument("--index", type=int, required=True)
    one.add_argument("--queues", type=int, required=True)
    one.add_argument("--mode", choices=("fast", "flannel"), required=True)
    one.add_argument("--ready", required=True)
    parser.add_argument("--queues", default="1,2", help="queue counts to measure, comma-separated (default 1,2)")
    parser.add_argument("--streams", type=int, default=4, help="parallel iperf3 streams (default 4)")
    parser.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run (default 5)")
    parser.add_argument("--mode", choices=("fast", "flannel"), default="fast", help="wire format (default fast)")
    args = parser.parse_args(argv)
    if args.command == "host":
        host(args.index, args.queues, args.mode == "fast", args.ready)
        return 0
    if os.geteuid() != 0:
        print("bench.multiqueue needs root, iperf3 and /dev/net/tun", file=sys.stderr)
        return 2
    results = run([int(q) for q in args.queues.split(",")], args.streams, args.seconds, args.mode)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
