"""What the lab puts in its rootfs and each host's layer, and how it boots them."""

import os

import pytest

from lab import host, rootfs
from lab.__main__ import parse_args
from lab.plan import make_plan

NODE2 = make_plan().host(2)


def test_first_boot_files_make_the_host_itself():
    files = host.first_boot_files(NODE2, "ssh-ed25519 AAAA lab\n", "ab" * 16)
    assert files["etc/hostname"] == ("node2\n", 0o644)
    assert "127.0.1.1\tnode2\n" in files["etc/hosts"][0]
    assert files["etc/machine-id"] == ("ab" * 16 + "\n", 0o444)
    assert files["root/.ssh/authorized_keys"] == ("ssh-ed25519 AAAA lab\n", 0o600)


def test_nspawn_boots_in_the_hosts_namespace_with_tun():
    cmd = host.nspawn_command(NODE2, "/x/root")
    assert cmd[:2] == ["systemd-nspawn", "--boot"]
    for arg in ("--register=no", "--keep-unit", "--directory=/x/root",
                "--network-namespace-path=/run/netns/lab-node2",
                "--private-network", "--bind=/dev/net/tun"):
        assert arg in cmd


def test_configure_strips_what_belongs_to_one_host(tmp_path):
    for rel in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_rsa_key.pub",
                "etc/hostname", "etc/machine-id", "etc/resolv.conf",
                "var/cache/apt/archives/a.deb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    rootfs.configure(tmp_path)
    assert list((tmp_path / "etc/ssh").glob("ssh_host_*")) == []
    assert not (tmp_path / "etc/hostname").exists()
    assert (tmp_path / "etc/machine-id").read_text() == ""
    assert "nameserver" not in (tmp_path / "etc/resolv.conf").read_text()
    assert not (tmp_path / "var/cache/apt/archives/a.deb").exists()
    assert os.readlink(tmp_path / "etc/systemd/system/apt-daily.timer") == "/dev/null"
    assert "PasswordAuthentication no" in (
        tmp_path / "etc/ssh/sshd_config.d/lab.conf").read_text()


@pytest.mark.parametrize("text, uri", [
    ("deb http://ftp.de.debian.org/debian/ bookworm main\n",
     "http://ftp.de.debian.org/debian"),
    ("deb [arch=amd64] http://m/debian bookworm main\n"
     "deb http://m/debian-security bookworm-security main\n", "http://m/debian"),
    ("Types: deb\nURIs: http://m/debian-security\nSuites: bookworm-security\n\n"
     "Types: deb\nURIs: http://m/debian\nSuites: bookworm bookworm-updates\n",
     "http://m/debian"),
    ("deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n", None),
])
def test_the_debian_mirror_comes_from_apts_sources(text, uri):
    assert rootfs.find_debian_uri(text) == uri


def test_mirror_can_be_overridden(monkeypatch, tmp_path):
    monkeypatch.setenv("FLANNELETTE_LAB_MIRROR", "http://mirror.local/debian")
    assert rootfs.mirror(tmp_path) == "http://mirror.local/debian"
    monkeypatch.delenv("FLANNELETTE_LAB_MIRROR")
    assert rootfs.mirror(tmp_path) == rootfs.DEFAULT_MIRROR


def test_another_suite_comes_from_the_mirror_serving_it_else_from_the_labs(monkeypatch, tmp_path):
    monkeypatch.delenv("FLANNELETTE_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list").write_text("deb http://m/debian bookworm main\n")
    assert rootfs.mirror(tmp_path, suite=rootfs.OLDEST_SUITE) == "http://m/debian"
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "old.list").write_text("deb http://old/debian bullseye main\n")
    assert rootfs.mirror(tmp_path, suite="bullseye") == "http://old/debian"
    assert rootfs.mirror(tmp_path) == "http://m/debian"


def test_each_suite_has_a_rootfs_of_its_own(tmp_path):
    paths = {rootfs.rootfs_path(tmp_path, suite) for suite in (rootfs.SUITE, rootfs.OLDEST_SUITE)}
    assert {p.name.split("-")[0] for p in paths} == {rootfs.SUITE, rootfs.OLDEST_SUITE}


def test_a_changed_recipe_is_a_new_rootfs(monkeypatch, tmp_path):
    before = rootfs.rootfs_path(tmp_path)
    monkeypatch.setattr(rootfs, "PACKAGES", rootfs.PACKAGES + ("curl",))
    assert rootfs.rootfs_path(tmp_path) != before


def test_cli_ssh_takes_the_command_after_the_double_dash():
    args = parse_args(["ssh", "node2", "--", "ip", "-br", "addr"])
    assert (args.command, args.host, args.cmd) == ("ssh", "node2", ["ip", "-br", "addr"])
    assert parse_args(["up"]).hosts == 3


def test_the_inotify_limit_is_raised_for_many_hosts_never_lowered(tmp_path):
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    assert host.ensure_inotify_instances(20, limit) == host.INOTIFY_BASE + 20 * host.INOTIFY_PER_HOST
    assert int(limit.read_text()) == host.INOTIFY_BASE + 20 * host.INOTIFY_PER_HOST
    limit.write_text("100000\n")
    assert host.ensure_inotify_instances(20, limit) is None
    assert limit.read_text() == "100000\n"


class FakeChannel:
    """A paramiko channel whose command echoes its input, upper-cased on stdout, with a line on stderr."""

    def __init__(self):
        import threading

        self.received, self.closed_input, self.command = b"", threading.Event(), None
        self.out, self.err = [], [b"warning\n"]

    def exec_command(self, command):
        self.command = command

    def sendall(self, data):
        self.received += data

    def shutdown_write(self):
        self.out.append(self.received.upper())
        self.closed_input.set()

    def recv(self, size):
        self.closed_input.wait()
        return self.out.pop(0) if self.out else b""

    def recv_stderr(self, size):
        return self.err.pop(0) if self.err else b""

    def recv_exit_status(self):
        return 3


def test_lab_ssh_passes_standard_input_and_streams_output():
    import io
    from types import SimpleNamespace

    from lab import ssh

    channel = FakeChannel()
    client = SimpleNamespace(get_transport=lambda: SimpleNamespace(open_session=lambda: channel))
    stdin, stdout, stderr = io.BufferedReader(io.BytesIO(b"a heredoc\nof two lines\n")), io.BytesIO(), io.BytesIO()
    assert ssh.run_attached(client, "tr a-z A-Z", stdin, stdout, stderr) == 3
    assert channel.command == "tr a-z A-Z" and channel.received == b"a heredoc\nof two lines\n"
    assert stdout.getvalue() == b"A HEREDOC\nOF TWO LINES\n" and stderr.getvalue() == b"warning\n"
