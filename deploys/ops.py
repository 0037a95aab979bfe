"""Operations the stock pyinfra ones don't quite cover.

`put_atomic` writes by rename, so the runtime (or a reboot) never reads half a
file; `unit_follows` restarts or reloads a unit after the files it reads
changed, and tells the truth about that under `--dry` too.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.operations import systemd

from flannelette.deploy.facts import DirectoryEntries, FileStates, removable_directories


UNREAD = object()  # put_atomic's `remote` when the caller has not read the host's file


@operation()
def put_atomic(src, dest: str, mode: str = "644", remote=UNREAD):
    """Upload `src` (a path or a file-like object) to `dest` unless it already matches.

    The new content goes to a temporary file beside `dest`, made with `mode`
    first, and is renamed over it.
    `remote` is what the host holds at `dest` ({"mode", "sha256"} from a
    FileStates fact read once for all of a host's files, None: nothing); read
    here when not given.
    """
    if remote is UNREAD:
        remote = host.get_fact(FileStates, paths=[dest]).get(dest)
    same_content = remote is not None and remote["sha256"] == local_sha256(src)
    if same_content and remote["mode"] == int(mode):
        host.noop(f"{dest} is up to date")
        return
    if not same_content:
        tmp = posixpath.join(posixpath.dirname(dest), f".{posixpath.basename(dest)}.tmp")
        # The temporary file has its mode before it has content: a key is never readable by others, even briefly
        # (the upload keeps the mode of the file it overwrites).
        yield StringCommand("mkdir", "-p", posixpath.dirname(dest), "&&", "install", "-m", mode, "/dev/null", tmp)
        yield FileUploadCommand(src, tmp)
        yield StringCommand("chmod", mode, tmp, "&&", "mv", "-f", tmp, dest)
    else:
        yield StringCommand("chmod", mode, dest)


@operation()
def absent(path: str, present: bool):
    """Remove the file `path`, which `present` says (from a FileStates fact) is there."""
    if present:
        yield StringCommand("rm", "-f", path)
    else:
        host.noop(f"{path} does not exist")


def local_sha256(src) -> str:
    """The SHA-256 of `src`, a path (hashed once per run: the zipapp goes to every host) or a file-like object."""
    if hasattr(src, "read"):
        data = src.read()
        src.seek(0)
        return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()
    return _file_sha256(str(src))


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def changed(*ops):
    """Whether any of `ops` changed the host, or, before execution (--dry), will change it.

    pyinfra's `any_changed` only answers after execution, and an `_if=` is
    only consulted then: under --dry every conditional restart would show as
    a change. This one is evaluated inside the operation, at both stages.
    """

    def check() -> bool:
        return any(op.did_change() if op.is_complete() else bool(op.will_change) for op in ops)

    return check


@operation()
def unit_follows(service: str, restart_when, reload_when, daemon_reload_when):
    """Restart `service` when `restart_when()`, else reload it when `reload_when()`.

    A restart also starts a stopped unit, and replaces one caught in its
    restart loop with the new files, where a `start` would join the old job.
    """
    if restart_when():
        if daemon_reload_when():
            yield StringCommand("systemctl", "daemon-reload")
        yield StringCommand("systemctl", "restart", service)
    elif reload_when():
        yield from systemd.service._inner(service, running=True, reloaded=True)
    else:
        host.noop(f"{service}: nothing it reads changed")


@operation()
def remove_empty_dirs(paths):
    """rmdir those of `paths` (deepest first) left empty; a directory with anything else in it stays."""
    for path in removable_directories(host.get_fact(DirectoryEntries, paths=list(paths)), paths):
        yield StringCommand("rmdir", path)
