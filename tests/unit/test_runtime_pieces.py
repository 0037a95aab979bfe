"""The runtime's parts that need no root: arguments, refusals, metrics, status, notify."""

import argparse
import json
import socket
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelette.host import daemon, healthz, metrics, notify, status
from flannelette.model.config import Lease

LEASES = [
    Lease("node1", IPv4Network("10.244.1.0/24"), IPv4Address("192.168.56.11")),
    Lease("node2", IPv4Network("10.244.2.0/24"), IPv4Address("192.168.56.12")),
]


def run_args(*argv):
    parser = argparse.ArgumentParser()
    daemon.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_arguments_and_defaults():
    args = run_args("--net-conf", "n.json", "--leases", "l.json", "--public-ip", "192.168.56.11")
    assert args.subnet_file == "/run/flannel/subnet.env"
    assert args.iface is None and args.healthz is None and not args.ip_masq


def test_own_lease_missing_names_file_ip_and_holders():
    with pytest.raises(daemon.StartError) as e:
        daemon.own_lease(LEASES, IPv4Address("192.168.56.99"), "/etc/flannelette/leases.json")
    message = str(e.value)
    assert "/etc/flannelette/leases.json" in message and "192.168.56.99" in message
    assert "node1 192.168.56.11, node2 192.168.56.12" in message


def test_main_refuses_without_own_lease_and_creates_nothing(tmp_path, capsys):
    (tmp_path / "net-conf.json").write_text(json.dumps({"Network": "10.244.0.0/16"}))
    (tmp_path / "leases.json").write_text(json.dumps({"leases": [lease.to_json() for lease in LEASES]}))
    args = run_args("--net-conf", str(tmp_path / "net-conf.json"), "--leases", str(tmp_path / "leases.json"),
                    "--public-ip", "192.168.56.99", "--subnet-file", str(tmp_path / "subnet.env"))
    assert daemon.main(args) == 1
    assert "no lease has public_ip 192.168.56.99" in capsys.readouterr().err
    assert not (tmp_path / "subnet.env").exists()


def test_main_reports_every_config_problem(tmp_path, capsys):
    (tmp_path / "net-conf.json").write_text(json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 40}))
    args = run_args("--net-conf", str(tmp_path / "net-conf.json"), "--leases", str(tmp_path / "missing.json"),
                    "--public-ip", "192.168.56.11")
    assert daemon.main(args) == 1
    assert "SubnetLen" in capsys.readouterr().err


def test_bad_public_ip_and_healthz_are_refused():
    with pytest.raises(daemon.StartError):
        daemon.parse_public_ip("192.168.56")
    with pytest.raises(ValueError):
        healthz.parse_address("localhost")
    assert healthz.parse_address(":8286") == ("0.0.0.0", 8286)


def test_lease_hash_ignores_order():
    assert metrics.lease_hash(LEASES) == metrics.lease_hash(list(reversed(LEASES)))
    assert metrics.lease_hash(LEASES) != metrics.lease_hash(LEASES[:1])


def test_metrics_parse_round_trip():
    page = 'a_total{reason="x \\"y\\"",peer="n"} 3\n# HELP b b\nb 1.5\n'
    assert metrics.parse(page) == [("a_total", {"reason": 'x "y"', "peer": "n"}, 3.0), ("b", {}, 1.5)]


def test_status_when_nothing_answers(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        assert status.main(argparse.Namespace(healthz=f"127.0.0.1:{port}")) == status.EXIT_DOWN
    assert "nothing answers at 127.0.0.1" in capsys.readouterr().err


def test_status_summarises_a_metrics_page():
    page = (
        'flannelette_packets_total{direction="tx"} 10\nflannelette_packets_total{direction="rx"} 4\n'
        'flannelette_bytes_total{direction="tx"} 2048\nflannelette_bytes_total{direction="rx"} 100\n'
        'flannelette_drops_total{reason="unknown_peer"} 2\nflannelette_drops_total{reason="short"} 0\n'
        'flannelette_leases 2\nflannelette_leases_info{hash="abc",host="node1",subnet="10.244.1.0/24"} 1\n'
        'flannelette_reloads_total{result="ok"} 1\n'
        'flannelette_peer_packets_total{direction="tx",peer="node2",subnet="10.244.2.0/24",public_ip="192.168.56.12"} 10\n'
    )
    text = status.summarise("127.0.0.1:8286", True, page)
    assert "ready" in text and "node1 10.244.1.0/24" in text and "hash abc" in text
    assert "10 packets (2.0 KiB) sent" in text and "unknown_peer 2" in text and "short" not in text
    assert "node2" in text and "192.168.56.12" in text


def test_notify_sends_to_the_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify.ready("up")
        assert s.recv(100) == b"READY=1\nSTATUS=up"
        assert notify.reloading()
        assert s.recv(100).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify.stopping()


def test_journal_formatter_prefixes_priority():
    import logging

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "dropped", (), None)
    assert daemon.JournalFormatter("%(message)s").format(record) == "<4>dropped"


