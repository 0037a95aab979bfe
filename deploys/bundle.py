"""The runtime as one self-contained zipapp, built from the installed package.

Hosts need only python3 >= 3.9: the host side, the model, the schemas and
their pure-Python dependencies travel inside the zip; the operator side
(controller, deploy), which imports pyinfra, stays behind. The bytes depend
on the sources alone (sorted entries, fixed timestamps and modes), so an
unchanged package gives an unchanged file and pyinfra sees no change on the
hosts.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from importlib import resources
from pathlib import Path

from flannelette.model.files import replace_file

# What of the package a host runs: the entry, the host side and the model.
HOST_PARTS = ("__init__.py", "cli.py", "host", "model")
# Import names of the runtime's dependencies (pyproject's `dependencies`).
DEPENDENCIES = ("cerberus", "yaml", "pyroute2")
SHEBANG = b"#!/usr/bin/env python3\n"
# The zip format can't store dates before 1980; any fixed date does.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SKIPPED_DIRS = {"__pycache__", "tests"}
# Compiled code can't run from a zip or on another machine: yaml's optional
# libyaml binding is the only one among the dependencies, and yaml falls back
# to its pure-Python parser without it.
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd")

# The zipapp's __main__.py: the version check, and the bytecode cache.
MAIN = (resources.files("flannelette.deploy") / "pyz_main.py").read_text()


def sources() -> dict:
    """{archive name: readable resource} of everything that goes into the zipapp."""
    package = resources.files("flannelette")
    files: dict = {}
    for part in HOST_PARTS:
        files.update(_tree(package / part, f"flannelette/{part}"))
    files.update(_tree(resources.files("flannelette.schemas"), "flannelette/schemas"))
    for name in DEPENDENCIES:
        files.update(_tree(_package(name), name))
    return files


def _package(name: str):
    try:
        return resources.files(name)
    except ModuleNotFoundError:
        raise RuntimeError(f"{name} is not installed: pip install 'flannelette[deploy]' installs the runtime's dependencies") from None


def _tree(node, name: str):
    """(archive name, resource) of a file, or of every file under a folder."""
    if node.is_file():
        if not node.name.endswith(SKIPPED_SUFFIXES):
            yield name, node
        return
    for child in node.iterdir():
        if child.name not in SKIPPED_DIRS:
            yield from _tree(child, f"{name}/{child.name}")


def build_bytes(files: dict = None) -> bytes:
    """The zipapp's bytes: a shebang line, then a zip of `files` and __main__.py."""
    files = sources() if files is None else files
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", MAIN.encode())
        for name in sorted(files):
            _add(archive, name, files[name].read_bytes())
    return buffer.getvalue()


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, whatever the operator's machine is
    archive.writestr(info, data, compresslevel=9)


def build(target: Path, data: bytes = None) -> Path:
    """Write the zipapp to `target` atomically, unless it already holds these bytes."""
    replace_file(str(target), build_bytes() if data is None else data, mode=0o755)
    return Path(target)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flannelette"


_built: list = []


def build_once() -> Path:
    """Build the zipapp the first time a run asks for it; later hosts reuse it.

    Named by its content, so two runs of different versions never upload each other's.
    """
    if not _built:
        data = build_bytes()
        _built.append(build(cache_dir() / f"flannelette-{hashlib.sha256(data).hexdigest()[:16]}.pyz", data))
    return _built[0]
