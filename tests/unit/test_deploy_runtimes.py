"""The container runtimes' files: podman's network, Docker's daemon.json merged in and taken out again."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from test_deploy_fake import host, pyinfra, write_inventory

from flannelette.deploy import facts, render, runtimes
from flannelette.model.config import Lease

SUBNET = IPv4Network("10.244.2.0/24")


def test_runtimes_are_one_name_or_a_list_and_cni_by_default():
    assert runtimes.wanted({}) == ("cni",)
    assert runtimes.wanted({"flannel_container_runtime": "docker"}) == ("docker",)
    assert runtimes.wanted({"flannel_container_runtime": ["docker", "cni", "podman"]}) == ("cni", "podman", "docker")


def test_podmans_network_is_on_cni0_with_the_hosts_subnet_and_mtu():
    network = json.loads(runtimes.render_podman_network(IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.1"), 1472))
    assert network["network_interface"] == "cni0" and network["driver"] == "bridge"
    assert network["subnets"] == [{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1",
                                   "lease_range": {"start_ip": "10.244.2.128", "end_ip": "10.244.2.191"}}]
    assert network["options"] == {"mtu": "1472"} and network["dns_enabled"] is False
    assert len(network["id"]) == 64


def test_daemon_json_keeps_the_operators_settings():
    merged = json.loads(runtimes.merge_daemon_json({"log-driver": "journald", "mtu": 1500}, 1472, SUBNET))
    assert merged == {"log-driver": "journald", "mtu": 1472, "bridge": "cni0", "fixed-cidr": "10.244.2.192/26"}


@pytest.mark.parametrize("before", [None, "", '{"log-driver": "journald"}', '{ "mtu": 1400 }\n'])
def test_teardown_gives_back_daemon_json_byte_for_byte(before):
    settings = runtimes.parse_daemon_json(before, "daemon.json")
    now = json.loads(runtimes.merge_daemon_json(settings, 1472, SUBNET))
    assert runtimes.unmerge_daemon_json(now, before) == before


def test_teardown_keeps_what_the_operator_changed_since():
    now = {"bridge": "cni0", "mtu": 1472, "debug": True}
    assert json.loads(runtimes.unmerge_daemon_json(now, '{"mtu": 1400}')) == {"debug": True, "mtu": 1400}


@pytest.mark.parametrize("text, message", [
    ("{nope", "n1: daemon.json: not JSON"),
    ('{"bip": "172.18.0.1/16"}', "n1: daemon.json: bip '172.18.0.1/16': Docker takes no bip beside"),
])
def test_a_daemon_json_that_cant_be_merged_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        runtimes.parse_daemon_json(text, "n1: daemon.json")


def test_the_allocators_on_one_cni0_draw_from_slices_that_never_meet():
    slices = render.allocation_slices(SUBNET)
    assert [str(a) for a in slices["cni"]] == ["10.244.2.2", "10.244.2.127"]
    assert [str(a) for a in slices["podman"]] == ["10.244.2.128", "10.244.2.191"]
    assert str(slices["docker"]) == "10.244.2.192/26"


def test_the_conflist_keeps_to_its_slice_only_beside_another_runtime():
    lease = Lease(host="n", subnet=SUBNET, public_ip=IPv4Address("192.168.56.12"))
    assert '"rangeEnd": "10.244.2.254"' in render.render_conflist(lease, 1472)
    assert '"rangeEnd": "10.244.2.127"' in render.render_conflist(lease, 1472, shared=True)


def test_a_files_exact_text_comes_back_from_base64():
    assert facts.parse_file_text(["present", "eyJhIjogMX0="]) == '{"a": 1}'
    assert facts.parse_file_text(["present", ""]) == ""
    assert facts.parse_file_text([]) is None


def test_a_host_without_docker_stops_the_run_before_any_host_is_changed(tmp_path):
    inventory = write_inventory(tmp_path / "fleet.py", [host(1), host(2, flannel_container_runtime=["cni", "docker"])])
    result = pyinfra(inventory)
    assert result.returncode == 1
    assert "@fake/node2: flannel_container_runtime 'docker': dockerd is not installed (apt-get install docker.io)" \
        in result.output
    assert "Beginning operation run" not in result.output
