"""Leases at scale: how long the runtime takes to be ready and to apply a reload with a large lease table, its memory,
and the longest gap in forwarding while it reloads.

Two namespace hosts (tests/netns/netns_hosts) run flannelette with the two of
them plus generated leases (bench.leasegen: 10.0.0.0/8 cut into /24s). For
each size: the time from starting the runtime to its READY=1, from SIGHUP to
READY=1 again (the table with one lease added), the runtime's RSS after each,
and, while both hosts reload, a train of UDP datagrams (one a millisecond)
from one host's cni0 address to the other's: the longest time between two
arrivals, next to the longest in the second before the reloads. The
generated peers' addresses have no route in the namespaces, so their hellos
fail at once instead of going out. The runtime's bytecode is compiled
first, as a deployed host keeps it. Needs root and /dev/net/tun.

And `flannelette validate` and `plan` of a generated inventory (--hosts, 5,000
by default), wall and CPU time.

    sudo .venv/bin/python -m bench scale [--sizes 1000,10000,60000] [--keys] [--hosts 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from bench import leasegen
from bench.run import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "netns"))
from netns_hosts import Cluster, previous_release  # noqa: E402  (the netns tier's hosts)

TRAIN_PORT = 5299
TRAIN_INTERVAL = 0.001
ROUNDS = 3  # reloads under a train per size: the median reload time, the longest gap of all
RECEIVER = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
stamps = []
try:
    while True:
        s.recv(64); stamps.append(time.monotonic())
except socket.timeout:
    pass
print(json.dumps(stamps))
"""
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
end, interval, n = time.monotonic() + float(sys.argv[4]), float(sys.argv[5]), 0
while time.monotonic() < end:
    s.sendto(n.to_bytes(8, "big"), (sys.argv[2], int(sys.argv[3]))); n += 1
    time.sleep(interval)
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """A process's user + system time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compile_bytecode(release: Optional[list] = None) -> None:
    """The runtime's bytecode, compiled once, as a deployed host keeps it (flannelette.service's cache): without
    it (PYTHONDONTWRITEBYTECODE, a fresh tree) every start would compile the runtime's sources again."""
    tree = next((arg.split("=", 1)[1] for arg in release or [] if arg.startswith("PYTHONPATH=")), None)
    paths = [tree] if tree else [os.path.join(ROOT, "runtime"), os.path.join(ROOT, "schemas")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *paths], check=True, stdout=subprocess.DEVNULL)


def import_seconds() -> float:
    """The runtime's own imports: `import flannelette.host.daemon`, less an empty interpreter's start."""
    def timed(code: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True)
            best = min(best, time.monotonic() - start)
        return best
    return timed("import flannelette.host.daemon") - timed("pass")


