"""One cgroup2 group per lab host: a guest's processes cannot leave it, so
`down` ends every one of them, whatever state the guest is in.

Without systemd on the lab machine nothing else separates the guests: a
guest's init sits in its own PID namespace and outlives a killed
systemd-nspawn, reparented to PID 1. The kernel's group does not.
"""

import os
import time
from pathlib import Path

from .errors import LabError

# Every lab's groups live under this one, beside whatever else the machine runs.
PARENT = "flannelette-lab"


def hierarchy(mounts="/proc/self/mounts"):
    """Where cgroup2 is mounted (/sys/fs/cgroup on a unified machine,
    /sys/fs/cgroup/unified on a hybrid one), or None."""
    with open(mounts) as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1].replace("\\040", " "))
    return None


def group_of(name, root=None):
    """The group of guest `name` (its namespace name, LAB-nodeK), or None
    where the machine has no cgroup2."""
    root = root or hierarchy()
    return root / PARENT / name if root else None


def groups(prefix, root=None):
    """Names of the existing groups starting with `prefix`."""
    root = root or hierarchy()
    if root is None or not (root / PARENT).is_dir():
        return []
    return sorted(p.name for p in (root / PARENT).iterdir()
                  if p.is_dir() and p.name.startswith(prefix))


def create(group):
    try:
        group.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LabError(f"{group}: cannot make the host's cgroup: {err.strerror}") from None


def enter(group):
    """Move the calling process into `group`: run in the child before exec,
    so that nothing it starts is ever outside."""
    with open(group / "cgroup.procs", "w") as f:
        f.write("0")


def pids(group):
    """Every PID in `group` and the groups below it."""
    found = []
    for dirpath, _, _ in os.walk(group):
        try:
            found += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
        except OSError:  # removed while we looked
            pass
    return found


def kill(group, timeout=10):
    """SIGKILL everything in `group` and below, wait until it is empty, remove
    the groups; return the PIDs still there (empty when it worked)."""
    if group is None or not group.is_dir():
        return []
    deadline = time.monotonic() + timeout
    while pids(group) and time.monotonic() < deadline:
        _kill_once(group)
        time.sleep(0.1)
    left = pids(group)
    if not left:
        _remove(group)
    return left


def _kill_once(group):
    kill_file = group / "cgroup.kill"  # Linux 5.14 and later
    if kill_file.exists():
        kill_file.write_text("1")
        return
    for pid in pids(group):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _remove(group):
    """rmdir the groups from the deepest up: a group goes only when empty."""
    for dirpath, _, _ in sorted(os.walk(group), key=lambda w: len(w[0]), reverse=True):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
