"""Start, crash, restart and stop: the runtime owns its kernel state and leaves none behind."""

import json
import os
import signal

import pytest
from netns_hosts import eventually

pytestmark = pytest.mark.netns


def link_index(host, name):
    return host.run("cat", f"/sys/class/net/{name}/ifindex").stdout.strip()


def flannel_rules(host):
    return [line for line in host.run("iptables-save").stdout.splitlines() if "FLANNEL" in line]


def test_kill_9_leaves_flannel0_and_its_route_and_a_restart_takes_them_over(cluster, three):
    a, b, _ = three
    rules_before = flannel_rules(a)
    bridge, tun = link_index(a, "cni0"), link_index(a, "flannel0")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert link_index(a, "flannel0") == tun  # persistent: the overlay still routes into it, not elsewhere
    assert a.overlay_route().startswith("10.244.0.0/16 dev flannel0 ")
    assert not b.ping(a.gateway, source=b.gateway, timeout=1)

    a.start()
    assert "flannel0: taken over from the last run" in a.log()
    assert cluster.ping(b.ns, a.gateway)
    assert b.ping(a.gateway, source=b.gateway)
    assert link_index(a, "cni0") == bridge and link_index(a, "flannel0") == tun
    assert flannel_rules(a) == rules_before  # refilled, not duplicated


def test_sigterm_keeps_the_kernel_state_and_teardown_removes_it(three):
    a = three[0]
    rules = flannel_rules(a)
    assert a.stop() == 0
    assert {"flannel0", "cni0"} <= a.links()
    assert a.overlay_route().startswith("10.244.0.0/16 dev flannel0 ")
    assert flannel_rules(a) == rules
    assert "stopped; flannel0, its route, the rules and cni0 stay" in a.log()
    done = a.teardown()
    assert done.returncode == 0, done.stderr
    assert not {"flannel0", "cni0"} & a.links()
    assert a.overlay_route() == "" and flannel_rules(a) == []
    assert a.teardown().returncode == 0  # nothing left to remove


def test_teardown_is_refused_while_the_runtime_runs(cluster, three):
    a, b, _ = three
    done = a.teardown()
    assert done.returncode == 1
    assert "stop flannelette first" in done.stderr
    assert b.ping(a.gateway, source=b.gateway)


def test_teardown_leaves_bridge_with_containers_attached(three):
    a = three[0]
    a.add_pod()
    assert a.stop() == 0
    assert a.teardown().returncode == 0
    links = a.links()
    assert "flannel0" not in links and "cni0" in links
    assert "leaving cni0 in place" in a.teardown().stderr


def test_second_start_finds_everything_right(cluster, three):
    a, b, _ = three
    assert a.stop() == 0
    a.start()
    a.stop()
    a.start()
    assert cluster.ping(b.ns, a.gateway)
    assert len([r for r in flannel_rules(a) if r.startswith("-A POSTROUTING")]) == 1


def test_second_instance_refuses_and_first_keeps_running(cluster, three):
    a, b, _ = three
    second = a.start(wait=False)
    assert second.wait(60) == 1
    assert "is another flannelette or flanneld running" in a.log()
    assert b.ping(a.gateway, source=b.gateway)


def test_missing_own_lease_is_refused_and_nothing_is_created(cluster):
    hosts = cluster.build(3)
    cluster.write_leases(hosts[1:])
    a = hosts[0]
    proc = a.start(wait=False)
    assert proc.wait(60) == 1
    log = a.log()
    assert cluster.leases in log and a.public_ip in log and "node2 192.168.60.12" in log
    assert not {"flannel0", "cni0"} & a.links()
    assert flannel_rules(a) == []


def test_invalid_net_conf_names_every_problem(cluster):
    hosts = cluster.build(1, net_conf={"Network": "10.244.0.0/33", "Backend": {"Type": "vxlan"}})
    proc = hosts[0].start(wait=False)
    assert proc.wait(60) == 1
    log = hosts[0].log()
    assert "Network" in log and "Backend.Type" in log
    assert "flannel0" not in hosts[0].links()


