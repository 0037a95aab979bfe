"""The runtime as one self-contained zipapp, built from the working tree.

Hosts need only python3 >= 3.9: the package, its schemas and its pure-Python
dependencies travel inside the zip. The bytes depend on the sources alone
(sorted entries, fixed timestamps and modes), so an unchanged tree gives an
unchanged file and pyinfra sees no change on the hosts.
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "runtime" / "flannelette"
SCHEMAS_DIR = ROOT / "schemas"
# Import names of the runtime's dependencies (pyproject's `dependencies`).
DEPENDENCIES = ("cerberus", "yaml", "pyroute2")
MIN_PYTHON = (3, 9)
SHEBANG = b"#!/usr/bin/env python3\n"
# The zip format can't store dates before 1980; any fixed date does.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIPPED_DIRS = {"__pycache__", "tests"}
# Compiled code can't run from a zip or on another machine: yaml's optional
# libyaml binding is the only one among the dependencies, and yaml falls back
# to its pure-Python parser without it.
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd")

MAIN = f'''\
"""Entry point of the flannelette zipapp: `python3 flannelette.pyz run ...`."""
import sys

if sys.version_info < {MIN_PYTHON!r}:
    sys.exit("flannelette needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer, this is " + sys.version.split()[0])

from flannelette.cli import main

sys.exit(main())
'''


def sources() -> dict:
    """{archive name: local path} of everything that goes into the zipapp."""
    files = dict(_tree(PACKAGE_DIR, "flannelette"))
    files.update(_tree(SCHEMAS_DIR, "flannelette/schemas"))
    for name in DEPENDENCIES:
        files.update(_tree(_package_dir(name), name))
    return files


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed: pip install -e '.[deploy]' installs the runtime's dependencies")
    return Path(list(spec.submodule_search_locations)[0])


def _tree(top: Path, prefix: str):
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        for filename in filenames:
            if filename.endswith(SKIPPED_SUFFIXES):
                continue
            path = Path(dirpath) / filename
            yield f"{prefix}/{path.relative_to(top).as_posix()}", path


def build_bytes(files: dict = None) -> bytes:
    """The zipapp's bytes: a shebang line, then a zip of `files` and __main__.py."""
    files = sources() if files is None else files
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", MAIN.encode())
        for name in sorted(files):
            _add(archive, name, Path(files[name]).read_bytes())
    return buffer.getvalue()


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, whatever the operator's machine is
    archive.writestr(info, data, compresslevel=9)


def build(target: Path) -> Path:
    """Write the zipapp to `target` atomically, unless it already holds these bytes."""
    data = build_bytes()
    target = Path(target)
    if target.is_file() and target.read_bytes() == data:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


_built: dict = {}


def build_once(target: Path = ROOT / "build" / "flannelette.pyz") -> Path:
    """Build the zipapp the first time a run asks for it; later hosts reuse it."""
    key = str(target)
    if key not in _built:
        _built[key] = build(target)
    return _built[key]
