"""`make demo`: a 3-host lab, the overlay deployed on it, real containers (a
podman one on node1, a Docker one on node2) and one network namespace per host
attached by the CNI bridge plugin, and a matrix of who reaches whom (ping and
a TCP connection).

    python -m lab.demo [--hosts N]

A second run reuses the running lab, deploys again (no changes) and reuses
the namespaces and containers. `python -m lab down` removes the lab and everything in it.
The helpers here (attach, reachability) serve the end-to-end tests too.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import time
from pathlib import Path

from . import workloads

ROOT = Path(__file__).resolve().parent.parent
CNICHAIN = ROOT / "deploys" / "cnichain.py"
NETNS = "demo"
# The real containers of the demo: which host runs which runtime's.
DEMO_RUNTIMES = {"node1": "podman", "node2": "docker"}


def deploy(inventory: str, script: str = "deploys/overlay.py", *extra: str, prefix=()) -> subprocess.CompletedProcess:
    """The real `pyinfra` command, from the repository root as the docs show it;
    `prefix` runs it where the hosts are reached (the VM lab's namespace)."""
    argv = [*prefix, sys.executable, "-m", "pyinfra", "-y", inventory, script, *extra]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)


def allocate(inventory: str) -> None:
    """`flannelette plan INVENTORY --write`: subnets for hosts that have none yet.

    A process of its own, as for a person: loading an inventory imports pyinfra's
    CLI, which monkey-patches the interpreter for gevent."""
    argv = [sys.executable, "-m", "flannelette", "plan", inventory, "--write"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"flannelette plan {inventory} --write failed:\n{done.stderr}")


def _cnichain(args: str) -> str:
    """A shell command running cnichain.py on a host, without copying a file there."""
    code = base64.b64encode(CNICHAIN.read_bytes()).decode()
    return f"(echo {code} | base64 -d > /run/cnichain.py && python3 /run/cnichain.py {args}; rc=$?; rm -f /run/cnichain.py; exit $rc)"


def attach(lab, host: str, netns: str = NETNS) -> str:
    """A network namespace on `host`, plugged into the overlay by the installed conflist; its address."""
    if _address(lab, host, netns) is None:
        _check(lab.run(host, f"ip netns add {netns} && ip -n {netns} link set lo up && " + _cnichain(f"add {netns}")))
    address = _address(lab, host, netns)
    if address is None:
        raise RuntimeError(f"{host}: namespace {netns} has no address on eth0")
    return address


def detach(lab, host: str, netns: str = NETNS) -> None:
    """CNI DEL, then the namespace goes; nothing is left on cni0."""
    lab.run(host, f"ip netns list | grep -qx '{netns}\\( .*\\)\\?' || exit 0; " + _cnichain(f"del {netns}") + f"; ip netns del {netns}")


def _address(lab, host: str, netns: str):
    proc = lab.run(host, f"ip -n {netns} -4 -o addr show dev eth0 2>/dev/null")
    words = proc.stdout.split()
    return words[3].split("/")[0] if "inet" in words else None


def _check(proc) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}")


def reachability(lab, addresses: dict, netns: str = NETNS) -> dict:
    """{(from host, to host): True when a ping from one namespace reaches the other}."""
    reached = {}
    for source in addresses:
        targets = [host for host in addresses if host != source]
        pings = "; ".join(
            f"ip netns exec {netns} ping -c 1 -W 2 {addresses[t]} >/dev/null 2>&1 && echo {t} ok || echo {t} no"
            for t in targets
        )
        answers = dict(line.split() for line in lab.run(source, pings, timeout=120).stdout.splitlines() if line.strip())
        for target in targets:
            reached[(source, target)] = answers.get(target) == "ok"
    return reached


def tcp_transfer(lab, source: str, target: str, address: str, netns: str = NETNS, megabytes: int = 4) -> bool:
    """A TCP transfer from `source`'s namespace to iperf3 in `target`'s one."""
    pidfile = f"/run/iperf3-{netns}.pid"
    server = f"ip netns exec {netns} iperf3 -s -1 -D -p 5301 -I {pidfile}"
    _check(lab.run(target, server))
    try:
        client = f"ip netns exec {netns} iperf3 -c {address} -p 5301 -n {megabytes}M --connect-timeout 3000"
        return lab.run(source, client, timeout=60).returncode == 0
    finally:
        lab.run(target, f"test -f {pidfile} && kill $(cat {pidfile}) 2>/dev/null; rm -f {pidfile}; true")


