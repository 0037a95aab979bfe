"""Real containers on lab hosts, and who reaches whom among them.

A workload is a podman container, a Docker container, or a namespace
attached through the CNI conflist; each answers TCP on PORT with its label,
so a connection proves the whole path, not only ping.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from . import containers

PORT = 5000
NETWORK = "flannelette"  # podman's network on cni0, as the deploy defines it


@dataclass(frozen=True)
class Workload:
    host: str
    runtime: str  # podman, docker, cni
    name: str
    address: str

    @property
    def label(self) -> str:
        return f"{self.host} {self.runtime} {self.address}"

    def exec(self, command: str) -> str:
        """`command` (a shell string of busybox applets) run inside the workload, as a host command."""
        if self.runtime == "cni":  # the host's busybox-static, in the namespace
            return f"ip netns exec {self.name} busybox sh -c {shlex.quote(command.replace('nc ', 'busybox nc '))}"
        return f"{self.runtime} exec {self.name} sh -c {shlex.quote(command)}"


def serve_command(name: str) -> str:
    """What a container runs: answer every TCP connection on PORT with `name`, forever."""
    return f"nc -ll -p {PORT} -e echo {name}"


def start_container(lab, host: str, runtime: str, name: str) -> Workload:
    """A busybox container `name` on the overlay; podman's on its flannelette network, Docker's on its bridge."""
    network = ["--network", NETWORK, "--cap-add", "NET_RAW"] if runtime == "podman" else []
    argv = [runtime, "run", "-d", "--name", name, *network, containers.IMAGE, "sh", "-c", serve_command(name)]
    _check(lab.run(host, shlex.join(argv)))
    return Workload(host, runtime, name, _container_address(lab, host, runtime, name))


def ensure_container(lab, host: str, runtime: str, name: str) -> Workload:
    """The running container `name`, started first unless it runs already."""
    if lab.run(host, f"{runtime} exec {name} true").returncode != 0:
        remove_container(lab, host, runtime, name)
        return start_container(lab, host, runtime, name)
    return Workload(host, runtime, name, _container_address(lab, host, runtime, name))


def remove_container(lab, host: str, runtime: str, name: str) -> None:
    lab.run(host, f"{runtime} rm -f {name} >/dev/null 2>&1; true")


def attach_namespace(lab, host: str, netns: str) -> Workload:
    """A namespace attached through the CNI conflist (lab.demo.attach), answering TCP from the host's busybox."""
    from .demo import attach

    address = attach(lab, host, netns)
    workload = Workload(host, "cni", netns, address)
    _check(lab.run(host, f"test -n \"$(ip netns pids {netns})\" || "
                         f"{{ {workload.exec(serve_command(netns))} >/dev/null 2>&1 & }}"))
    return workload


def detach_namespace(lab, host: str, netns: str) -> None:
    """Its processes killed by PID, then CNI DEL and the namespace goes (lab.demo.detach)."""
    from .demo import detach

    lab.run(host, f"ip netns pids {netns} 2>/dev/null | xargs -r kill; true")
    detach(lab, host, netns)


def _container_address(lab, host: str, runtime: str, name: str) -> str:
    out = lab.run(host, f"{runtime} exec {name} ip -4 -o addr show dev eth0").stdout.split()
    return out[3].split("/")[0]


def reaches(lab, source: Workload, target: Workload) -> dict:
    """{"ping": bool, "tcp": bool} from `source` to `target`, by overlay address."""
    ping = lab.run(source.host, source.exec(f"ping -c 1 -W 2 {target.address}"), timeout=60).returncode == 0
    answer = lab.run(source.host, source.exec(f"nc -w 3 {target.address} {PORT} </dev/null"), timeout=60)
    return {"ping": ping, "tcp": answer.stdout.strip() == target.name}


def matrix(lab, workloads) -> dict:
    """{(source label, target label): {"ping": .., "tcp": ..}} for every ordered pair."""
    return {(s.label, t.label): reaches(lab, s, t) for s in workloads for t in workloads if s != t}


def _check(proc) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stdout}{proc.stderr}")
