"""Entry point of the flannelette zipapp: `python3 flannelette.pyz run ...` (its __main__.py).

Python keeps no bytecode for what it imports from a zip, so every start would
compile pyroute2 again (about a second). Under systemd, whose CacheDirectory=
names a directory the unit may write ($CACHE_DIRECTORY), the first start of
each runtime version unpacks the archive there and every start imports from
that copy, where Python writes and then reads its bytecode. Without that
directory, or when it can't be written, the modules come from the zip.
Standard library only, and no syntax newer than Python 3.0's where the
version is checked: this runs before anything of the archive is imported.
"""

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile

MIN_PYTHON = (3, 9)
CACHE_ENV = "CACHE_DIRECTORY"
PREFIX = "runtime-"
ENTRY = "__main__.py"


def version(archive: str) -> str:
    """The archive's content hash: builds of the same sources share it, any change gives another."""
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def unpacked(archive: str, cache: str) -> str:
    """The directory holding the modules of `archive`, unpacked into `cache` by the first start of its version.

    Unpacked beside its final name and renamed into place, so a start never
    sees a half-written copy, and two starts at once both end with one copy.
    Copies of other versions are removed.
    """
    target = os.path.join(cache, PREFIX + version(archive))
    if not os.path.isdir(target):
        temp = tempfile.mkdtemp(prefix=".unpacking-", dir=cache)
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(temp, [name for name in z.namelist() if name != ENTRY])
            os.rename(temp, target)
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            if not os.path.isdir(target):  # not a start of the same version that renamed first
                raise
    for name in os.listdir(cache):
        if name.startswith(PREFIX) and os.path.join(cache, name) != target:
            shutil.rmtree(os.path.join(cache, name), ignore_errors=True)
    return target


def import_path(archive: str, environ) -> str:
    """Where the modules are imported from: the unpacked copy, or the archive itself."""
    cache = environ.get(CACHE_ENV, "").split(":")[0]
    if not cache:
        return archive
    try:
        return unpacked(archive, cache)
    except OSError as e:
        sys.stderr.write("flannelette: importing from the zipapp (can't unpack it into %s: %s)\n" % (cache, e))
        return archive


def main() -> None:
    if sys.version_info < MIN_PYTHON:
        sys.exit("flannelette needs Python %d.%d or newer, this is %s" % (MIN_PYTHON + (sys.version.split()[0],)))
    archive = os.path.dirname(os.path.abspath(__file__))
    path = import_path(archive, os.environ)
    if path != archive:
        sys.path[0] = path  # in place of the archive, so no module of it is imported from the zip
    from flannelette.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
