"""`flannelette status INVENTORY`: the table, the matrix, --json and the exit code, from scripted host replies."""

import base64
import json
from ipaddress import IPv4Address

from flannelette import cli
from flannelette.controller import fleet, remote
from flannelette.host import metrics
from flannelette.model import config
from flannelette.model.plan import HostSpec, make_plan

PLAIN = config.parse_net_conf({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Encryption": "off"}})
ENCRYPTED = config.parse_net_conf({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}})
HOSTS = ("node1", "node2", "node3")


def plan_of(net_conf=PLAIN, hosts=HOSTS):
    specs = [HostSpec(name, IPv4Address(f"192.168.56.{11 + i}")) for i, name in enumerate(hosts)]
    return make_plan(net_conf, specs, allocate=True)


def key_of(host: str) -> str:
    return base64.b64encode(host.encode().ljust(32, b"k")).decode()


def reply(host: str, table: str, unit="active", ready=True, heard=None, fmt="fast", on_disk=None, key=None) -> dict:
    """What `flannelette status --json` prints on `host`; `heard`: {peer: seconds ago or None}."""
    heard = heard if heard is not None else {peer: 3.0 for peer in HOSTS if peer != host}
    peers = [{"peer": peer, "subnet": "?", "public_ip": "?", "format": fmt, "exchange": "confirmed", "tx": 1, "rx": 1,
              **({"heard": ago} if ago is not None else {})} for peer, ago in heard.items()]
    document = {"unit": unit, "answers": unit == "active", "ready": ready and unit == "active", "public_key": key,
                "leases_file": {"hash": on_disk or table, "count": 3}}
    if unit == "active":
        document.update(host=host, leases={"hash": table, "count": 3}, drops={}, peers=peers)
    return document


def answered(host: str, document: dict, exit_code: int = 0) -> remote.Result:
    return remote.Result(host, exit_code, json.dumps(document), "")


def everyone(plan, **overrides) -> list:
    table = metrics.lease_hash(plan.leases)
    return [overrides.get(host) or answered(host, reply(host, table)) for host in HOSTS]


def test_every_host_ready_on_the_plans_table():
    plan = plan_of()
    view = fleet.fleet_view(plan, everyone(plan))
    assert fleet.exit_code(view) == fleet.EXIT_OK
    lines = fleet.render_table(view).splitlines()
    assert lines[0] == f"plan: 3 hosts, lease table {metrics.lease_hash(plan.leases)}"
    assert lines[2].split() == ["HOST", "UNIT", "READY", "LEASE", "TABLE", "HEARD", "FORMATS", "DROPS", "PROBLEMS"]
    for line in lines[3:]:
        assert line.split()[1:7] == ["active", "yes", metrics.lease_hash(plan.leases), "plan", "2/2", "fast"], line
    matrix = fleet.render_matrix(view).splitlines()
    assert matrix[2].split() == ["hears", "\\", "from", "node1", "node2", "node3"]
    assert matrix[3].split() == ["node1", "-", "fast", "fast"]


def test_a_stopped_unit_and_another_table_are_named_and_fail_the_fleet():
    plan = plan_of()
    view = fleet.fleet_view(plan, everyone(plan, node2=answered("node2", reply("node2", "", unit="inactive"), 1),
                                           node3=answered("node3", reply("node3", "0123456789abcdef"))))
    assert fleet.exit_code(view) == fleet.EXIT_PROBLEMS
    rows = {row.host: row for row in view["rows"]}
    assert rows["node1"].problems == []
    assert rows["node2"].problems[0] == "unit inactive"
    assert "runs another lease table (0123456789abcdef" in rows["node3"].problems[0]
    table = fleet.render_table(view)
    assert "0123456789abcdef OTHER" in table and "unit inactive" in table
    assert fleet.hearing(view)["node2"] == {"node1": "?", "node2": "-", "node3": "?"}


def test_a_lease_file_changed_by_hand_is_named_before_it_is_loaded():
    plan = plan_of()
    table = metrics.lease_hash(plan.leases)
    view = fleet.fleet_view(plan, everyone(plan, node1=answered("node1", reply("node1", table, on_disk="feedfacefeedface"))))
    (row,) = [row for row in view["rows"] if row.host == "node1"]
    assert row.problems == ["leases.json on disk is another table (feedfacefeedface, the plan's is " + table + ")"]


def test_unreachable_and_uninstalled_hosts_are_rows_with_the_reason():
    plan = plan_of()
    view = fleet.fleet_view(plan, everyone(
        plan, node2=remote.Result("node2", error="ssh to 192.168.56.12: [Errno 113] No route to host"),
        node3=remote.Result("node3", 127, "", "sh: 1: /usr/local/bin/flannelette: not found\n")))
    rows = {row.host: row for row in view["rows"]}
    assert rows["node2"].problems == ["unreachable: ssh to 192.168.56.12: [Errno 113] No route to host"]
    assert rows["node3"].problems == ["unreachable: flannelette is not installed: sh: 1: /usr/local/bin/flannelette: not found"]
    assert "No route to host" in fleet.render_table(view)
    assert fleet.exit_code(view) == fleet.EXIT_PROBLEMS


def test_silence_shows_in_the_matrix_but_does_not_fail_the_fleet():
    plan = plan_of()
    table = metrics.lease_hash(plan.leases)
    view = fleet.fleet_view(plan, everyone(plan, node1=answered("node1", reply("node1", table, heard={"node2": 900.0, "node3": None}))))
    assert fleet.exit_code(view) == fleet.EXIT_OK
    assert fleet.hearing(view)["node1"] == {"node1": "-", "node2": "15m", "node3": "never"}
    (row,) = [row for row in view["rows"] if row.host == "node1"]
    assert row.notes == ["hears nothing from node2, node3"]
    assert "0/2" in fleet.render_table(view)


def test_json_parses_and_says_what_the_table_says():
    plan = plan_of()
    view = fleet.fleet_view(plan, everyone(plan, node2=remote.Result("node2", error="timed out")))
    document = json.loads(fleet.render_json(view))
    assert document["ok"] is False
    assert [host["host"] for host in document["hosts"]] == list(HOSTS)
    assert document["hosts"][1] == {"host": "node2", "ok": False, "problems": ["unreachable: timed out"], "notes": [],
                                    "error": "timed out", "status": None}
    assert document["hosts"][0]["status"]["leases"]["hash"] == document["plan"]["lease_hash"]
    assert document["hears"]["node1"]["node3"] == "fast"


def test_an_encrypted_plan_hashes_the_keys_the_hosts_hold():
    plan = plan_of(ENCRYPTED)
    keys = {host: key_of(host) for host in HOSTS}
    table = metrics.lease_hash(plan.keyed(keys))
    view = fleet.fleet_view(plan, [answered(host, reply(host, table, key=keys[host], fmt="sealed")) for host in HOSTS])
    assert view["plan"]["lease_hash"] == table and fleet.exit_code(view) == fleet.EXIT_OK
    view = fleet.fleet_view(plan, [answered(host, reply(host, table, key=keys[host])) for host in HOSTS[:2]]
                            + [remote.Result("node3", error="timed out")])
    assert view["plan"]["lease_hash"] is None
    assert "the public key of node3 is unknown" in fleet.render_table(view).splitlines()[0]
    assert [row.problems for row in view["rows"]][:2] == [[], []]
    # Without the plan's hash, hosts are held to the table most of them run.
    view = fleet.fleet_view(plan, [answered(host, reply(host, table, key=keys[host])) for host in HOSTS[:2]]
                            + [answered("node3", reply("node3", "0123456789abcdef"))])
    assert view["plan"]["compared_with"] == table
    assert view["rows"][2].problems == [f"runs another lease table (0123456789abcdef, most hosts' is {table})"]
    assert f"{table} most" in fleet.render_table(view)


def test_hosts_are_asked_at_once_and_a_failing_one_is_a_result():
    def run(name, data, command, timeout):
        if name == "node2":
            raise RuntimeError("boom")
        return remote.Result(name, 0, data["answer"])

    hosts = [(name, {"answer": name}) for name in HOSTS]
    results = remote.run_everywhere(hosts, "true", run=run)
    assert [r.host for r in results] == list(HOSTS)
    assert results[1].error == "RuntimeError: boom" and results[2].stdout == "node3"


def test_ssh_arguments_follow_the_inventorys_data():
    kwargs = remote.connect_kwargs("node1", {"ssh_hostname": "10.0.0.1", "ssh_user": "admin", "ssh_port": "2222",
                                             "ssh_key": "/k", "ssh_known_hosts_file": "/dev/null"}, 5)
    assert (kwargs["hostname"], kwargs["username"], kwargs["port"], kwargs["key_filename"]) == ("10.0.0.1", "admin", 2222, "/k")
    assert kwargs["_pyinfra_ssh_known_hosts_file"] == "/dev/null" and kwargs["look_for_keys"] is False
    assert remote.connect_kwargs("node1.example", {}, 5)["hostname"] == "node1.example"
    assert remote.as_deployed("flannelette status --json", {"_sudo": True}) == "sudo -n flannelette status --json"
    assert remote.as_deployed("flannelette status --json", {}) == "flannelette status --json"


def test_status_with_an_inventory_is_the_fleets():
    available = cli.commands()
    assert cli.chosen("status", ["inventory/prod.py"], available) is cli.FLEET_STATUS
    assert cli.chosen("status", ["--json", "inventory/prod.py", "--timeout", "3"], available) is cli.FLEET_STATUS
    assert cli.chosen("status", [], available) is cli.HOST_COMMANDS["status"]
    assert cli.chosen("status", ["--healthz", "127.0.0.1:9000", "--json"], available) is cli.HOST_COMMANDS["status"]
    assert cli.chosen("status", ["inventory/prod.py"], cli.HOST_COMMANDS) is cli.HOST_COMMANDS["status"]
