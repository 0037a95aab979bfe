"""Three namespace hosts, each running `flannelette run`: the overlay works end to end."""

import json

import pytest

from netns_hosts import flannelette_command, sh
from flannelette.host import subnetenv

pytestmark = pytest.mark.netns


def test_every_gateway_pings_every_other(three):
    for host in three:
        for other in three:
            if other is not host:
                assert host.ping(other.gateway, source=host.gateway), f"{host.name} -> {other.name}"


def test_pods_on_different_hosts_talk_over_tcp(three, cluster):
    a, b = three[0], three[1]
    pod_a, _ = a.add_pod()
    pod_b, address_b = b.add_pod()
    server = cluster.spawn(pod_b, "iperf3", "-s", "-1", "-B", address_b)
    try:
        assert cluster.ping(pod_a, address_b)
        result = json.loads(sh("ip", "netns", "exec", pod_a, "iperf3", "-c", address_b, "-t", "2", "-J").stdout)
        assert "error" not in result
        assert result["end"]["sum_received"]["bytes"] > 0
    finally:
        server.terminate()
        server.wait(10)


def test_subnet_env_matches_flanneld(three):
    for host in three:
        with open(host.subnet_file) as f:
            text = f.read()
        assert text == (
            f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={host.gateway}/24\n"
            "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
        )
        assert subnetenv.parse(text)["FLANNEL_MTU"] == "1472"


def test_kernel_state_is_flannels(three):
    host = three[0]
    tun = host.run("ip", "-d", "addr", "show", "flannel0").stdout
    assert "mtu 1472" in tun and "tun type tun pi off" in tun and "inet 10.244.1.0/32" in tun
    bridge = host.run("ip", "-d", "addr", "show", "cni0").stdout
    assert "mtu 1472" in bridge and "bridge" in bridge and "inet 10.244.1.1/24" in bridge
    assert "10.244.0.0/16 dev flannel0" in host.run("ip", "route").stdout
    assert host.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    saved = host.run("iptables-save").stdout
    assert "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG" in saved
    assert "-A FLANNEL-FWD -s 10.244.0.0/16" in saved


def test_healthz_readyz_and_status(three):
    host = three[0]
    assert host.ping(three[1].gateway, source=host.gateway)
    assert host.fetch("/healthz").returncode == 0
    assert host.fetch("/readyz").stdout == "ready\n"
    samples = host.metrics()
    assert samples[("flannelette_ready", ())] == 1
    assert samples[("flannelette_leases", ())] == 3
    status = host.run(*flannelette_command(), "status").stdout
    assert "ready" in status and "node2" in status and "node3" in status


def test_ping_to_a_subnet_in_no_lease_says_destination_net_unreachable(three):
    a = three[0]
    pod, _ = a.add_pod()
    unleased = "10.244.200.7"
    for argv in (("ip", "netns", "exec", a.ns), ("ip", "netns", "exec", pod)):
        done = sh(*argv, "ping", "-c", "1", "-W", "2", unleased, check=False)
        assert done.returncode != 0
        assert "Destination Net Unreachable" in done.stdout, done.stdout
    assert a.metric("icmp_unreachable_sent_total") >= 2
