"""Run one command on every host of an inventory over SSH, the way the deploy reaches them, all at once.

pyinfra's own SSH client (paramiko, with the inventory's ssh_* data, the
operator's ~/.ssh/config and known_hosts as pyinfra reads them), one thread per
host and a deadline per host: a host that can't be reached is a reply with the
reason, never an exception.
"""

from __future__ import annotations

import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

TIMEOUT = 15.0  # seconds for one host: connecting, logging in and the command
MAX_THREADS = 32


@dataclass(frozen=True)
class Result:
    host: str
    exit_code: Optional[int] = None  # None: the command never ran
    stdout: str = ""
    stderr: str = ""
    error: str = ""  # why the host wasn't reached


def connect_kwargs(name: str, data: dict, timeout: float) -> dict:
    """Keyword arguments of pyinfra's SSHClient.connect for a host, as pyinfra's SSH connector makes them."""
    kwargs = {
        "hostname": data.get("ssh_hostname") or name,
        "timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
        "allow_agent": data.get("ssh_allow_agent", True), "look_for_keys": data.get("ssh_look_for_keys", True),
        "_pyinfra_ssh_config_file": data.get("ssh_config_file"),
        "_pyinfra_ssh_known_hosts_file": data.get("ssh_known_hosts_file"),
        "_pyinfra_ssh_strict_host_key_checking": data.get("ssh_strict_host_key_checking", "accept-new"),
        "_pyinfra_ssh_paramiko_connect_kwargs": data.get("ssh_paramiko_connect_kwargs"),
    }
    for key, value in (("username", data.get("ssh_user")), ("port", int(data.get("ssh_port") or 0)),
                       ("password", data.get("ssh_password"))):
        if value:
            kwargs[key] = value
    if data.get("ssh_key"):
        kwargs.update(key_filename=data["ssh_key"], passphrase=data.get("ssh_key_password"),
                      allow_agent=False, look_for_keys=False)
    return kwargs


def as_deployed(command: str, data: dict) -> str:
    """`command` as the deploy runs commands on the host: under `sudo -n` when its data sets _sudo."""
    return f"sudo -n {command}" if data.get("_sudo") else command


def run_on(name: str, data: dict, command: str, timeout: float = TIMEOUT) -> Result:
    """`command` on one host; its output, or why it didn't run."""
    from paramiko.ssh_exception import SSHException
    from pyinfra.connectors.sshuserclient.client import SSHClient

    client = SSHClient()
    kwargs = connect_kwargs(name, data, timeout)
    hostname = kwargs.pop("hostname")
    try:
        client.connect(hostname, **kwargs)
        _, stdout, stderr = client.exec_command(as_deployed(command, data), timeout=timeout)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        return Result(name, stdout.channel.recv_exit_status(), out, err)
    except socket.timeout:
        return Result(name, error=f"no answer from {hostname} within {timeout:.0f}s")
    except (OSError, SSHException, EOFError) as e:
        return Result(name, error=f"ssh to {hostname}: {str(e) or type(e).__name__}")
    finally:
        client.close()


def run_everywhere(hosts: Iterable, command: str, timeout: float = TIMEOUT,
                   run: Callable[..., Result] = run_on) -> List[Result]:
    """`command` on every (name, data) of `hosts` at once; results in the order of `hosts`."""
    hosts = list(hosts)
    if not hosts:
        return []
    # pyinfra's client warns of every host key it can't check, as the inventory's
    # ssh_strict_host_key_checking asked; the replies are this command's output.
    logging.getLogger("pyinfra").setLevel(logging.ERROR)
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(hosts))) as pool:
        return list(pool.map(lambda host: _safely(run, host, command, timeout), hosts))


def _safely(run, host, command: str, timeout: float) -> Result:
    name, data = host
    try:
        return run(name, data, command, timeout)
    except Exception as e:  # a host's failure is its row; the other hosts' replies still count
        return Result(name, error=f"{type(e).__name__}: {e}")