def test_status_json_when_nothing_answers_still_says_the_unit_and_the_files(tmp_path, monkeypatch, capsys):
    import json

    from flannelette.model import config

    (tmp_path / "net-conf.json").write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}')
    (tmp_path / "leases.json").write_text(config.render_leases(LEASES))
    monkeypatch.setattr(status, "unit_state", lambda: "inactive")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        args = argparse.Namespace(healthz=f"127.0.0.1:{s.getsockname()[1]}", json=True, net_conf=str(tmp_path / "net-conf.json"),
                                  leases=str(tmp_path / "leases.json"), private_key=str(tmp_path / "none"))
        assert status.main(args) == status.EXIT_DOWN
    document = json.loads(capsys.readouterr().out)
    assert document["unit"] == "inactive" and document["answers"] is False and document["ready"] is False
    assert document["leases_file"] == {"hash": metrics.lease_hash(LEASES), "count": 2}
    assert document["public_key"] is None and "nothing answers" in document["error"]


def test_status_peers_carry_ages_by_the_hosts_clock():
    page = (
        'flannelette_peer_packets_total{direction="tx",peer="node2",subnet="10.244.2.0/24",public_ip="192.168.56.12"} 10\n'
        'flannelette_peer_info{peer="node2",subnet="10.244.2.0/24",public_ip="192.168.56.12",format="sealed",'
        'exchange="confirmed",release="0.1.0"} 1\n'
        'flannelette_peer_last_heard_timestamp_seconds{peer="node2"} 990\n'
        'flannelette_peer_auth_failed_total{peer="node2"} 2\n'
    )
    (peer,) = status.peers(status.samples_by_name(page), now=1000.0)
    assert peer == {"peer": "node2", "subnet": "10.244.2.0/24", "public_ip": "192.168.56.12", "tx": 10, "rx": 0,
                    "format": "sealed", "exchange": "confirmed", "release": "0.1.0", "heard": 10.0, "refused": 2}


def test_linkdown_routes_ignored_reads_the_kernel_setting(tmp_path):
    from flannelette.host.kernel import netlink

    setting = tmp_path / "ignore_routes_with_linkdown"
    setting.write_text("1\n")
    assert netlink.linkdown_routes_ignored(str(setting))
    setting.write_text("0\n")
    assert not netlink.linkdown_routes_ignored(str(setting))
    assert not netlink.linkdown_routes_ignored(str(tmp_path / "missing"))


def test_the_healthz_server_answers_gets_and_refuses_the_rest():
    import urllib.error
    import urllib.request

    class Down:
        ready, datapath = False, None

    server = healthz.HealthServer(("127.0.0.1", 0), Down())
    server.start()
    try:
        base = "http://127.0.0.1:%d" % server.server.server_address[1]

        def get(path):
            try:
                with urllib.request.urlopen(base + path, timeout=5) as reply:
                    return reply.status, reply.headers["Content-Type"], reply.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Content-Type"], e.read().decode()

        assert get("/healthz?x=1") == (200, healthz.CONTENT_TYPE_TEXT, "flannelette is running\n")
        assert get("/readyz") == (503, healthz.CONTENT_TYPE_TEXT, "not ready\n")
        assert get("/nope")[0] == 404
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + "/healthz", data=b"x", method="POST"), timeout=5)
        assert refused.value.code == 501
        for request in (b"nonsense\r\n\r\n", b"GET /healthz HTTP/1.0\r\n" + b"X: y\r\n" * 101 + b"\r\n"):
            with socket.create_connection(server.server.server_address, timeout=5) as s:
                s.sendall(request)
                assert s.makefile("rb").readline().startswith(b"HTTP/1.0 400 ")
    finally:
        server.stop()
