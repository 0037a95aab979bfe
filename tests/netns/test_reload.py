"""SIGHUP re-reads leases.json: peers come and go without a restart and without disturbing flows."""

import json

import pytest

pytestmark = pytest.mark.netns


def connect_error(host, address, port=80):
    """The errno of a TCP connect from `host` to `address`, or None when it connects or times out."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(5)\n"
        f"err = s.connect_ex(({address!r}, {port}))\n"
        "print(err)\n"
    )
    return int(host.run("python3", "-c", code).stdout.strip())


def test_fourth_host_joins_and_leaves_while_a_stream_runs(cluster, three):
    a, b, c = three
    server = cluster.spawn(b.ns, "iperf3", "-s", "-1", "-B", b.gateway)
    assert cluster.ping(a.ns, b.gateway)
    client = cluster.spawn(a.ns, "iperf3", "-c", b.gateway, "-B", a.gateway, "-t", "10", "-J")

    d = cluster.add_host()
    cluster.write_leases(cluster.hosts)
    d.start()
    for host in three:
        host.reload()
    assert cluster.ping(a.ns, d.gateway)
    assert d.ping(c.gateway, source=d.gateway)

    cluster.write_leases(three)
    for host in three:
        host.reload()
    # The ICMP net-unreachable reaches the sender's stack: every TCP connect fails
    # with ENETUNREACH (101), at once.
    gone = str(d.subnet.network_address + 5)
    errors = [connect_error(a, gone) for _ in range(3)]
    assert errors == [101, 101, 101], f"connect errnos {errors}\n{a.log()}"
    assert a.drops("no_lease") >= 1
    assert a.metrics()[("flannelette_icmp_unreachable_sent_total", ())] >= 1
    assert client.poll() is None, "the stream should still be running across both reloads"

    out, _ = client.communicate(timeout=60)
    result = json.loads(out)
    assert "error" not in result, result.get("error")
    assert result["end"]["sum_received"]["bytes"] > 0
    server.wait(10)
    sums = a.metrics()
    assert sums[("flannelette_reloads_total", (("result", "ok"),))] == 2


def test_invalid_leases_keep_the_old_table(cluster, three):
    a, b, _ = three
    before = a.metrics()
    with open(cluster.leases, "w") as f:
        f.write('{"leases": [{"host": "x", "subnet": "10.244.1.0/24"')
    a.reload()
    assert cluster.ping(a.ns, b.gateway)
    after = a.metrics()
    assert after[("flannelette_reloads_total", (("result", "failed"),))] == 1
    info = [k for k in after if k[0] == "flannelette_leases_info"]
    assert info == [k for k in before if k[0] == "flannelette_leases_info"]
    assert "keeping the current lease table" in a.log()
