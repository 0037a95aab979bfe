"""The deploy as a whole, run by the real `pyinfra` command on @fake hosts.

pyinfra's fake connector answers facts with scripted output and executes
nothing, so these check what happens before and around the operations: the
whole inventory validated first, a host's python3 checked, exit codes.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 8285}}


def host(index: int, python: str = "3.11.2", **data) -> tuple:
    address = f"192.168.56.{10 + index}"
    responses = {
        "command -v python3": ["/usr/bin/python3", python] if python is not None else [],
        "/sys/class/net/": ["mtu eth1 1500", f"3: eth1    inet {address}/24 scope global eth1"],
    }
    data = {"flannel_public_ip": address, "flannel_net_conf": NET_CONF, "fake_delay": 0,
            "fake_delay_jitter": 0, "fake_responses": responses, **data}
    return (f"@fake/node{index}", data)


def write_inventory(path: Path, hosts: list, allocate: bool = True) -> str:
    path.write_text(f"hosts = {hosts!r}\n")
    if allocate:
        plan = subprocess.run([sys.executable, "-m", "flannelette", "plan", str(path), "--write"], capture_output=True)
        assert plan.returncode == 0, plan.stderr
    return str(path)


def pyinfra(inventory: str, *args: str, deploy: str = "deploys/overlay.py") -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pyinfra", "-y", inventory, deploy, *args]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    result.output = result.stdout + result.stderr
    return result


def test_a_valid_inventory_deploys_every_operation(tmp_path):
    result = pyinfra(write_inventory(tmp_path / "fleet.py", [host(1), host(2)]))
    assert result.returncode == 0, result.output
    for name in ("Install the flannelette runtime (zipapp)", "Write /etc/flannelette/leases.json",
                 "Write the CNI network /etc/cni/net.d/10-flannelette.conflist (MTU 1472)",
                 "Keep flannelette running and enabled at boot"):
        assert name in result.output


def test_an_invalid_net_conf_stops_the_run_before_any_operation(tmp_path):
    bad = dict(NET_CONF, SubnetLen=33)
    inventory = tmp_path / "fleet.py"
    write_inventory(inventory, [host(1), host(2)])
    inventory.write_text(f"hosts = {[host(1, flannel_net_conf=bad), host(2, flannel_net_conf=bad)]!r}\n")
    validate = subprocess.run([sys.executable, "-m", "flannelette.cli", "validate", str(inventory)],
                              capture_output=True, text=True)
    result = pyinfra(str(inventory))
    assert result.returncode == 1
    assert "no host was changed" in result.output
    assert validate.stderr.strip() and validate.stderr.strip() in result.output
    assert "Beginning operation run" not in result.output


def test_a_host_without_an_allocation_names_the_command_that_makes_one(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)], allocate=False)
    result = pyinfra(inventory)
    assert result.returncode == 1
    assert f"flannelette plan {inventory} --write" in result.output
    assert "Beginning operation run" not in result.output


@pytest.mark.parametrize(
    "python, message",
    [
        ("3.7.3", "@fake/node2: /usr/bin/python3 is Python 3.7.3; the flannelette runtime needs >= 3.9"),
        ("", "@fake/node2: /usr/bin/python3 is Python of unknown version"),
        (None, "@fake/node2: no python3 found; the flannelette runtime needs python3 >= 3.9"),
    ],
)
def test_an_old_python3_on_one_host_stops_the_run_naming_host_and_version(tmp_path, python, message):
    result = pyinfra(write_inventory(tmp_path / "fleet.py", [host(1), host(2, python=python)]))
    assert result.returncode == 1
    assert message in result.output
    assert "Beginning operation run" not in result.output


def test_the_inventory_argument_is_found_among_pyinfras_options(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)], allocate=False)
    # In a process of its own: pyinfra's CLI, which parses the arguments, patches the interpreter.
    probe = "import sys; from flannelette.deploy import tasks; sys.argv = sys.argv[1:]; print(tasks.inventory_path())"
    for argv, found in (
        (["pyinfra", "-y", "--limit", "node1", "-vv", inventory, "deploys/overlay.py", "--dry"], inventory),
        (["pytest", "-q"], "None"),
    ):
        done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True)
        assert done.stdout.strip() == found, done.stderr


def test_teardown_needs_no_plan_and_runs_on_a_host_without_the_overlay(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)], allocate=False)
    result = pyinfra(inventory, deploy="deploys/teardown.py")
    assert result.returncode == 0, result.output
    assert "Stop flannelette and disable it at boot" in result.output
