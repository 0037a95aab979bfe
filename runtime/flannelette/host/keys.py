"""This host's WireGuard key: made here, kept here (0600), its public half printed for the deploy to put in the lease.

`flannelette keygen` makes the private key when there is none and prints the
public key, in WireGuard's base64 as `wg pubkey` does; run again, it prints
the same key. The private key never leaves the host, and nothing logs it.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from flannelette.host.paths import PRIVATE_KEY as DEFAULT_PATH
from flannelette.model.config import decode_key

EXIT_OK, EXIT_FAILED = 0, 1


class KeyFileError(Exception):
    """A key file that can't be used; the message names the file and what to do."""


def read_key(path: str, what: str = "private key") -> bytes:
    """The key in `path` (base64, one line); refused when others may read it or it is not a key."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise KeyFileError(f"{path}: the {what} can't be read: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path}: the {what} may be read by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        text = os.read(fd, 4096).decode("ascii", "replace")
    finally:
        os.close(fd)
    key = decode_key(text)
    if key is None:
        raise KeyFileError(f"{path}: not a {what} (44 characters of base64, as `wg genkey` writes)")
    return key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--private-key", default=DEFAULT_PATH, metavar="FILE",
                        help=f"where the private key is kept (default {DEFAULT_PATH}); made 0600 when missing")


def main(args) -> int:
    from flannelette.host.datapath import crypto

    try:
        crypto.check()
        public = crypto.keygen(args.private_key)
        read_key(args.private_key)  # refused when others may read it
    except crypto.Unavailable as e:
        print(f"flannelette keygen: this host can't encrypt: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyFileError, OSError) as e:
        print(f"flannelette keygen: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(public)
    return EXIT_OK
