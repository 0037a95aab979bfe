"""A rolling upgrade: a host of the previous release and one of this release carry TCP both ways, then both upgraded.

The previous release sends frames (its fast format) to every flannelette
host and never answers a hello; this release takes frames, put back together
across reads where the underlay cut them, and sends it flannel's format.
"""

import json

import pytest

from netns_hosts import PREVIOUS_RELEASE, previous_release
from test_fast import confirmed, peer_format

pytestmark = pytest.mark.netns
DATA_PATH = True


def stream(cluster, client, server, seconds=3, reverse=False):
    listener = cluster.spawn(server.ns, "iperf3", "-s", "-1", "-B", server.gateway)
    assert cluster.ping(client.ns, server.gateway)
    out = client.run("iperf3", "-c", server.gateway, "-B", client.gateway, "-t", str(seconds), "-J",
                     *(["-R"] if reverse else []), timeout=seconds + 30).stdout
    listener.wait(10)
    return json.loads(out)["end"]


def test_the_previous_release_and_this_one_carry_tcp_both_ways_then_both_upgraded(cluster):
    release = previous_release(cluster.workdir)
    if release is None:
        pytest.skip(f"the previous release ({PREVIOUS_RELEASE}) is not in this clone's history: clone it whole")
    old, new = cluster.build(2)
    old.start(release=release)
    new.start()
    for client, server in ((old, new), (new, old)):
        end = stream(cluster, client, server)
        assert end["sum_received"]["bytes"] > 5_000_000, (client.name, end)
    assert peer_format(new, old) == ("flannel", "previous")
    assert new.drops("frame_incomplete") <= 10  # a frame lost whole only where a datagram of it was
    old.stop()
    old.start()  # upgraded
    assert confirmed(old, new)
    for client, server in ((old, new), (new, old)):
        assert stream(cluster, client, server)["sum_received"]["bytes"] > 5_000_000