def commands_seconds(count: int, commit: Optional[str] = None, runs: int = 3) -> Dict[str, tuple]:
    """`flannelette validate` and `plan` of a generated inventory of `count` hosts: (wall, CPU) ranges of `runs`
    runs each, CPU being the child's user + system time (the machine may be busy with others' work)."""
    figures = {}
    with tempfile.TemporaryDirectory(prefix="flannelette-inventory-") as workdir:
        release = previous_release(workdir, commit) if commit else None
        compile_bytecode(release)
        flannelette = release or [sys.executable, "-m", "flannelette"]
        path = os.path.relpath(leasegen.write_inventory(workdir, count), workdir)
        for command in ("validate", "plan"):
            walls, cpus = [], []
            for _ in range(runs):
                before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
                subprocess.run([*flannelette, command, path], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                walls.append(time.monotonic() - start)
                cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            figures[command] = (min(walls), max(walls), min(cpus), max(cpus))
    return figures


def longest_gap(stamps: List[float], start: float, end: float) -> float:
    """The longest time between two arrivals from just before `start` to just after `end`."""
    inside = [t for t in stamps if start - 10 * TRAIN_INTERVAL <= t <= end + 10 * TRAIN_INTERVAL]
    return max((b - a for a, b in zip(inside, inside[1:])), default=float("nan"))


def measure(count: int, keys: bool, workdir: str, commit: Optional[str] = None) -> Dict[str, float]:
    cluster = Cluster(f"fsc{os.getpid() % 1000}", workdir, underlay="veth")
    release = previous_release(workdir, commit) if commit else None
    compile_bytecode(release)
    try:
        a, b = cluster.build(2, net_conf=leasegen.net_conf(), keys=keys)
        real = [a.lease(), b.lease()]
        table = leasegen.generate(count - 2, keys=keys, taken=real)
        leasegen.write(cluster.leases, table)
        started = time.monotonic()
        a.start(release=release)
        figures = {"ready": time.monotonic() - started, "ready_cpu": cpu_seconds(a.proc.pid), "rss": rss_mb(a.proc.pid)}
        b.start(release=release)
        assert cluster.ping(a.ns, b.gateway), "no path between the two hosts"
        more = leasegen.generate(count - 1, keys=keys, taken=real)  # one lease added, then gone again
        figures.update(_reload_under_a_train(cluster, a, b, [more, table]))
        figures["rss_reloaded"] = rss_mb(a.proc.pid)
        return figures
    finally:
        cluster.close()


def _reload_under_a_train(cluster: Cluster, a, b, tables: List[list], rounds: int = ROUNDS) -> Dict[str, float]:
    """Each round: a train, and both hosts reloading in it, to each of `tables` in turn."""
    reloads, cpus, gaps, quiet_gaps = [], [], [], []
    for i in range(rounds):
        leasegen.write(cluster.leases, tables[i % len(tables)])
        reload_a, cpu_a, gap, quiet = _one_round(cluster, a, b)
        reloads.append(reload_a)
        cpus.append(cpu_a)
        gaps.append(gap)
        quiet_gaps.append(quiet)
    return {"reload": statistics.median(reloads), "reload_cpu": statistics.median(cpus), "gap_reload": max(gaps),
            "gap_quiet": max(quiet_gaps), "gaps": gaps, "rounds": rounds}


def _one_round(cluster: Cluster, a, b) -> tuple:
    seconds = 3.0
    receiver = cluster.spawn(b.ns, sys.executable, "-c", RECEIVER, b.gateway, str(TRAIN_PORT), "1.0")
    receiver.stdout.readline()
    cluster.spawn(a.ns, sys.executable, "-c", SENDER, a.gateway, b.gateway, str(TRAIN_PORT), str(seconds),
                  str(TRAIN_INTERVAL))
    time.sleep(1.0)
    quiet = (time.monotonic() - 0.9, time.monotonic())
    started, cpu = time.monotonic(), cpu_seconds(a.proc.pid)
    a.reload()
    reload_a, cpu_a = time.monotonic() - started, cpu_seconds(a.proc.pid) - cpu
    b.reload()
    reloads = (started, time.monotonic())
    out, _ = receiver.communicate(timeout=seconds + 30)
    stamps = json.loads(out.decode().splitlines()[-1])
    return reload_a, cpu_a, longest_gap(stamps, *reloads), longest_gap(stamps, *quiet)


def render(results: Dict[int, Dict[str, float]], imports: float, keys: bool, commands: Dict[str, tuple],
           hosts: int) -> str:
    lines = [f"# {cpu_model()}", f"# the runtime's imports: {imports:.2f} s; leases {'with' if keys else 'without'} "
             "public keys; CPU is the runtime's user + system time", "",
             "| lease table | runtime ready after start (CPU) | SIGHUP reload applied after (CPU) | runtime RSS "
             "(after a reload) | longest forwarding gap during reloads (in a quiet second) |",
             "| --- | --- | --- | --- | --- |"]
    for count, f in results.items():
        lines.append(f"| {count:,} leases | {f['ready']:.2f} s ({f['ready_cpu']:.2f} s) | {f['reload']:.2f} s "
                     f"({f['reload_cpu']:.2f} s) | {f['rss']:.0f} MB ({f['rss_reloaded']:.0f} MB) "
                     f"| {f['gap_reload'] * 1000:.0f} ms ({f['gap_quiet'] * 1000:.0f} ms) |")
    for command, (wall_low, wall_high, cpu_low, cpu_high) in commands.items():
        lines.append(f"\n`flannelette {command}` of {hosts:,} hosts: {wall_low:.2f}-{wall_high:.2f} s "
                     f"(CPU {cpu_low:.2f}-{cpu_high:.2f} s)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,60000", help="lease table sizes, comma-separated")
    parser.add_argument("--keys", action="store_true", help="every lease with a public key, both hosts with keys")
    parser.add_argument("--commit", metavar="REV", help="measure the runtime as of this commit (e.g. main, for a "
                        "before and after) instead of this tree's")
    parser.add_argument("--hosts", type=int, default=5000, help="hosts of the inventory `validate` and `plan` are "
                        "timed on (0: not timed)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("bench scale needs root and /dev/net/tun", file=sys.stderr)
        return 2
    compile_bytecode()
    imports = import_seconds() if not args.commit else float("nan")
    commands = commands_seconds(args.hosts, args.commit) if args.hosts else {}
    results = {}
    for count in (int(size) for size in args.sizes.split(",") if size):
        with tempfile.TemporaryDirectory(prefix="flannelette-scale-") as workdir:
            results[count] = measure(count, args.keys, workdir, args.commit)
    print(render(results, imports, args.keys, commands, args.hosts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"imports": imports, "sizes": results, "commands": commands}, f, indent=2)
    return 0