def render_matrix(addresses: dict, reached: dict, netns: str = NETNS) -> str:
    hosts = list(addresses)
    width = max(len(h) for h in hosts + ["from \\ to"]) + 2
    lines = ["from \\ to".ljust(width) + "".join(h.ljust(width) for h in hosts)]
    for source in hosts:
        cells = ["-" if s == source else ("ok" if reached[(source, s)] else "NO") for s in hosts]
        lines.append(source.ljust(width) + "".join(c.ljust(width) for c in cells))
    lines.append("")
    lines += [f"{host}: namespace {netns} {address}" for host, address in addresses.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3, help="lab hosts (default 3)")
    parser.add_argument("--name", default="lab", help="lab name (default lab: inventory/lab.py)")
    parser.add_argument("--network", default="192.168.56.0/24", help="the lab's underlay (default 192.168.56.0/24)")
    args = parser.parse_args(argv)
    from lab import Lab

    inventory = "inventory/lab.py" if args.name == "lab" else f"inventory/lab-{args.name}.py"
    lab = Lab(name=args.name, network=args.network, inventory_path=ROOT / inventory)
    started = time.monotonic()
    print(f"== lab {args.name!r}: {args.hosts} hosts (a running lab is reused)")
    lab.up(hosts=args.hosts)
    with_runtimes(inventory, DEMO_RUNTIMES)
    allocate(inventory)
    print(f"== pyinfra -y {inventory} deploys/overlay.py")
    run = deploy(inventory)
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
        return 1
    print(_summary(run.stdout + run.stderr))
    print("== a busybox container per runtime (" + ", ".join(f"{r} on {h}" for h, r in DEMO_RUNTIMES.items())
          + "), and on every host a namespace attached through /etc/cni/net.d/10-flannelette.conflist")
    running = demo_workloads(lab)
    print("== who reaches whom (ping, and a TCP connection to each one's listener), across the overlay\n")
    reached = workloads.matrix(lab, running)
    print(render_workload_matrix(running, reached))
    addresses = {w.host: w.address for w in running if w.runtime == "cni"}
    lab_args = "" if args.name == "lab" else f" --name {args.name} --network {args.network}"
    print(f"\ndone in {time.monotonic() - started:.0f}s. Look around: "
          f"python -m lab{lab_args} ssh node1 -- ip netns exec {NETNS} ping -c 3 {addresses[lab.hosts()[-1][0]]}\n"
          f"Remove it all: python -m lab{lab_args} down{_forget(inventory, args.name)}")
    return 0 if all(all(r.values()) for r in reached.values()) else 1


def with_runtimes(inventory: str, runtimes: dict) -> None:
    """Give hosts of a lab's inventory their flannel_container_runtime ({host: runtime}); the others keep cni."""
    path = ROOT / inventory
    text = path.read_text().split("\n# container runtimes\n")[0]
    path.write_text(text + "\n# container runtimes\nfor _name, _data in nodes:\n"
                    f"    _data['flannel_container_runtime'] = {runtimes!r}.get(_name, 'cni')\n")


def demo_workloads(lab) -> list:
    """The demo's containers (started unless running) and namespaces, in the matrix's order."""
    hosts = [name for name, _ in lab.hosts()]
    running = [workloads.ensure_container(lab, h, r, f"demo-{r}") for h, r in DEMO_RUNTIMES.items() if h in hosts]
    return running + [workloads.attach_namespace(lab, h, NETNS) for h in hosts]


def render_workload_matrix(running: list, reached: dict) -> str:
    """Rows and columns numbered, each labelled with its host, runtime and address; ok: ping and TCP."""
    width = max(len(w.label) for w in running) + 6
    lines = ["from \\ to".ljust(width) + "".join(f"{i:<6}" for i in range(1, len(running) + 1))]
    for i, source in enumerate(running, 1):
        cells = []
        for target in running:
            result = reached.get((source.label, target.label))
            cells.append("-" if result is None else "ok" if all(result.values()) else
                         "ping" if result["ping"] else "NO")
        lines.append(f"{i}  {source.label}".ljust(width) + "".join(f"{c:<6}" for c in cells))
    return "\n".join(lines + ["", "ok: ping and TCP; ping: ping only; NO: neither"])


def _forget(inventory: str, name: str) -> str:
    """The default lab's `down` removes inventory/lab.py; another lab's doesn't know it was written there."""
    allocation = inventory.replace(".py", ".leases.json")
    return "" if name == "lab" else f" && rm -f {inventory} {allocation}"


def _summary(output: str) -> str:
    """pyinfra's results table, from its header to the grand total."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("--> Results")), len(lines))
    end = next((i for i, line in enumerate(lines) if "Grand total" in line), len(lines) - 1)
    return "\n".join(lines[start:end + 1])


if __name__ == "__main__":
    sys.exit(main())
