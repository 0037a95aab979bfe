"""The deploy end to end: the real `pyinfra` command over SSH on booted lab hosts.

One lab of its own (name "deploy", underlay 192.168.59.0/24, or as
FLANNELETTE_E2E_DEPLOY_LAB and FLANNELETTE_E2E_DEPLOY_NETWORK say) goes
through the life of a fleet, test by test, in order: a fresh deploy, a run that
changes nothing, a fourth host joining while a TCP stream flows, a broken
net-conf stopped before any host is touched, a preshared key from a file
of the operator's and then none again, a teardown that leaves every host
as it was before the first deploy, and the same overlay again from the
distribution installed elsewhere with a deploy file of one's own. The lab is
taken down even when a test fails.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import demo
from lab import Lab

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# Overridable, so that two checkouts' e2e tiers can run on one machine at once.
LAB_NAME = os.environ.get("FLANNELETTE_E2E_DEPLOY_LAB", "deploy")
LAB_NETWORK = os.environ.get("FLANNELETTE_E2E_DEPLOY_NETWORK", "192.168.59.0/24")
NETNS = "e2e"
TIMINGS: dict = {}
# What of a host the overlay may touch, listed so a teardown can be compared
# with the host before the first deploy. Counters and iptables-save's dated
# comments are dropped; empty built-in chains are not flannelette's.
SNAPSHOT = r"""
find /etc /usr/local /var/lib/cni /var/lib/flannelette /var/cache/flannelette /run/flannel -xdev -printf '%p %s %m\n' 2>/dev/null | sort
echo '-- links'; ip -br link | awk '{print $1, $3}'
echo '-- addresses'; ip -br addr
echo '-- routes'; ip route
echo '-- rules'; iptables-save 2>/dev/null | grep -E '^(-A|:[^ ]+ - )' | sed 's/\[[0-9]*:[0-9]*\]//'
echo '-- nft'; nft list ruleset 2>/dev/null | grep -ci flannel
echo '-- sysctl'; cat /proc/sys/net/ipv4/ip_forward
echo '-- unit'; systemctl is-active flannelette; systemctl is-enabled flannelette 2>&1
"""
DEPLOYED_FILES = (
    "/usr/local/lib/flannelette/flannelette.pyz /etc/flannelette/net-conf.json /etc/flannelette/leases.json "
    "/etc/systemd/system/flannelette.service /etc/cni/net.d/10-flannelette.conflist /etc/sysctl.d/90-flannelette.conf "
    "/etc/flannelette/private.key"
)


class Fleet:
    """The lab, its inventory beside a copy of group_data, and the commands run on it."""

    def __init__(self, lab, directory: Path):
        self.lab = lab
        self.inventory = directory / "e2e.py"
        self.group_data = directory / "group_data" / "all.py"
        self.group_data.parent.mkdir(parents=True)
        shutil.copy(ROOT / "inventory" / "group_data" / "all.py", self.group_data)
        self.before: dict = {}
        self.addresses: dict = {}

    def hosts(self) -> list:
        return [name for name, _ in self.lab.hosts()]

    def up(self, count: int) -> None:
        """Boot hosts up to `count`, note how each looks before any deploy, refresh the inventory."""
        self.lab.up(hosts=count)
        for name in self.hosts():
            self.before.setdefault(name, self.snapshot(name))
        shutil.copy(self.lab.inventory_path, self.inventory)
        demo.allocate(str(self.inventory))

    def deploy(self, script: str = "deploys/overlay.py", run=demo.deploy) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = run(str(self.inventory), script)
        result.seconds = time.monotonic() - started
        result.output = result.stdout + result.stderr
        return result

    def run(self, host: str, command: str) -> str:
        proc = self.lab.run(host, command, timeout=120)
        assert proc.returncode == 0, f"{host}: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout.strip()

    def snapshot(self, host: str) -> str:
        return self.lab.run(host, SNAPSHOT).stdout

    def main_pid(self, host: str) -> str:
        return self.run(host, "systemctl show -p MainPID --value flannelette")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The lab, taken down even when a test fails; tests/e2e/conftest.py skips
    the tier, saying why, where the machine can't run one."""
    lab = Lab(name=LAB_NAME, network=LAB_NETWORK, log=lambda _: None)
    try:
        the_fleet = Fleet(lab, tmp_path_factory.mktemp("inventory"))
        the_fleet.up(3)
        yield the_fleet
    finally:
        lab.down()
        if TIMINGS:
            print("\ndeploy timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()), file=sys.stderr)


def changed_hosts(output: str) -> set:
    """Hosts on which any operation changed something (pyinfra prints `[host] Success`)."""
    return set(re.findall(r"\[(node\d+)\] Success", output))


def test_fresh_deploy_connects_every_host(fleet):
    result = fleet.deploy()
    TIMINGS["fresh deploy, 3 hosts"] = result.seconds
    assert result.returncode == 0, result.output
    for host in fleet.hosts():
        assert fleet.run(host, "systemctl is-active flannelette") == "active"
        assert "ready" in fleet.run(host, "flannelette status").splitlines()[0]  # the linked zipapp, healthz
        fleet.addresses[host] = demo.attach(fleet.lab, host, NETNS)
    reached = demo.reachability(fleet.lab, fleet.addresses, NETNS)
    assert all(reached.values()), demo.render_matrix(fleet.addresses, reached, NETNS)
    hosts = fleet.hosts()
    for source, target in zip(hosts, hosts[1:] + hosts[:1]):
        assert demo.tcp_transfer(fleet.lab, source, target, fleet.addresses[target], NETNS), f"{source} -> {target}"
    # Encrypted: each host made its key itself (0600), every lease carries a public key, and peers seal.
    leases = json.loads(fleet.run(hosts[0], "cat /etc/flannelette/leases.json"))["leases"]
    assert len({lease.get("public_key") for lease in leases} - {None}) == len(hosts)
    for host in hosts:
        assert fleet.run(host, "stat -c %a /etc/flannelette/private.key") == "600"
        status = fleet.run(host, "flannelette status")
        assert status.count(" sealed ") == len(hosts) - 1, status


def test_the_same_deploy_again_changes_nothing(fleet):
    pids = {host: fleet.main_pid(host) for host in fleet.hosts()}
    result = fleet.deploy()
    TIMINGS["no-change re-run, 3 hosts"] = result.seconds
    assert result.returncode == 0, result.output
    assert changed_hosts(result.output) == set(), result.output
    assert {host: fleet.main_pid(host) for host in fleet.hosts()} == pids


def test_dry_run_shows_no_change_either(fleet):
    rows = dry_run(fleet)
    assert len(rows) >= 9 and all(change == "-" for change in rows.values()), rows


def dry_run(fleet) -> dict:
    """{operation: hosts it would change} from `pyinfra INVENTORY deploys/overlay.py --dry`."""
    argv = [sys.executable, "-m", "pyinfra", str(fleet.inventory), "deploys/overlay.py", "--dry"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return dict(detected_changes(result.stdout + result.stderr))


def change_of(rows: dict, operation: str) -> str:
    return next(change for name, change in rows.items() if operation in name)


def detected_changes(output: str) -> list:
    """(operation, number of hosts it would change or "-") rows of pyinfra's "Detected changes" table."""
    table = output.split("--> Detected changes:")[1].split("Detected changes may not")[0]
    cells = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[2:]]
    return [(row[0], row[1].split()[0]) for row in cells if len(row) >= 2]


def fleet_status(fleet, *options: str) -> subprocess.CompletedProcess:
    """`flannelette status INVENTORY` on this machine, as an operator runs it."""
    argv = [sys.executable, "-m", "flannelette", "status", str(fleet.inventory), *options]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    result.output = result.stdout + result.stderr
    return result


def lab_ssh(fleet, host: str, command: str, stdin: str) -> subprocess.CompletedProcess:
    """`python -m lab ssh HOST -- COMMAND` with `stdin` as its standard input, a heredoc's way."""
    argv = [sys.executable, "-m", "lab", "--name", LAB_NAME, "--network", LAB_NETWORK, "ssh", host, "--", command]
    return subprocess.run(argv, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60)


def test_the_fleets_status_shows_every_host_ready_then_names_a_stopped_unit_and_another_table(fleet):
    started = time.monotonic()
    result = fleet_status(fleet)
    TIMINGS["flannelette status INVENTORY, 3 hosts"] = time.monotonic() - started
    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    plan_hash = lines[0].split()[-1]
    for host in fleet.hosts():
        row = next(line.split() for line in lines if line.startswith(host + " "))
        assert row[1:6] == ["active", "yes", plan_hash, "plan", f"{len(fleet.hosts()) - 1}/{len(fleet.hosts()) - 1}"], row
    document = json.loads(fleet_status(fleet, "--json").stdout)
    assert document["ok"] and all(host["ok"] for host in document["hosts"])
    assert {cell for cells in document["hears"].values() for cell in cells.values()} == {"-", "sealed"}

    stopped, edited = "node2", "node3"
    original = fleet.run(edited, "cat /etc/flannelette/leases.json") + "\n"
    table = json.loads(original)
    table["leases"] = [lease for lease in table["leases"] if lease["host"] != "node1"]
    try:
        fleet.run(stopped, "systemctl stop flannelette")
        written = lab_ssh(fleet, edited, "cat > /etc/flannelette/leases.json && systemctl reload flannelette",
                          json.dumps(table, indent=2) + "\n")
        assert written.returncode == 0, written.stderr
        assert json.loads(fleet.run(edited, "cat /etc/flannelette/leases.json")) == table
        fleet.run(edited, "for i in $(seq 30); do flannelette status | grep -q 'leases      2 ' && break; sleep 1; done")
        result = fleet_status(fleet, "--json")
        assert result.returncode == 1, result.output
        hosts = {host["host"]: host for host in json.loads(result.stdout)["hosts"]}
        assert hosts["node1"]["ok"], hosts["node1"]
        assert hosts[stopped]["problems"][0] == "unit inactive", hosts[stopped]
        assert any(p.startswith("runs another lease table") for p in hosts[edited]["problems"]), hosts[edited]
        text = fleet_status(fleet)
        assert text.returncode == 1 and "unit inactive" in text.stdout and " OTHER " in text.stdout, text.output
    finally:
        lab_ssh(fleet, edited, "cat > /etc/flannelette/leases.json && systemctl reload flannelette", original)
        fleet.lab.run(stopped, "systemctl start flannelette")
    fleet.run(edited, "for i in $(seq 30); do flannelette status | grep -q 'leases      3 ' && break; sleep 1; done")
    assert fleet_status(fleet).returncode == 0


def test_a_new_host_joins_while_the_others_reload_and_a_stream_survives(fleet):
    server, client = "node2", "node1"
    pids = {host: fleet.main_pid(host) for host in fleet.hosts()}
    fleet.run(server, f"ip netns exec {NETNS} iperf3 -s -1 -D -p 5302 -I /run/iperf3-e2e.pid")
    stream = (
        f"ip netns exec {NETNS} iperf3 -c {fleet.addresses[server]} -p 5302 -t 15 -J > /run/iperf3-e2e.json 2>&1; "
        "echo $? > /run/iperf3-e2e.rc"
    )
    fleet.run(client, f"rm -f /run/iperf3-e2e.rc; setsid sh -c '{stream}' > /dev/null 2>&1 < /dev/null &")
    try:
        time.sleep(2)
        fleet.up(4)
        would = dry_run(fleet)
        assert change_of(would, "Write /etc/flannelette/leases.json") == "4", would  # every host's table
        assert change_of(would, "Write /etc/flannelette/net-conf.json") == "1", would  # node4's only
        result = fleet.deploy()
        assert result.returncode == 0, result.output
        assert fleet.run("node4", "systemctl is-active flannelette") == "active"
        assert {host: fleet.main_pid(host) for host in pids} == pids
        for host in pids:
            assert "Reloaded" in fleet.run(host, "journalctl -u flannelette --no-pager -o cat | tail -n 20")
        fleet.run(client, "for i in $(seq 30); do test -f /run/iperf3-e2e.rc && break; sleep 1; done")
        assert fleet.run(client, "cat /run/iperf3-e2e.rc") == "0", fleet.run(client, "cat /run/iperf3-e2e.json")
        intervals = fleet.run(client, "python3 -c \"import json; d = json.load(open('/run/iperf3-e2e.json')); "
                                      "print(*[int(i['sum']['bytes']) for i in d['intervals']])\"").split()
        assert len(intervals) >= 14 and all(int(b) > 0 for b in intervals), intervals
    finally:
        fleet.lab.run(server, "test -f /run/iperf3-e2e.pid && kill $(cat /run/iperf3-e2e.pid); rm -f /run/iperf3-e2e.*")
        fleet.lab.run(client, "rm -f /run/iperf3-e2e.*")
    fleet.addresses["node4"] = demo.attach(fleet.lab, "node4", NETNS)
    reached = demo.reachability(fleet.lab, fleet.addresses, NETNS)
    assert all(reached.values()), demo.render_matrix(fleet.addresses, reached, NETNS)


def test_a_net_conf_error_stops_the_deploy_before_any_host_is_touched(fleet):
    def deployed():
        return {host: fleet.run(host, f"sha1sum {DEPLOYED_FILES}; systemctl show -p MainPID flannelette")
                for host in fleet.hosts()}

    before = deployed()
    good = fleet.group_data.read_text()
    fleet.group_data.write_text(good.replace('"Network": "10.244.0.0/16",', '"Network": "10.244.0.0/16", "SubnetLen": 33,'))
    try:
        validate = subprocess.run([sys.executable, "-m", "flannelette.cli", "validate", str(fleet.inventory)],
                                  cwd=ROOT, capture_output=True, text=True)
        result = fleet.deploy()
    finally:
        fleet.group_data.write_text(good)
    assert validate.returncode == 1
    assert result.returncode == 1, result.output
    assert validate.stderr.strip() in result.output
    assert "Beginning operation run" not in result.output
    assert deployed() == before


def test_a_preshared_key_from_a_file_of_the_operators_reaches_every_host_and_goes_again(fleet, tmp_path):
    secret = tmp_path / "psk"
    secret.write_text(subprocess.run(["wg", "genpsk"], capture_output=True, text=True, check=True).stdout)
    good = fleet.group_data.read_text()
    try:
        secret.chmod(0o644)
        fleet.group_data.write_text(good + f"flannel_psk_file = {str(secret)!r}\n")
        refused = fleet.deploy()
        assert refused.returncode == 1 and "is readable by every user (mode 0644)" in refused.output, refused.output
        assert "Beginning operation run" not in refused.output
        secret.chmod(0o600)
        result = fleet.deploy()
        assert result.returncode == 0, result.output
        for host in fleet.hosts():
            assert fleet.run(host, "stat -c %a /etc/flannelette/psk") == "600"
            assert fleet.run(host, "cat /etc/flannelette/psk") == secret.read_text().strip()
            assert "--psk /etc/flannelette/psk" in fleet.run(host, "systemctl cat flannelette")
        reached = demo.reachability(fleet.lab, fleet.addresses, NETNS)
        assert all(reached.values()), demo.render_matrix(fleet.addresses, reached, NETNS)
        for host in fleet.hosts():
            status = fleet.run(host, "flannelette status")
            assert status.count(" sealed ") == len(fleet.hosts()) - 1, status
    finally:
        fleet.group_data.write_text(good)
    result = fleet.deploy()
    assert result.returncode == 0, result.output
    for host in fleet.hosts():
        fleet.run(host, "test ! -e /etc/flannelette/psk")
    reached = demo.reachability(fleet.lab, fleet.addresses, NETNS)
    assert all(reached.values()), demo.render_matrix(fleet.addresses, reached, NETNS)


def test_teardown_leaves_every_host_as_it_was_before_the_first_deploy(fleet):
    for host in fleet.hosts():
        demo.detach(fleet.lab, host, NETNS)
    result = fleet.deploy("deploys/teardown.py")
    assert result.returncode == 0, result.output
    for host in fleet.hosts():
        assert fleet.snapshot(host) == fleet.before[host], host
    again = fleet.deploy("deploys/teardown.py")
    assert again.returncode == 0 and changed_hosts(again.output) == set(), again.output


OWN_DEPLOY = """\
from flannelette.deploy import overlay

overlay.install()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pyinfra` of a fresh virtual environment outside the repository, with
    `flannelette[deploy]` installed (not editable) from a copy of the tree."""
    top = tmp_path_factory.mktemp("installed")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (top / "source" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, top / "source" / name)
    subprocess.run([sys.executable, "-m", "venv", str(top / "venv")], check=True)
    pip = subprocess.run([str(top / "venv" / "bin" / "pip"), "install", "-q", f"{top / 'source'}[deploy]"],
                         cwd=top, capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return top / "venv" / "bin" / "pyinfra"


def test_an_installed_distribution_and_a_deploy_file_of_ones_own_give_the_same_overlay(fleet, installed, tmp_path):
    (tmp_path / "deploy.py").write_text(OWN_DEPLOY)

    def own_deploy(inventory, script):
        return subprocess.run([str(installed), "-y", inventory, script], cwd=tmp_path, capture_output=True, text=True)

    result = fleet.deploy("deploy.py", run=own_deploy)
    TIMINGS["installed package, fresh deploy"] = result.seconds
    assert result.returncode == 0, result.output
    for host in fleet.hosts():
        assert fleet.run(host, "systemctl is-active flannelette") == "active"
        assert "ready" in fleet.run(host, "flannelette status").splitlines()[0]
        fleet.addresses[host] = demo.attach(fleet.lab, host, NETNS)
    reached = demo.reachability(fleet.lab, fleet.addresses, NETNS)
    assert all(reached.values()), demo.render_matrix(fleet.addresses, reached, NETNS)
    pids = {host: fleet.main_pid(host) for host in fleet.hosts()}
    again = fleet.deploy("deploy.py", run=own_deploy)
    assert again.returncode == 0 and changed_hosts(again.output) == set(), again.output
    # The repository's deploy file finds every host as it would have left it.
    ours = fleet.deploy()
    assert ours.returncode == 0 and changed_hosts(ours.output) == set(), ours.output
    assert {host: fleet.main_pid(host) for host in fleet.hosts()} == pids
