"""Files replaced in one rename, so a reader sees the old file or the new one, never half.

The one writer of every side: the runtime's subnet.env, the operator's
allocation file, the deploy's zipapp.
"""

from __future__ import annotations

import os
import tempfile
from typing import Union


def replace_file(path: str, data: Union[str, bytes], mode: int = 0o644) -> bool:
    """Make `path` hold `data` with `mode`; False when it already did, and then nothing is written."""
    data = data.encode() if isinstance(data, str) else data
    if _holds(path, data, mode):
        return False
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return True


def _holds(path: str, data: bytes, mode: int) -> bool:
    try:
        with open(path, "rb") as f:
            return os.fstat(f.fileno()).st_mode & 0o7777 == mode and f.read() == data
    except OSError:
        return False
