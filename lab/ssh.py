"""SSH to lab hosts with paramiko, the library pyinfra itself uses."""

import socket
import subprocess
import threading
from pathlib import Path

from . import network, shell


def ensure_key(path, comment):
    """The lab's client key (ed25519, no passphrase), generated once per lab."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shell.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                   "-f", str(path)])
    return path


def public_key(path):
    return Path(f"{path}.pub").read_text()


def _connection(address, port, timeout, netns):
    if netns:
        return network.socket_in(netns, address, port, timeout)
    return socket.create_connection((address, port), timeout=timeout)


def port_open(address, port=22, timeout=1.0, netns=None):
    try:
        with _connection(address, port, timeout, netns):
            return True
    except OSError:
        return False


def connect(address, key_path, timeout=10, netns=None, username="root"):
    """An SSHClient logged in as `username`; host keys change with every rebuild, so
    they are accepted without a known_hosts file. With `netns`, the host is
    reached from inside that network namespace."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        address, username=username, key_filename=str(key_path), timeout=timeout,
        banner_timeout=timeout, auth_timeout=timeout, look_for_keys=False,
        allow_agent=False, sock=_connection(address, 22, timeout, netns) if netns else None,
    )
    return client


def run(client, command, timeout=60):
    """Run `command` (a shell string) and wait: a CompletedProcess, never raises
    on a non-zero exit."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace")
    rc = stdout.channel.recv_exit_status()
    return subprocess.CompletedProcess(command, rc, out, err)


CHUNK = 32768


def run_attached(client, command, stdin, stdout, stderr):
    """Run `command` as `ssh HOST COMMAND` does: `stdin` is its standard input
    until EOF, its output goes to `stdout` and `stderr` as it comes (binary
    files); its exit code."""
    channel = client.get_transport().open_session()
    channel.exec_command(command)
    threads = [threading.Thread(target=_feed, args=(stdin, channel), daemon=True),
               threading.Thread(target=_drain, args=(channel.recv_stderr, stderr), daemon=True)]
    for thread in threads:
        thread.start()
    _drain(channel.recv, stdout)
    threads[1].join()
    # The feeder may still wait on a terminal that never ends its input: ssh
    # doesn't wait for it either once the command has exited.
    return channel.recv_exit_status()


def _feed(stdin, channel):
    try:
        while data := stdin.read1(CHUNK):
            channel.sendall(data)
    except OSError:  # the command exited and closed its side first
        pass
    finally:
        try:
            channel.shutdown_write()
        except OSError:
            pass


def _drain(receive, out):
    while data := receive(CHUNK):
        out.write(data)
        out.flush()


def answers(address, key_path, timeout=5, netns=None):
    """True when sshd on `address` lets the lab's key in and runs a command."""
    if not port_open(address, timeout=timeout, netns=netns):
        return False
    try:
        client = connect(address, key_path, timeout=timeout, netns=netns)
    except Exception:
        return False
    try:
        return run(client, "true", timeout=timeout).returncode == 0
    except Exception:
        return False
    finally:
        client.close()
