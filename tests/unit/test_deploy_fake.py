"""The deploy as a whole, run by the real `pyinfra` command on @fake hosts.

pyinfra's fake connector answers facts with scripted output and executes
nothing, so these check what happens before and around the operations: the
whole inventory validated first, a host's python3 checked, exit codes.
"""

import base64
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 8285}}


def host(index: int, python: str = "3.11.2", key: str = None, **data) -> tuple:
    address = f"192.168.56.{10 + index}"
    responses = {
        "command -v python3": ["/usr/bin/python3", python] if python is not None else [],
        "/sys/class/net/": ["mtu eth1 1500", f"3: eth1    inet {address}/24 scope global eth1"],
        "python3 -I -c": [key or base64.b64encode(bytes([index]) * 32).decode()],  # the host's public key
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
                 "Write the CNI network /etc/cni/net.d/10-flannelette.conflist (MTU 1440)",  # 1500 - 28 - WireGuard's 32
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


def operations(output: str) -> list:
    """The operations pyinfra started, in order."""
    return [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("--> Starting operation:")]


OWN_DEPLOY = "from flannelette.deploy import overlay\n\noverlay.install()\n"


def test_a_deploy_file_of_ones_own_in_any_directory_does_what_overlay_py_does(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1), host(2)])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "deploy.py").write_text(OWN_DEPLOY)
    ours = pyinfra(inventory)
    # The allocation file is found beside the inventory pyinfra loaded, whatever options come first.
    argv = [sys.executable, "-m", "pyinfra", "-y", "-vv", "--limit", "@fake/node*", "../fleet.py", "deploy.py"]
    theirs = subprocess.run(argv, cwd=tmp_path / "mine", capture_output=True, text=True, timeout=120)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert operations(theirs.stdout + theirs.stderr) == operations(ours.output) != []


def test_pyinfra_runs_the_deploy_functions_by_their_dotted_names(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)])
    for function, script in (("flannelette.deploy.overlay.install", "deploys/overlay.py"),
                             ("flannelette.deploy.teardown.remove", "deploys/teardown.py")):
        by_name, by_file = pyinfra(inventory, deploy=function), pyinfra(inventory, deploy=script)
        assert by_name.returncode == 0, by_name.output
        assert operations(by_name.output) == operations(by_file.output) != []


def test_importing_the_deploy_files_as_modules_runs_nothing(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)])
    (tmp_path / "deploy.py").write_text("from flannelette.deploy import overlay, teardown\n")
    argv = [sys.executable, "-m", "pyinfra", "-y", inventory, "deploy.py"]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert operations(result.stdout + result.stderr) == []


def test_host_data_may_name_the_inventory_whose_allocations_a_run_uses(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)])
    named = write_inventory(tmp_path / "named.py", [host(1, flannel_inventory=inventory)], allocate=False)
    assert pyinfra(named).returncode == 0
    unnamed = write_inventory(tmp_path / "unnamed.py", [host(1)], allocate=False)
    assert f"flannelette plan {unnamed} --write" in pyinfra(unnamed).output


def test_teardown_needs_no_plan_and_runs_on_a_host_without_the_overlay(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1)], allocate=False)
    result = pyinfra(inventory, deploy="deploys/teardown.py")
    assert result.returncode == 0, result.output
    assert "Stop flannelette and disable it at boot" in result.output
    # No runtime on the host: nothing of the runtime's to take down, and nothing reported as changed for it.
    assert "Remove flannel0, its route, the rules and an idle cni0" not in result.output


def test_a_host_that_cant_encrypt_stops_the_deploy_before_any_host_is_touched(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1), host(2, key="unavailable: no libcrypto found")])
    result = pyinfra(inventory)
    assert result.returncode != 0
    assert "@fake/node2: can't make or read its WireGuard key (unavailable: no libcrypto found)" in result.output
    assert "Backend.Encryption to off" in result.output
    assert "Starting operation" not in result.output and "Success" not in result.output