def test_nftables_when_enabled(cluster):
    hosts = cluster.build(2, net_conf={"Network": "10.244.0.0/16", "EnableNFTables": True, "Backend": {"Type": "udp"}})
    for host in hosts:
        host.start()
    a, b = hosts
    table = a.run("nft", "list", "table", "ip", "flannelette").stdout
    assert "masquerade fully-random" in table and "ip saddr 10.244.0.0/16 accept" in table
    assert flannel_rules(a) == []
    assert cluster.ping(a.ns, b.gateway)
    assert a.stop() == 0
    assert "table ip flannelette" in a.run("nft", "list", "tables").stdout  # kept for the next start
    assert a.teardown().returncode == 0
    assert "flannelette" not in a.run("nft", "list", "tables").stdout


def test_notify_protocol(three):
    a = three[0]
    assert any(m.startswith("READY=1") for m in a.notes.seen)
    a.stop()
    a.notes.wait_for("STOPPING=1")


def test_metrics_are_prometheus_text(three):
    a, b, _ = three
    assert b.ping(a.gateway, source=b.gateway)
    page = a.fetch("/metrics").stdout
    assert "# TYPE flannelette_drops_total counter" in page
    assert 'flannelette_peer_packets_total{direction="rx",peer="node2"' in page
    hashes = {json.dumps(sorted(k for k in h.metrics() if k[0] == "flannelette_leases_info")[0][1][0]) for h in three}
    assert len(hashes) == 1  # every host runs the same table


def test_failed_bring_up_undoes_every_finished_step(cluster):
    a, b = cluster.build(2)
    os.makedirs(a.subnet_file)  # subnet.env can't replace a directory: the last step before the data path fails
    proc = a.start(wait=False)
    assert proc.wait(60) == 1
    assert "subnet.env" in a.log()
    assert not {"flannel0", "cni0"} & a.links()
    assert flannel_rules(a) == []


def test_failed_start_after_a_run_leaves_what_it_found(cluster):
    a, b = cluster.build(2)
    a.start()
    assert a.stop() == 0
    rules, tun = flannel_rules(a), link_index(a, "flannel0")
    os.remove(a.subnet_file)
    os.makedirs(a.subnet_file)
    proc = a.start(wait=False)
    assert proc.wait(60) == 1
    assert link_index(a, "flannel0") == tun and "cni0" in a.links()  # not made by this start: not undone
    assert a.overlay_route().startswith("10.244.0.0/16 dev flannel0 ")
    assert flannel_rules(a) == rules


def test_mtu_follows_the_public_interface(cluster):
    a, b = cluster.build(2)
    a.run("ip", "link", "set", "eth0", "mtu", "9000")
    a.start("--iface", "eth0")
    assert "mtu 8972" in a.run("ip", "link", "show", "flannel0").stdout
    with open(a.subnet_file) as f:
        assert "FLANNEL_MTU=8972\n" in f.read()


@pytest.mark.parametrize("made", [("mode", "tun", "multi_queue"), ("mode", "tap")], ids=["multi-queue tun", "tap"])
def test_a_flannel0_of_other_flags_is_refused_by_name_and_left_alone(cluster, made):
    a, b = cluster.build(2)
    a.run("ip", "tuntap", "add", "flannel0", *made)
    before = link_index(a, "flannel0")
    proc = a.start(wait=False)
    assert proc.wait(60) == 1
    assert "flannel0 exists but is not a single-queue TUN device" in a.log()
    assert link_index(a, "flannel0") == before  # not this start's to remove
    assert "cni0" not in a.links() and flannel_rules(a) == []


def test_cni0_deleted_and_made_again_by_others_while_running(cluster, three):
    """netavark deletes cni0 with its last container and makes it again for the
    next one; the CNI bridge plugin makes it bare. Containers started after
    either still reach the other hosts."""
    a, b, _ = three

    def bridge_is_back():
        shown = a.run("ip", "-4", "addr", "show", "cni0", check=False).stdout
        return f"inet {a.gateway}/24" in shown and ",UP" in shown

    a.run("ip", "link", "del", "cni0")
    assert eventually(bridge_is_back), a.log()
    _, address = a.add_pod()
    assert b.ping(address, source=b.gateway)

    # As a container runtime would: it makes cni0 bare and down, unless it finds one there already.
    a.run("sh", "-c", "ip link del cni0 && { ip link add cni0 type bridge 2>/dev/null || true; }")
    assert eventually(bridge_is_back)
    _, address = a.add_pod("q")
    assert b.ping(address, source=b.gateway)
    assert "cni0: removed by someone else" in a.log()
    assert a.stop() == 0
    assert "cni0" in a.links()  # the second container is still on it
