"""One lab host: its writable layer over the shared rootfs, its systemd-nspawn
process, waiting for it to boot, and stopping it."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import cgroup, containers, shell, ssh
from .errors import LabError
from .rootfs import remove_tree

NSPAWN_RUN = "/run/systemd/nspawn"
# Each booted host's systemd, journald and logind hold inotify instances, and
# the kernel counts them per user, all root here: the default 128 run out near
# 20 hosts ("Failed to allocate manager object: Too many open files").
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 16  # about 9 measured on a booted host, and room for containers on it
INOTIFY_BASE = 128  # the kernel's default, for everything else on the machine


def host_dir(state_dir, host):
    return Path(state_dir) / "hosts" / host.name


def mount_layer(lower, hdir, label):
    """overlayfs: the cached rootfs below, this host's own directory on top."""
    upper, work, root = hdir / "upper", hdir / "work", hdir / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        shell.run(["mount", "-t", "overlay", label, "-o", opts, str(root)])
    return root


def ensure_inotify_instances(hosts, path=INOTIFY_INSTANCES):
    """Raise, never lower, the machine's inotify instance limit to what `hosts`
    booted hosts need; the new limit, or None when it was enough."""
    needed = INOTIFY_BASE + INOTIFY_PER_HOST * hosts
    if int(path.read_text()) >= needed:
        return None
    path.write_text(f"{needed}\n")
    return needed


def first_boot_files(host, authorized_key, machine_id):
    """{path in the guest: (content, mode)}: what makes a host itself."""
    return {
        "etc/hostname": (f"{host.name}\n", 0o644),
        "etc/hosts": (
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n"
            "::1\t\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/machine-id": (f"{machine_id}\n", 0o444),
        "root/.ssh/authorized_keys": (authorized_key, 0o600),
    }


def personalise(root, host, authorized_key):
    """Write a fresh layer's own files and SSH host keys; a layer that has
    them already is left as it is."""
    if (root / "etc/ssh/ssh_host_ed25519_key").exists():
        return
    files = first_boot_files(host, authorized_key, os.urandom(16).hex())
    for rel, (content, mode) in files.items():
        path = root / rel
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(content)
        os.chmod(path, mode)
    # -A with -f makes every default host key type under the given root.
    shell.run(["ssh-keygen", "-A", "-f", str(root)])


def nspawn_command(host, root):
    # --private-network beside the namespace path is what keeps CAP_NET_ADMIN
    # and a writable /proc/sys/net in the guest: the overlay needs both.
    return [
        "systemd-nspawn", "--boot", "--register=no", "--keep-unit",
        f"--machine={host.netns}", f"--directory={root}",
        f"--network-namespace-path=/run/netns/{host.netns}", "--private-network",
        "--bind=/dev/net/tun", "--console=read-only", "--link-journal=no",
        "--resolv-conf=off", "--timezone=off", *containers.NSPAWN_ARGS,
    ]


def start(host, root, log_path):
    """Boot the host detached from the caller, inside its own cgroup; its
    console goes to `log_path`. Returns (pid, start time): together they name
    the process even after the PID is reused."""
    group = cgroup.group_of(host.netns)
    if group is not None:
        cgroup.create(group)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            nspawn_command(host, root), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **containers.NSPAWN_ENV},
            preexec_fn=(lambda: cgroup.enter(group)) if group else None,
        )
    return proc.pid, start_time(proc.pid)


def start_time(pid):
    """When `pid` started (clock ticks since boot): with the PID, it names one process."""
    return _stat(pid)[2]


def is_running(pid, started):
    """True when the process `pid` that started at `started` is still alive."""
    st = _stat(pid)
    if st is None or st[2] != started:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    except ChildProcessError:
        pass
    st = _stat(pid)
    return st is not None and st[2] == started and st[1] != "Z"


def wait_ready(host, pid, started, key_path, log_path, timeout):
    """Until sshd lets the lab's key in; raise naming the host if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid, started):
            raise LabError(f"{host.name}: systemd-nspawn exited while booting; "
                           f"its console said:\n{console_tail(log_path)}")
        if ssh.answers(host.address, key_path, timeout=3):
            return
        time.sleep(0.5)
    raise LabError(f"{host.name}: sshd did not answer on {host.address}:22 within "
                   f"{timeout}s; its console said:\n{console_tail(log_path)}")


def console_tail(path, lines=8):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "  (no console log)"
    return "\n".join("  " + line for line in text.strip().splitlines()[-lines:])


def remove_layer(host, hdir):
    """Unmount the host's layer and delete its directory, and what
    systemd-nspawn leaves in /run when it did not get to clean up."""
    root = hdir / "root"
    if os.path.ismount(root):
        st = os.stat(root)
        Path(f"{NSPAWN_RUN}/locks/inode-{st.st_dev}:{st.st_ino}").unlink(
            missing_ok=True)
    propagate = Path(f"{NSPAWN_RUN}/propagate/{host.netns}")
    if propagate.is_dir():
        shutil.rmtree(propagate, ignore_errors=True)
    remove_tree(hdir)


# Stopping: SIGTERM makes systemd-nspawn power the guest off (it sends the
# guest's systemd SIGRTMIN+3); whatever is left after the grace period is
# killed by PID, from a snapshot of the process tree taken before, and then
# the host's cgroup is emptied (end_guest): that also ends what the snapshot
# could not see, e.g. a guest whose systemd-nspawn is gone.

def _stat(pid):
    """(parent pid, state, start time) of `pid`, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def process_tree(pid):
    """[(pid, start time)] of `pid` and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))):
            children.setdefault(st[0], []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if st := _stat(p):
            tree.append((p, st[2]))
            todo.extend(children.get(p, []))
    return tree


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it ended between the check and the signal
        pass


def stop_all(running, timeout=30):
    """Stop every (pid, start time) in `running` together; return the PIDs
    that survived."""
    trees = []
    for pid, started in running:
        if is_running(pid, started):
            trees.append(process_tree(pid))
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_running(*t[0]) for t in trees):
        time.sleep(0.2)
    procs = [p for tree in trees for p in tree]
    for pid, started in procs:
        if is_running(pid, started):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_running(*p) for p in procs):
        time.sleep(0.1)
    return [pid for pid, started in procs if is_running(pid, started)]


def end_guest(host):
    """Kill whatever is left in the host's cgroup and remove it; return the
    PIDs that survived."""
    return cgroup.kill(cgroup.group_of(host.netns))
