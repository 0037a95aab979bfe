"""A restart and an upgrade under a TCP stream: no reset, and no overlay packet out by the host's default route.

The host restarted has a default route to a gateway namespace that counts
(and drops) every packet for the overlay's network it is handed: a host
whose flannel0 route went away during a restart would send its overlay
traffic there. Start-to-ready and stop times are printed (pytest -s), not
asserted.
"""

import json
import os
import sys
import time

import pytest

from flannelette.deploy import bundle
from netns_hosts import NETWORK, sh

pytestmark = pytest.mark.netns

GATEWAY = ("10.254.0.1", "10.254.0.2")  # the host's end, the gateway's


def add_default_gateway(cluster, host):
    """A default route from `host` to a namespace that counts what it gets for the overlay; the counter's reader."""
    ns = f"{cluster.prefix}gw"
    cluster._add_ns(ns)
    sh("ip", "link", "add", "gw0", "netns", host.ns, "type", "veth", "peer", "name", "gw0", "netns", ns)
    for where, address in ((host.ns, GATEWAY[0]), (ns, GATEWAY[1])):
        sh("ip", "netns", "exec", where, "ip", "addr", "add", f"{address}/30", "dev", "gw0")
        sh("ip", "netns", "exec", where, "ip", "link", "set", "gw0", "up")
    host.run("ip", "route", "add", "default", "via", GATEWAY[1])
    sh("ip", "netns", "exec", ns, "iptables", "-t", "raw", "-A", "PREROUTING", "-d", str(NETWORK), "-j", "DROP")

    def overlay_packets_seen():
        listing = sh("ip", "netns", "exec", ns, "iptables", "-t", "raw", "-nvxL", "PREROUTING").stdout
        rule = next(line for line in listing.splitlines() if str(NETWORK) in line)
        return int(rule.split()[0])

    return overlay_packets_seen


def start_stream(cluster, client, server, seconds):
    listener = cluster.spawn(server.ns, "iperf3", "-s", "-1", "-B", server.gateway)
    assert cluster.ping(client.ns, server.gateway)
    stream = cluster.spawn(client.ns, "iperf3", "-c", server.gateway, "-B", client.gateway, "-t", str(seconds), "-J")
    time.sleep(2)
    assert stream.poll() is None
    return listener, stream


def finish_stream(listener, stream):
    out, _ = stream.communicate(timeout=90)
    listener.wait(10)
    result = json.loads(out)
    assert "error" not in result, result.get("error")
    return result["end"]


def restart(host, release=None):
    """Stop and start `host`; (seconds to stop, seconds from start to READY=1)."""
    began = time.monotonic()
    assert host.stop() == 0
    stopped = time.monotonic()
    host.start(release=release)
    return stopped - began, time.monotonic() - stopped


def test_a_tcp_stream_runs_through_a_restart_and_nothing_leaves_by_the_default_route(cluster):
    a, b = cluster.build(2)
    overlay_packets_seen = add_default_gateway(cluster, a)
    a.start()
    b.start()
    listener, stream = start_stream(cluster, a, b, seconds=10)
    times = [restart(a) for _ in range(2)]
    end = finish_stream(listener, stream)
    print(f"\nrestart of the installed runtime (stop s, start-to-ready s): {times}; "
          f"{end['sum_sent']['retransmits']} retransmits")
    assert end["sum_received"]["bytes"] > 1_000_000
    assert overlay_packets_seen() == 0
    # The gateway does see the overlay's packets once flannel0 and its route are gone: what it would have got.
    assert a.stop() == 0 and a.teardown().returncode == 0
    a.ping(b.gateway, timeout=1)
    assert overlay_packets_seen() > 0


def zipapps(workdir):
    """Two builds of this runtime that differ in one byte of a source: an upgrade, as the deploy installs it."""
    sources = bundle.sources()
    builds = []
    for mark in (b"", b"# the next build\n"):
        changed = dict(sources, **{"flannelette/__init__.py": Changed(sources["flannelette/__init__.py"], mark)})
        target = os.path.join(workdir, f"flannelette-{len(builds)}.pyz")
        builds.append(str(bundle.build(target, bundle.build_bytes(changed))))
    return builds


class Changed:
    def __init__(self, resource, suffix):
        self.resource, self.suffix = resource, suffix

    def read_bytes(self):
        return self.resource.read_bytes() + self.suffix


def test_a_tcp_stream_runs_through_an_upgrade_of_both_hosts_zipapps(cluster):
    a, b = cluster.build(2)
    overlay_packets_seen = add_default_gateway(cluster, a)
    old, new = zipapps(cluster.workdir)
    cache = os.path.join(cluster.workdir, "cache")
    os.makedirs(cache)

    def release(pyz):
        return ["env", f"CACHE_DIRECTORY={cache}", sys.executable, "-I", pyz]  # -I: as under systemd, bytecode is written

    a.start(release=release(old))
    b.start(release=release(old))
    listener, stream = start_stream(cluster, a, b, seconds=10)
    times = {"upgrade a": restart(a, release(new)), "upgrade b": restart(b, release(new)),
             "restart a": restart(a, release(new))}
    end = finish_stream(listener, stream)
    print(f"\nzipapp restarts (stop s, start-to-ready s): {times}; {end['sum_sent']['retransmits']} retransmits")
    assert end["sum_received"]["bytes"] > 1_000_000
    assert overlay_packets_seen() == 0
    assert len(os.listdir(cache)) == 1  # the new version's copy; the old one's is gone
